// Bindings of the optim op family: fused in-place optimizer updates (SGD, AdamW, LAMB) and
// LAMB's global gradient clip factor. Every update returns undefined; the parameter and its
// state tensors are modified in place.
#include "../core/ops/optim.h"
#include "common.h"

namespace adashift {
namespace napi {

namespace {

using CI = Napi::CallbackInfo;

float f32(const Args& a, size_t i, const char* name) { return float(a.number(i, name)); }

// sgdStep(p, g, buf | null, lr, momentum, dampening, nesterov, weightDecay, firstStep)
Napi::Value SgdStep(const CI& info) {
  Args a{info, "sgdStep"};
  Tensor p = a.tensor(0, "param");
  const Tensor& g = a.tensor(1, "grad");
  Tensor buf = a.optional_tensor(2, "momentumBuffer");
  sgd_step(p, g, buf, f32(a, 3, "lr"), f32(a, 4, "momentum"), f32(a, 5, "dampening"),
           a.boolean(6, "nesterov"), f32(a, 7, "weightDecay"), a.boolean(8, "firstStep"));
  return info.Env().Undefined();
}

// adamwStep(p, g, m, v, lr, beta1, beta2, eps, weightDecay, step)
Napi::Value AdamWStep(const CI& info) {
  Args a{info, "adamwStep"};
  Tensor p = a.tensor(0, "param");
  const Tensor& g = a.tensor(1, "grad");
  Tensor m = a.tensor(2, "expAvg");
  Tensor v = a.tensor(3, "expAvgSq");
  adamw_step(p, g, m, v, f32(a, 4, "lr"), f32(a, 5, "beta1"), f32(a, 6, "beta2"),
             f32(a, 7, "eps"), f32(a, 8, "weightDecay"),
             a.integer(9, "step", 1, int64_t(1) << 53));
  return info.Env().Undefined();
}

// lambGradClip(grads: Tensor[], maxGradNorm) -> [1] tensor
Napi::Value LambGradClip(const CI& info) {
  Args a{info, "lambGradClip"};
  Napi::Value arr = a.at(0, "grads");
  AS_CHECK(arr.IsArray(), Arg, "lambGradClip: 'grads' must be an array of tensors");
  Napi::Array list = arr.As<Napi::Array>();
  std::vector<Tensor> grads;
  grads.reserve(list.Length());
  for (uint32_t i = 0; i < list.Length(); ++i)
    grads.push_back(unwrap_tensor(info, list.Get(i), "lambGradClip", cat("'grads'[", i, "]")));
  return wrap(info, lamb_grad_clip(grads, f32(a, 1, "maxGradNorm")));
}

// lambStep(p, g, m, v, clip | null, lr, beta1, beta2, eps, weightDecay, step, biasCorrection,
//          gradAveraging, decoupledDecay, trustClip, alwaysAdapt)
Napi::Value LambStep(const CI& info) {
  Args a{info, "lambStep"};
  Tensor p = a.tensor(0, "param");
  const Tensor& g = a.tensor(1, "grad");
  Tensor m = a.tensor(2, "expAvg");
  Tensor v = a.tensor(3, "expAvgSq");
  Tensor clip = a.optional_tensor(4, "clip");
  LambOptions o;
  o.lr = f32(a, 5, "lr");
  o.beta1 = f32(a, 6, "beta1");
  o.beta2 = f32(a, 7, "beta2");
  o.eps = f32(a, 8, "eps");
  o.weight_decay = f32(a, 9, "weightDecay");
  o.step = a.integer(10, "step", 1, int64_t(1) << 53);
  o.bias_correction = a.boolean(11, "biasCorrection");
  o.grad_averaging = a.boolean(12, "gradAveraging");
  o.decoupled_decay = a.boolean(13, "decoupledDecay");
  o.trust_clip = a.boolean(14, "trustClip");
  o.always_adapt = a.boolean(15, "alwaysAdapt");
  lamb_step(p, g, m, v, clip, o);
  return info.Env().Undefined();
}

}  // namespace

void register_optim(Napi::Env env, Napi::Object exports) {
  AS_EXPORT(exports, env, "sgdStep", SgdStep);
  AS_EXPORT(exports, env, "adamwStep", AdamWStep);
  AS_EXPORT(exports, env, "lambGradClip", LambGradClip);
  AS_EXPORT(exports, env, "lambStep", LambStep);
}

}  // namespace napi
}  // namespace adashift

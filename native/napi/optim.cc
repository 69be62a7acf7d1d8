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

// Every update takes an optional last argument: a schedule tensor (capturable updates: lr and
// the step-dependent scalars are read from it on the device; see ops/optim.h).

// sgdStep(p, g, buf | null, lr, momentum, dampening, nesterov, weightDecay, firstStep, sched?)
Napi::Value SgdStep(const CI& info) {
  Args a{info, "sgdStep"};
  Tensor p = a.tensor(0, "param");
  const Tensor& g = a.tensor(1, "grad");
  Tensor buf = a.optional_tensor(2, "momentumBuffer");
  sgd_step(p, g, buf, f32(a, 3, "lr"), f32(a, 4, "momentum"), f32(a, 5, "dampening"),
           a.boolean(6, "nesterov"), f32(a, 7, "weightDecay"), a.boolean(8, "firstStep"),
           a.optional_tensor(9, "sched"));
  return info.Env().Undefined();
}

// adamwStep(p, g, m, v, lr, beta1, beta2, eps, weightDecay, step, sched?)
Napi::Value AdamWStep(const CI& info) {
  Args a{info, "adamwStep"};
  Tensor p = a.tensor(0, "param");
  const Tensor& g = a.tensor(1, "grad");
  Tensor m = a.tensor(2, "expAvg");
  Tensor v = a.tensor(3, "expAvgSq");
  adamw_step(p, g, m, v, f32(a, 4, "lr"), f32(a, 5, "beta1"), f32(a, 6, "beta2"),
             f32(a, 7, "eps"), f32(a, 8, "weightDecay"),
             a.integer(9, "step", 1, int64_t(1) << 53), a.optional_tensor(10, "sched"));
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
//          gradAveraging, decoupledDecay, trustClip, alwaysAdapt, sched?)
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
  lamb_step(p, g, m, v, clip, o, a.optional_tensor(16, "sched"));
  return info.Env().Undefined();
}

// optimSchedNew(device, lr, step) -> a schedule tensor [kSchedSize]
Napi::Value OptimSchedNew(const CI& info) {
  Args a{info, "optimSchedNew"};
  return wrap(info, optim_sched_new(a.device(0, "device"), f32(a, 1, "lr"),
                                    a.integer(2, "step", 0, int64_t(1) << 24)));
}

// optimAdvance(sched, kind: 'sgd' | 'adamw' | 'lamb', beta1, beta2, weightDecay, biasCorrection,
//              decoupledDecay)
Napi::Value OptimAdvance(const CI& info) {
  Args a{info, "optimAdvance"};
  Tensor sched = a.tensor(0, "sched");
  Napi::Value k = a.at(1, "kind");
  const std::string kind = k.IsString() ? k.As<Napi::String>().Utf8Value() : std::string();
  AS_CHECK(kind == "sgd" || kind == "adamw" || kind == "lamb", Arg,
           "optimAdvance: 'kind' must be 'sgd', 'adamw' or 'lamb'");
  SchedConst c;
  c.kind = kind == "sgd" ? OptimKind::Sgd : kind == "adamw" ? OptimKind::AdamW : OptimKind::Lamb;
  c.beta1 = f32(a, 2, "beta1");
  c.beta2 = f32(a, 3, "beta2");
  c.weight_decay = f32(a, 4, "weightDecay");
  c.bias_correction = a.boolean(5, "biasCorrection");
  c.decoupled = a.boolean(6, "decoupledDecay") && c.weight_decay != 0.0f;
  optim_advance(sched, c);
  return info.Env().Undefined();
}

// optimSchedWrite(sched, index: 0 (lr) | 1 (step), value)
Napi::Value OptimSchedWrite(const CI& info) {
  Args a{info, "optimSchedWrite"};
  Tensor sched = a.tensor(0, "sched");
  const int64_t index = a.integer(1, "index", 0, 1);
  // the step count is checked as an integer before it becomes a float
  const float value = index == 1 ? float(a.integer(2, "value", 0, int64_t(1) << 24)) : f32(a, 2, "value");
  optim_sched_write(sched, index, value);
  return info.Env().Undefined();
}

}  // namespace

void register_optim(Napi::Env env, Napi::Object exports) {
  AS_EXPORT(exports, env, "sgdStep", SgdStep);
  AS_EXPORT(exports, env, "adamwStep", AdamWStep);
  AS_EXPORT(exports, env, "lambGradClip", LambGradClip);
  AS_EXPORT(exports, env, "lambStep", LambStep);
  AS_EXPORT(exports, env, "optimSchedNew", OptimSchedNew);
  AS_EXPORT(exports, env, "optimAdvance", OptimAdvance);
  AS_EXPORT(exports, env, "optimSchedWrite", OptimSchedWrite);
}

}  // namespace napi
}  // namespace adashift

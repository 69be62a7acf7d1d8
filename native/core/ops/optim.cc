#include "optim.h"
#include <cmath>
#include "../dispatch.h"

namespace adashift {

namespace {

// Parameter, gradient and state buffers: same device, same number of elements, distinct memory.
void check_operand(const Tensor& p, const Tensor& t, const char* fn, const char* name) {
  AS_CHECK(t.defined(), Arg, fn, ": '", name, "' is missing");
  check_same_device(p, t, fn);
  AS_CHECK(t.shape() == p.shape(), Shape, fn, ": '", name, "' has shape ", shape_str(t.shape()),
           ", expected the parameter's shape ", shape_str(p.shape()));
  AS_CHECK(t.numel() == 0 || t.data() != p.data(), Arg, fn, ": '", name,
           "' must not share memory with the parameter");
}

void check_distinct(const Tensor& a, const Tensor& b, const char* fn, const char* na,
                    const char* nb) {
  AS_CHECK(a.numel() == 0 || a.data() != b.data(), Arg, fn, ": '", na, "' and '", nb,
           "' must be different tensors");
}

void check_finite_nonneg(float x, const char* fn, const char* name) {
  AS_CHECK(std::isfinite(x) && x >= 0.0f, Arg, fn, ": '", name,
           "' must be a finite number >= 0, got ", x);
}

void check_beta(float b, const char* fn, const char* name) {
  AS_CHECK(std::isfinite(b) && b >= 0.0f && b < 1.0f, Arg, fn, ": '", name,
           "' must be in [0, 1), got ", b);
}

}  // namespace

void sgd_step(Tensor& p, const Tensor& g, Tensor& buf, float lr, float momentum, float dampening,
              bool nesterov, float weight_decay, bool first_step) {
  const char* fn = "sgd_step";
  AS_CHECK(p.defined(), Arg, fn, ": the parameter is missing");
  check_operand(p, g, fn, "grad");
  check_finite_nonneg(lr, fn, "lr");
  check_finite_nonneg(momentum, fn, "momentum");
  check_finite_nonneg(weight_decay, fn, "weightDecay");
  AS_CHECK(std::isfinite(dampening), Arg, fn, ": 'dampening' must be finite, got ", dampening);
  AS_CHECK(!nesterov || (momentum > 0.0f && dampening == 0.0f), Arg, fn,
           ": Nesterov momentum requires momentum > 0 and dampening 0, got momentum ", momentum,
           " and dampening ", dampening);
  if (momentum != 0.0f) {
    check_operand(p, buf, fn, "momentumBuffer");
    check_distinct(g, buf, fn, "grad", "momentumBuffer");
  }
  if (p.numel() == 0) return;
  SgdParams h{lr, momentum, dampening, weight_decay, nesterov, first_step};
  AS_DISPATCH(p.device(), sgd_step, p.data(), g.data(), momentum != 0.0f ? buf.data() : nullptr,
              p.numel(), h);
}

void adamw_step(Tensor& p, const Tensor& g, Tensor& m, Tensor& v, float lr, float beta1,
                float beta2, float eps, float weight_decay, int64_t step) {
  const char* fn = "adamw_step";
  AS_CHECK(p.defined(), Arg, fn, ": the parameter is missing");
  check_operand(p, g, fn, "grad");
  check_operand(p, m, fn, "expAvg");
  check_operand(p, v, fn, "expAvgSq");
  check_distinct(g, m, fn, "grad", "expAvg");
  check_distinct(g, v, fn, "grad", "expAvgSq");
  check_distinct(m, v, fn, "expAvg", "expAvgSq");
  check_finite_nonneg(lr, fn, "lr");
  check_finite_nonneg(eps, fn, "eps");
  check_finite_nonneg(weight_decay, fn, "weightDecay");
  check_beta(beta1, fn, "beta1");
  check_beta(beta2, fn, "beta2");
  AS_CHECK(step >= 1, Arg, fn, ": 'step' must be >= 1 (the count after this update), got ", step);
  if (p.numel() == 0) return;
  const double bc1 = 1.0 - std::pow(double(beta1), double(step));
  const double bc2 = 1.0 - std::pow(double(beta2), double(step));
  AdamWParams h;
  h.decay = float(1.0 - double(lr) * double(weight_decay));
  h.beta1 = beta1;
  h.one_minus_beta1 = float(1.0 - double(beta1));
  h.beta2 = beta2;
  h.one_minus_beta2 = float(1.0 - double(beta2));
  h.eps = eps;
  h.step_size = float(double(lr) / bc1);
  h.bc2_sqrt = float(std::sqrt(bc2));
  AS_DISPATCH(p.device(), adamw_step, p.data(), g.data(), m.data(), v.data(), p.numel(), h);
}

Tensor lamb_grad_clip(const std::vector<Tensor>& grads, float max_grad_norm) {
  const char* fn = "lamb_grad_clip";
  AS_CHECK(std::isfinite(max_grad_norm) && max_grad_norm > 0.0f, Arg, fn,
           ": 'maxGradNorm' must be a finite number > 0, got ", max_grad_norm);
  AS_CHECK(!grads.empty(), Arg, fn, ": needs at least one gradient");
  std::vector<const float*> ptrs;
  std::vector<int64_t> sizes;
  ptrs.reserve(grads.size());
  sizes.reserve(grads.size());
  for (size_t i = 0; i < grads.size(); ++i) {
    AS_CHECK(grads[i].defined(), Arg, fn, ": gradient ", i, " is missing");
    AS_CHECK(grads[i].device() == grads[0].device(), Device, fn,
             ": every gradient must be on one device, got ", grads[0].device().str(), " (0) and ",
             grads[i].device().str(), " (", i, ")");
    ptrs.push_back(grads[i].data());
    sizes.push_back(grads[i].numel());
  }
  Tensor out({1}, grads[0].device());
  AS_DISPATCH(out.device(), lamb_grad_clip, ptrs.data(), sizes.data(), int64_t(ptrs.size()),
              max_grad_norm, out.data());
  return out;
}

void lamb_step(Tensor& p, const Tensor& g, Tensor& m, Tensor& v, const Tensor& clip,
               const LambOptions& o) {
  const char* fn = "lamb_step";
  AS_CHECK(p.defined(), Arg, fn, ": the parameter is missing");
  check_operand(p, g, fn, "grad");
  check_operand(p, m, fn, "expAvg");
  check_operand(p, v, fn, "expAvgSq");
  check_distinct(g, m, fn, "grad", "expAvg");
  check_distinct(g, v, fn, "grad", "expAvgSq");
  check_distinct(m, v, fn, "expAvg", "expAvgSq");
  if (clip.defined()) {
    check_same_device(p, clip, fn);
    AS_CHECK(clip.numel() == 1, Shape, fn, ": 'clip' must hold one value, got shape ",
             shape_str(clip.shape()));
  }
  check_finite_nonneg(o.lr, fn, "lr");
  check_finite_nonneg(o.eps, fn, "eps");
  check_finite_nonneg(o.weight_decay, fn, "weightDecay");
  check_beta(o.beta1, fn, "beta1");
  check_beta(o.beta2, fn, "beta2");
  AS_CHECK(o.step >= 1, Arg, fn, ": 'step' must be >= 1 (the count after this update), got ",
           o.step);
  if (p.numel() == 0) return;
  LambParams h;
  h.beta1 = o.beta1;
  h.beta3 = o.grad_averaging ? float(1.0 - double(o.beta1)) : 1.0f;
  h.beta2 = o.beta2;
  h.one_minus_beta2 = float(1.0 - double(o.beta2));
  h.eps = o.eps;
  if (o.bias_correction) {
    h.bc1 = float(1.0 - std::pow(double(o.beta1), double(o.step)));
    h.bc2_sqrt = float(std::sqrt(1.0 - std::pow(double(o.beta2), double(o.step))));
  } else {
    h.bc1 = 1.0f;
    h.bc2_sqrt = 1.0f;
  }
  const bool decoupled = o.decoupled_decay && o.weight_decay != 0.0f;
  h.coupled_wd = decoupled ? 0.0f : o.weight_decay;
  h.decay = decoupled ? float(1.0 - double(o.lr) * double(o.weight_decay)) : 1.0f;
  h.lr = o.lr;
  h.trust_clip = o.trust_clip;
  const float* c = clip.defined() ? clip.data() : nullptr;
  const bool adapt = o.weight_decay != 0.0f || o.always_adapt;
  if (!adapt) {
    AS_DISPATCH(p.device(), lamb_fused, p.data(), g.data(), m.data(), v.data(), c, p.numel(), h);
    return;
  }
  Tensor norms({2}, p.device());  // stays on the device between the passes
  AS_DISPATCH(p.device(), lamb_moments, p.data(), g.data(), m.data(), v.data(), c, p.numel(), h,
              norms.data());
  AS_DISPATCH(p.device(), lamb_apply, p.data(), m.data(), v.data(), norms.data(), p.numel(), h);
}

}  // namespace adashift

#include "optim.h"
#include <cmath>
#include <initializer_list>
#include "../dispatch.h"
#include "elementwise.h"

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

void check_sched(const Tensor& sched, const char* fn) {
  AS_CHECK(sched.defined(), Arg, fn, ": the schedule tensor is missing");
  AS_CHECK(sched.dim() == 1 && sched.numel() == kSchedSize, Shape, fn,
           ": a schedule tensor has shape [", kSchedSize, "], got ", shape_str(sched.shape()));
}

// The schedule's derived scalars for an update of p (null without a schedule). The schedule is
// read by every thread of the update: it must not be one of the tensors the update writes.
const float* dynamic_of(const Tensor& p, const Tensor& sched, const char* fn,
                        std::initializer_list<const Tensor*> operands) {
  if (!sched.defined()) return nullptr;
  check_sched(sched, fn);
  check_same_device(p, sched, fn);
  for (const Tensor* t : operands)
    AS_CHECK(!t->defined() || t->numel() == 0 || t->data() != sched.data(), Arg, fn,
             ": the schedule tensor must not share memory with the parameter, its gradient or "
             "its state buffers");
  return sched.data() + kSchedDynamic;
}

}  // namespace

void sgd_step(Tensor& p, const Tensor& g, Tensor& buf, float lr, float momentum, float dampening,
              bool nesterov, float weight_decay, bool first_step, const Tensor& sched) {
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
  const float* dyn = dynamic_of(p, sched, fn, {&p, &g, &buf});
  if (p.numel() == 0) return;
  SgdParams h{lr, momentum, dampening, weight_decay, nesterov, first_step};
  AS_DISPATCH(p.device(), sgd_step, p.data(), g.data(), momentum != 0.0f ? buf.data() : nullptr,
              p.numel(), h, dyn);
}

void adamw_step(Tensor& p, const Tensor& g, Tensor& m, Tensor& v, float lr, float beta1,
                float beta2, float eps, float weight_decay, int64_t step, const Tensor& sched) {
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
  const float* dyn = dynamic_of(p, sched, fn, {&p, &g, &m, &v});
  if (p.numel() == 0) return;
  AdamWParams h;
  h.beta1 = beta1;
  h.one_minus_beta1 = float(1.0 - double(beta1));
  h.beta2 = beta2;
  h.one_minus_beta2 = float(1.0 - double(beta2));
  h.eps = eps;
  float d[3];
  math::adamw_dynamic(double(lr), double(step), beta1, beta2, weight_decay, d);
  math::apply_dynamic(h, d);
  AS_DISPATCH(p.device(), adamw_step, p.data(), g.data(), m.data(), v.data(), p.numel(), h, dyn);
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
               const LambOptions& o, const Tensor& sched) {
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
  const float* dyn = dynamic_of(p, sched, fn, {&p, &g, &m, &v, &clip});
  if (p.numel() == 0) return;
  LambParams h;
  h.beta1 = o.beta1;
  h.beta3 = o.grad_averaging ? float(1.0 - double(o.beta1)) : 1.0f;
  h.beta2 = o.beta2;
  h.one_minus_beta2 = float(1.0 - double(o.beta2));
  h.eps = o.eps;
  const bool decoupled = o.decoupled_decay && o.weight_decay != 0.0f;
  h.coupled_wd = decoupled ? 0.0f : o.weight_decay;
  float d[4];
  math::lamb_dynamic(double(o.lr), double(o.step), o.beta1, o.beta2, o.weight_decay,
                     o.bias_correction, decoupled, d);
  math::apply_dynamic(h, d);
  h.trust_clip = o.trust_clip;
  const float* c = clip.defined() ? clip.data() : nullptr;
  const bool adapt = o.weight_decay != 0.0f || o.always_adapt;
  if (!adapt) {
    AS_DISPATCH(p.device(), lamb_fused, p.data(), g.data(), m.data(), v.data(), c, p.numel(), h,
                dyn);
    return;
  }
  Tensor norms({2}, p.device());  // stays on the device between the passes
  AS_DISPATCH(p.device(), lamb_moments, p.data(), g.data(), m.data(), v.data(), c, p.numel(), h,
              dyn, norms.data());
  AS_DISPATCH(p.device(), lamb_apply, p.data(), m.data(), v.data(), norms.data(), p.numel(), h,
              dyn);
}

Tensor optim_sched_new(const Device& device, float lr, int64_t step) {
  const char* fn = "optim_sched_new";
  check_finite_nonneg(lr, fn, "lr");
  AS_CHECK(step >= 0 && step <= (int64_t(1) << 24), Arg, fn,
           ": 'step' must be an integer in [0, 2^24] (the schedule counts steps in a float), got ",
           step);
  Tensor sched = full({kSchedSize}, 0.0f, device);
  optim_sched_write(sched, 0, lr);
  optim_sched_write(sched, 1, float(step));
  return sched;
}

void optim_advance(Tensor& sched, const SchedConst& c) {
  const char* fn = "optim_advance";
  check_sched(sched, fn);
  AS_CHECK(c.kind == OptimKind::Sgd || c.kind == OptimKind::AdamW || c.kind == OptimKind::Lamb,
           Arg, fn, ": unknown optimizer kind ", int(c.kind));
  check_beta(c.beta1, fn, "beta1");
  check_beta(c.beta2, fn, "beta2");
  check_finite_nonneg(c.weight_decay, fn, "weightDecay");
  AS_DISPATCH(sched.device(), optim_advance, sched.data(), c);
}

void optim_sched_write(Tensor& sched, int64_t index, float value) {
  const char* fn = "optim_sched_write";
  check_sched(sched, fn);
  AS_CHECK(index == 0 || index == 1, Arg, fn, ": 'index' must be 0 (lr) or 1 (step), got ", index);
  AS_CHECK(std::isfinite(value) && value >= 0.0f, Arg, fn,
           ": the value must be a finite number >= 0, got ", value);
  AS_CHECK(index == 0 || (value == std::floor(value) && value <= float(int64_t(1) << 24)), Arg,
           fn, ": the step count must be an integer in [0, 2^24], got ", value);
  AS_DISPATCH(sched.device(), optim_sched_write, sched.data(), index, value);
}

}  // namespace adashift

// Optimizer updates: SGD (PyTorch semantics), AdamW (PyTorch), LAMB (timm's Lamb). Every update
// is in place and fused: one pass reads the parameter, its gradient and its state buffers and
// writes the parameter and the buffers. Hyper-parameters that depend on the step (bias
// corrections) are computed once per update in double: on the host, or for capturable updates
// on the device from the schedule tensor (below), with the same functions.
//
// Passes and their traffic per parameter element (float32):
//   sgd_step (momentum 0)       reads p, g, writes p                       12 B
//   sgd_step (momentum)         reads p, g, buf, writes p, buf             20 B
//   adamw_step                  reads p, g, m, v, writes p, m, v           28 B
//   lamb_grad_clip              reads every g                               4 B
//   lamb_step, no adaptation    reads p, g, m, v, writes p, m, v           28 B
//   lamb_step, with adaptation  pass 1 reads p, g, m, v, writes m, v and
//                               reduces ||p||^2, ||update||^2             24 B
//                               pass 2 reads p, m, v, writes p             16 B
// (Pass 2 recomputes the update from the new moments instead of storing it: the same 40 B
// as writing and re-reading an update buffer, with no scratch of the parameter's size.)
//
// Reductions (the global gradient norm, the per-tensor norms of LAMB) are deterministic: fixed
// blocks summed in double, block partials added in a fixed order (CPU: independent of the
// thread count; CUDA: of the launch shape, which depends only on n and the SM count). Scalars
// that feed later kernels (the clip factor, the norms) stay on the device: no host sync.
//
// Capturable updates (for CUDA graphs): a replay re-runs the captured kernels with their
// captured arguments, so the scalars that change between steps (the learning rate, the bias
// corrections of the step count) cannot be kernel arguments. A capturable optimizer group keeps
// them in a small schedule tensor on the parameters' device (kSchedSize floats):
//   sched[0] = lr          written from the host between steps (optim_sched_write)
//   sched[1] = step count  advanced on the device by optim_advance, once per group and step
//   sched[2..]             the step-dependent kernel scalars, derived by optim_advance
// The update kernels given a schedule read those scalars from it at launch. Eager and
// capturable updates derive them with the same functions (math::*_dynamic below), in double.
#pragma once
#include <cmath>
#include <vector>
#include "../tensor.h"
#ifdef ADASHIFT_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace adashift {

// ---- hyper-parameters as the kernels see them (derived on the host) --------------------------
struct SgdParams {
  float lr;
  float momentum;    // 0: no buffer
  float dampening;
  float weight_decay;
  bool nesterov;
  bool first_step;   // seeds the momentum buffer with the gradient
};

struct AdamWParams {
  float decay;       // 1 - lr * weight_decay
  float beta1, one_minus_beta1;
  float beta2, one_minus_beta2;
  float eps;
  float step_size;   // lr / (1 - beta1^step)
  float bc2_sqrt;    // sqrt(1 - beta2^step)
};

struct LambParams {
  float beta1, beta3;  // m = beta1 m + beta3 g (beta3 = 1 - beta1 with grad averaging, else 1)
  float beta2, one_minus_beta2;
  float eps;
  float bc1, bc2_sqrt;  // 1 - beta1^step and sqrt(1 - beta2^step) (1 and 1 without correction)
  float coupled_wd;     // added to the update: wd * p (0 with decoupled decay)
  float decay;          // p *= decay before the update (1 - lr wd with decoupled decay, else 1)
  float lr;
  bool trust_clip;      // LAMBC: trust ratio clamped to at most 1
};

// ---- the schedule tensor of capturable updates -------------------------------------------------
constexpr int64_t kSchedSize = 8;
constexpr int64_t kSchedDynamic = 2;  // sched[kSchedDynamic..] hold the derived kernel scalars
enum class OptimKind : int { Sgd = 0, AdamW = 1, Lamb = 2 };
// What optim_advance needs besides lr and the step: the group's constant hyper-parameters.
struct SchedConst {
  OptimKind kind;
  float beta1, beta2, weight_decay;
  bool bias_correction;  // LAMB
  bool decoupled;        // LAMB: decoupled weight decay (and weight_decay != 0)
};

// ---- per-element formulas shared by both backends ---------------------------------------------
// (They belong with the others in math.h; they live here because this family owns this file.)
namespace math {

// SGD without momentum: p -= lr (g + wd p)
AS_HD float sgd_plain(float p, float g, const SgdParams& h) {
  const float d = g + h.weight_decay * p;
  return p - h.lr * d;
}
// SGD with momentum (PyTorch): d = g + wd p; buf = first ? d : momentum buf + (1 - dampening) d;
// d = nesterov ? d + momentum buf : buf; p -= lr d.
AS_HD void sgd_momentum(float& p, float g, float& buf, const SgdParams& h) {
  float d = g + h.weight_decay * p;
  const float b = h.first_step ? d : h.momentum * buf + (1.0f - h.dampening) * d;
  buf = b;
  d = h.nesterov ? d + h.momentum * b : b;
  p = p - h.lr * d;
}

// AdamW (PyTorch): p *= 1 - lr wd; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
// p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps).
AS_HD void adamw(float& p, float g, float& m, float& v, const AdamWParams& h) {
  const float pd = p * h.decay;
  const float mm = h.beta1 * m + h.one_minus_beta1 * g;
  const float vv = h.beta2 * v + h.one_minus_beta2 * g * g;
  const float denom = sqrtf(vv) / h.bc2_sqrt + h.eps;
  m = mm;
  v = vv;
  p = pd - h.step_size * (mm / denom);
}

// ---- step-dependent scalars (host for eager updates, device for capturable ones) --------------
// SGD: [lr]
AS_HD void sgd_dynamic(double lr, float* out) { out[0] = float(lr); }
AS_HD void apply_dynamic(SgdParams& h, const float* d) { h.lr = d[0]; }
// AdamW at the 1-based step: [1 - lr wd, lr / (1 - beta1^step), sqrt(1 - beta2^step)]
AS_HD void adamw_dynamic(double lr, double step, float beta1, float beta2, float weight_decay,
                         float* out) {
  const double bc1 = 1.0 - ::pow(double(beta1), step);
  const double bc2 = 1.0 - ::pow(double(beta2), step);
  out[0] = float(1.0 - lr * double(weight_decay));
  out[1] = float(lr / bc1);
  out[2] = float(::sqrt(bc2));
}
AS_HD void apply_dynamic(AdamWParams& h, const float* d) {
  h.decay = d[0];
  h.step_size = d[1];
  h.bc2_sqrt = d[2];
}
// LAMB at the 1-based step: [bc1, sqrt(bc2), decay, lr] (bc1 = bc2 = 1 without bias correction;
// decay = 1 - lr wd with decoupled decay, else 1)
AS_HD void lamb_dynamic(double lr, double step, float beta1, float beta2, float weight_decay,
                        bool bias_correction, bool decoupled, float* out) {
  out[0] = bias_correction ? float(1.0 - ::pow(double(beta1), step)) : 1.0f;
  out[1] = bias_correction ? float(::sqrt(1.0 - ::pow(double(beta2), step))) : 1.0f;
  out[2] = decoupled ? float(1.0 - lr * double(weight_decay)) : 1.0f;
  out[3] = float(lr);
}
AS_HD void apply_dynamic(LambParams& h, const float* d) {
  h.bc1 = d[0];
  h.bc2_sqrt = d[1];
  h.decay = d[2];
  h.lr = d[3];
}
// One advance of a schedule: step += 1, then the kernel scalars of the new step.
AS_HD void sched_advance(float* sched, const SchedConst& c) {
  sched[1] += 1.0f;
  const double lr = double(sched[0]), step = double(sched[1]);
  float* d = sched + kSchedDynamic;
  switch (c.kind) {
    case OptimKind::Sgd: sgd_dynamic(lr, d); break;
    case OptimKind::AdamW: adamw_dynamic(lr, step, c.beta1, c.beta2, c.weight_decay, d); break;
    case OptimKind::Lamb:
      lamb_dynamic(lr, step, c.beta1, c.beta2, c.weight_decay, c.bias_correction, c.decoupled, d);
      break;
  }
}

// LAMB moments on the clipped gradient g / clip.
AS_HD void lamb_moments(float g, float clip, float& m, float& v, const LambParams& h) {
  const float gc = g / clip;
  m = h.beta1 * m + h.beta3 * gc;
  v = h.beta2 * v + h.one_minus_beta2 * gc * gc;
}
// The update before the trust ratio: (m / bc1) / (sqrt(v) / sqrt(bc2) + eps) + wd p.
AS_HD float lamb_update(float p, float m, float v, const LambParams& h) {
  const float u = (m / h.bc1) / (sqrtf(v) / h.bc2_sqrt + h.eps);
  return u + h.coupled_wd * p;
}
// ||p|| / ||update|| when both are positive, else 1; at most 1 with trust clipping.
AS_HD float lamb_trust(float w_norm, float u_norm, bool clip) {
  float r = (w_norm > 0.0f && u_norm > 0.0f) ? w_norm / u_norm : 1.0f;
  return (clip && r > 1.0f) ? 1.0f : r;
}
// norm / max_norm above max_norm, else 1 (timm's where(norm > max_norm, ...): a NaN norm gives
// 1, so one NaN gradient element spoils only its own parameter, not every one)
AS_HD float lamb_clip_factor(float norm, float max_norm) {
  return norm > max_norm ? norm / max_norm : 1.0f;
}

}  // namespace math

// ---- Tensor-level functions (validate, derive the kernel parameters, dispatch) -----------------
// buf is undefined when momentum is 0. first_step: the buffer is seeded with the gradient (its
// previous contents are ignored).
// sched (every update): a schedule tensor (capturable updates; then lr and step are read from it
// on the device and the arguments' lr and step are ignored), or undefined.
void sgd_step(Tensor& p, const Tensor& g, Tensor& buf, float lr, float momentum, float dampening,
              bool nesterov, float weight_decay, bool first_step, const Tensor& sched = Tensor());
// step: the 1-based step count after this update (bias corrections use it).
void adamw_step(Tensor& p, const Tensor& g, Tensor& m, Tensor& v, float lr, float beta1,
                float beta2, float eps, float weight_decay, int64_t step,
                const Tensor& sched = Tensor());

struct LambOptions {
  float lr = 1e-3f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-6f, weight_decay = 0.0f;
  int64_t step = 1;              // 1-based step count of the parameter's group
  bool bias_correction = true;
  bool grad_averaging = true;
  bool decoupled_decay = false;  // p *= 1 - lr wd instead of adding wd p to the update
  bool trust_clip = false;
  bool always_adapt = false;     // apply the trust ratio also when weight_decay is 0
};
// The global gradient clip factor of timm's Lamb: [1] tensor holding
// max(||concat(grads)||_2 / max_grad_norm, 1), on the gradients' (common) device.
Tensor lamb_grad_clip(const std::vector<Tensor>& grads, float max_grad_norm);
// One LAMB update of p, m, v. clip: a [1] tensor from lamb_grad_clip, or undefined (no
// clipping). With adaptation (weight_decay != 0 or always_adapt) it runs the two passes above,
// the norms staying on the device; otherwise one fused pass.
void lamb_step(Tensor& p, const Tensor& g, Tensor& m, Tensor& v, const Tensor& clip,
               const LambOptions& o, const Tensor& sched = Tensor());
// A new schedule tensor on `device`: lr, step count `step`, derived scalars for it.
Tensor optim_sched_new(const Device& device, float lr, int64_t step);
// Advances a schedule by one step (on its device, in stream order): step += 1, then the kernel
// scalars of the new step for the group's constants c.
void optim_advance(Tensor& sched, const SchedConst& c);
// sched[index] = value for index 0 (lr) or 1 (step count), in stream order.
void optim_sched_write(Tensor& sched, int64_t index, float value);

// dyn (every update): the schedule's derived scalars (sched + kSchedDynamic), or null: the
// step-dependent fields of h are replaced by them before the update.
namespace cpu {
void sgd_step(float* p, const float* g, float* buf, int64_t n, const SgdParams& h, const float* dyn);
void adamw_step(float* p, const float* g, float* m, float* v, int64_t n, const AdamWParams& h,
                const float* dyn);
// sumsq[i] = sum of squares of grads[i] (n[i] elements), then out[0] = the clip factor.
void lamb_grad_clip(const float* const* grads, const int64_t* n, int64_t count, float max_norm,
                    float* out);
// clip: nullable (1). Fused pass: updates m, v, p.
void lamb_fused(float* p, const float* g, float* m, float* v, const float* clip, int64_t n,
                const LambParams& h, const float* dyn);
// Pass 1: updates m, v; norms[0] = ||p * decay||, norms[1] = ||update||.
void lamb_moments(const float* p, const float* g, float* m, float* v, const float* clip,
                  int64_t n, const LambParams& h, const float* dyn, float* norms);
// Pass 2: p = p * decay - lr * trust(norms) * update(p, m, v).
void lamb_apply(float* p, const float* m, const float* v, const float* norms, int64_t n,
                const LambParams& h, const float* dyn);
void optim_advance(float* sched, const SchedConst& c);
void optim_sched_write(float* sched, int64_t index, float value);
}  // namespace cpu

#ifdef ADASHIFT_WITH_CUDA
namespace cuda {
void sgd_step(cudaStream_t s, float* p, const float* g, float* buf, int64_t n, const SgdParams& h,
              const float* dyn);
void adamw_step(cudaStream_t s, float* p, const float* g, float* m, float* v, int64_t n,
                const AdamWParams& h, const float* dyn);
void lamb_grad_clip(cudaStream_t s, const float* const* grads, const int64_t* n, int64_t count,
                    float max_norm, float* out);
void lamb_fused(cudaStream_t s, float* p, const float* g, float* m, float* v, const float* clip,
                int64_t n, const LambParams& h, const float* dyn);
void lamb_moments(cudaStream_t s, const float* p, const float* g, float* m, float* v,
                  const float* clip, int64_t n, const LambParams& h, const float* dyn,
                  float* norms);
void lamb_apply(cudaStream_t s, float* p, const float* m, const float* v, const float* norms,
                int64_t n, const LambParams& h, const float* dyn);
void optim_advance(cudaStream_t s, float* sched, const SchedConst& c);
void optim_sched_write(cudaStream_t s, float* sched, int64_t index, float value);
}  // namespace cuda
#endif

}  // namespace adashift

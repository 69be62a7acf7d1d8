// BatchNorm2d over x [N, C, H, W] (training with batch statistics and a running-stats update;
// eval with the running statistics), optionally fused with the activation that follows it:
// ReLU, SiLU, GELU (erf or tanh form), or the AdaShift-B gate z * sigmoid(z + s[n, c]);
// optionally with a residual r of x's shape added between the two (a ResNet block's
// shortcut): y = act(bn(x) + r), which saves the passes that would write bn(x), add r to it
// and read the sum back.
//
// The op is a few passes, each a plain kernel; the TypeScript layer strings them together
// (lib/ops/norm.ts) and runs the AdaShift context network between them.
//
//   batchnorm_stats      training: reads x once (per-(n, c) plane mean and M2, combined per
//                        channel with Chan's formula in a fixed order), -> mean, invstd [C],
//                        running stats updated in place; with `planes`, also per plane
//                        plane_xhat[n, c] = (mean_x[n, c] - mean_c) * invstd_c and the pooled
//                        mean of BN's output pooled[n, c] = plane_xhat * w_c + b_c ([N, C]),
//                        the input of AdaShift-B's context network, without touching x again.
//                        eval: mean = running_mean, invstd = 1/sqrt(running_var + eps); reads x
//                        only when `planes` is asked for.
//                        With a residual, pooled also adds the plane means of r (one more
//                        read of r).
//   batchnorm_act_forward                  reads x (and r), writes y = act(bn(x) + r)
//   batchnorm_act_backward_reduce          reads x, dy (and r): per plane sum(dz_d),
//                                          sum(dz_d * xhat) and (gate) ds = sum dy z g (1 - g),
//                                          with z and the gate recomputed on the fly
//   batchnorm_backward_params              [N, C] -> dweight, dbias [C] (fixed order over n),
//                                          adding the pooled path's dm in closed form
//   batchnorm_act_backward_apply           reads x, dy (and r), writes dx (and dr = dz, the
//                                          gradient of the activation's input)
// Traffic per element (float32): forward 4 + 8 B (training), backward 8 + 12 B; with a
// residual, forward 4 + 12 (gate: + 4), backward 12 + 20.
//
// Plane sums are per (n, c) plane in a fixed order; channel sums add the planes in order of n
// in double: results do not depend on the CPU thread count, and are the same bits run to run
// on a GPU.
#pragma once
#include "../tensor.h"
#ifdef ADASHIFT_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace adashift {

// Values match math::bnact.
enum class NormAct : int { None = 0, ReLU = 1, SiLU = 2, Gate = 3, GELU = 4, GELUTanh = 5 };

struct BnShape {
  int64_t N, C, HW;
  int64_t planes() const { return N * C; }
  int64_t count() const { return N * HW; }  // elements per channel
};

struct BnStats {
  Tensor mean, invstd;          // [C]
  Tensor plane_xhat, pooled;    // [N, C] when planes were asked for, else undefined
};

// running_mean / running_var: [C] (may be undefined in training: nothing to update; required
// in eval). weight, bias: [C] (needed only for `pooled`). residual: undefined, or x's shape
// (only with `planes`: its plane means join `pooled`).
BnStats batchnorm_stats(const Tensor& x, const Tensor& weight, const Tensor& bias,
                        const Tensor& running_mean, const Tensor& running_var, bool training,
                        float momentum, float eps, bool planes,
                        const Tensor& residual = Tensor());

// s: the shift, [N, C] or [N, 1, C] (gate only; undefined otherwise). residual: undefined, or
// x's shape, added to bn(x) before the activation (here and in the backward passes).
Tensor batchnorm_act_forward(const Tensor& x, const Tensor& weight, const Tensor& bias,
                             const Tensor& mean, const Tensor& invstd, NormAct act,
                             const Tensor& s, const Tensor& residual = Tensor());

struct BnReduce {
  Tensor sum_dz, sum_dz_xhat;  // [N, C]: per plane sums of the activation's direct gradient
  Tensor ds;                   // [N, C] (gate only)
  Tensor dz;                   // x's shape, when asked for: the direct gradient itself
};
// want_dz: also write the activation's direct input gradient dz_d per element, so that the
// apply pass can take it as its incoming gradient with act None (dz = dz_d + dm / HW) instead
// of evaluating the activation's gradient again: 4 more bytes written per element for one
// sigmoid fewer, the better trade on a CPU for SiLU and the gate (the same bits either way).
BnReduce batchnorm_act_backward_reduce(const Tensor& x, const Tensor& dy, const Tensor& weight,
                                       const Tensor& bias, const Tensor& mean,
                                       const Tensor& invstd, NormAct act, const Tensor& s,
                                       const Tensor& residual = Tensor(), bool want_dz = false);

struct BnParamGrad { Tensor dweight, dbias; };  // [C]
// dm ([N, C] or [N, 1, C], the gradient of `pooled`) and plane_xhat are given together or not
// at all: the pooled path adds dm[n, c] / HW to dz at every pixel of the plane, so it adds
// dm to the plane's sum(dz) and dm * plane_xhat to its sum(dz * xhat).
BnParamGrad batchnorm_backward_params(const Tensor& sum_dz, const Tensor& sum_dz_xhat,
                                      const Tensor& dm, const Tensor& plane_xhat);

// dx from dy through the activation (recomputed) and BatchNorm. training: the full batch-
// statistics formula with dweight = sum(dz xhat), dbias = sum(dz) (from
// batchnorm_backward_params); eval: dx = dz * weight * invstd (dweight, dbias unused). With a
// residual, also its gradient dresidual = dz (the activation's input gradient, pooled path
// included). dm (the gate's pooled path, dm / HW added to dz per plane) goes with the gate, or
// with act None when dy is the gate's direct gradient from the reduce pass (want_dz).
struct BnApplyGrad { Tensor dx, dresidual; };
BnApplyGrad batchnorm_act_backward_apply(const Tensor& x, const Tensor& dy, const Tensor& weight,
                                         const Tensor& bias, const Tensor& mean,
                                         const Tensor& invstd, NormAct act, const Tensor& s,
                                         const Tensor& dm, const Tensor& dweight,
                                         const Tensor& dbias, bool training,
                                         const Tensor& residual = Tensor());

// Per-channel constants of the element-wise passes, packed by the launchers' callers.
struct BnApply {
  const float* mean;    // [C]
  const float* invstd;  // [C]
  const float* weight;  // [C]
  const float* bias;    // [C]
  const float* s;       // [N*C] or nullptr (gate only)
  const float* r;       // [N*C*HW] or nullptr: the residual added before the activation
};

// BatchNorm's per-channel tensors (and the residual) checked against x as the passes above check
// them, packed for a kernel that applies bn(x) + r itself (s unused): the AdaShift-MA op with a
// BatchNorm input.
BnApply batchnorm_apply_params(const Tensor& x, const Tensor& weight, const Tensor& bias,
                               const Tensor& mean, const Tensor& invstd, const Tensor& residual,
                               const char* what);

namespace cpu {
// plane_xhat and pooled may be null (not wanted). running_* may be null.
// residual (nullable, with plane_xhat only): its plane means join pooled.
void batchnorm_stats_train(const BnShape& d, const float* x, const float* weight,
                           const float* bias, float momentum, float eps, float* running_mean,
                           float* running_var, float* mean, float* invstd, float* plane_xhat,
                           float* pooled, const float* residual);
void batchnorm_stats_eval(const BnShape& d, const float* x, const float* weight,
                          const float* bias, const float* running_mean, const float* running_var,
                          float eps, float* mean, float* invstd, float* plane_xhat, float* pooled,
                          const float* residual);
void batchnorm_act_forward(const BnShape& d, NormAct act, const BnApply& p, const float* x,
                           float* y);
// dz (nullable): the direct gradient per element.
void batchnorm_act_backward_reduce(const BnShape& d, NormAct act, const BnApply& p,
                                   const float* x, const float* dy, float* sum_dz,
                                   float* sum_dz_xhat, float* ds, float* dz);
void batchnorm_backward_params(const BnShape& d, const float* sum_dz, const float* sum_dz_xhat,
                               const float* dm, const float* plane_xhat, float* dweight,
                               float* dbias);
// dweight/dbias null: eval. dr: the residual's gradient (with p.r only).
void batchnorm_act_backward_apply(const BnShape& d, NormAct act, const BnApply& p,
                                  const float* x, const float* dy, const float* dm,
                                  const float* dweight, const float* dbias, float* dx, float* dr);
}  // namespace cpu

#ifdef ADASHIFT_WITH_CUDA
namespace cuda {
void batchnorm_stats_train(cudaStream_t st, const BnShape& d, const float* x,
                           const float* weight, const float* bias, float momentum, float eps,
                           float* running_mean, float* running_var, float* mean, float* invstd,
                           float* plane_xhat, float* pooled, const float* residual);
void batchnorm_stats_eval(cudaStream_t st, const BnShape& d, const float* x, const float* weight,
                          const float* bias, const float* running_mean, const float* running_var,
                          float eps, float* mean, float* invstd, float* plane_xhat, float* pooled,
                          const float* residual);
void batchnorm_act_forward(cudaStream_t st, const BnShape& d, NormAct act, const BnApply& p,
                           const float* x, float* y);
void batchnorm_act_backward_reduce(cudaStream_t st, const BnShape& d, NormAct act,
                                   const BnApply& p, const float* x, const float* dy,
                                   float* sum_dz, float* sum_dz_xhat, float* ds, float* dz);
void batchnorm_backward_params(cudaStream_t st, const BnShape& d, const float* sum_dz,
                               const float* sum_dz_xhat, const float* dm, const float* plane_xhat,
                               float* dweight, float* dbias);
void batchnorm_act_backward_apply(cudaStream_t st, const BnShape& d, NormAct act,
                                  const BnApply& p, const float* x, const float* dy,
                                  const float* dm, const float* dweight, const float* dbias,
                                  float* dx, float* dr);
}  // namespace cuda
#endif

}  // namespace adashift

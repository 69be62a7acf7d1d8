// The AdaShift shift-gate and its region pooling. x is [N, C, H, W]; the region grid is
// Ph x Pw cells (AdaShift-B: 1 x 1; AdaShift-MA: P x P with P clamped to H and W per axis),
// pixel (h, w) in cell (floor(h*Ph/H), floor(w*Pw/W)). Per-region tensors (pooled means t,
// shift s, their gradients) are token-major [N, Ph*Pw, C] so the context network can treat
// C as the feature axis.
//
// Passes and their traffic per element of x (float32):
//   region_pool_forward   reads x                          4 B
//   gate_forward          reads x, writes y                8 B
//   gate_backward_reduce  reads x, dy                      8 B   -> ds (per region)
//   gate_backward_apply   reads x, dy, writes dx          12 B   (adds dt/|cell| when given)
// The gate sigmoid(x + s) is recomputed in each pass, never stored.
#pragma once
#include "../tensor.h"
#include "norm.h"
#ifdef ADASHIFT_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace adashift {

struct RegionGrid {
  int64_t N, C, H, W;
  int Ph, Pw;
  // Per-region tensors [N, C, T] instead of [N, T, C]: used inside the CPU's per-sample
  // AdaShift-MA, where a plane's T values are then contiguous (the CUDA kernels and the ops'
  // tensors always use [N, T, C]).
  bool channel_major = false;
  int64_t tokens() const { return int64_t(Ph) * Pw; }
};
// Validates x ([N, C, H, W]) and the requested grid (>= 1), clamping P to H and W.
RegionGrid region_grid(const Tensor& x, int64_t grid);

Tensor region_pool_forward(const Tensor& x, int64_t grid);              // -> [N, T, C]
Tensor region_pool_backward(const Tensor& dt, const std::vector<int64_t>& x_shape, int64_t grid);
Tensor gate_forward(const Tensor& x, const Tensor& s, int64_t grid);     // -> like x
Tensor gate_backward_reduce(const Tensor& x, const Tensor& dy, const Tensor& s, int64_t grid);
// dt may be undefined (then dx is the gate's direct gradient only).
Tensor gate_backward_apply(const Tensor& x, const Tensor& dy, const Tensor& s, const Tensor& dt,
                           int64_t grid);

// ---- AdaShift-B as one op ---------------------------------------------------------------------
// y = x * sigmoid(x + s), s = LayerNorm_C(u), u = proj ? W t + b : t, t = mean_hw(x).
// On the CPU the op runs sample by sample, so x (and dy) are read from memory once per pass
// and re-read from cache: forward pool -> proj -> LayerNorm -> gate per sample; backward one
// pass for both gate gradients (direct dx written, shift gradient summed) -> LayerNorm and
// proj backward -> the pooled gradient added to the sample's dx in cache.
// On CUDA it is the same sequence of whole-tensor kernels (pool, LayerNorm, gate, ...).
struct AdaShiftBSaved {
  Tensor t;           // [N, 1, C] pooled means
  Tensor u;           // [N, 1, C] LayerNorm input (t itself without proj)
  Tensor s;           // [N, 1, C] shift
  Tensor mean, rstd;  // [N] LayerNorm statistics
};
struct AdaShiftBForward {
  Tensor y;
  AdaShiftBSaved saved;
};
struct AdaShiftBGrad {
  Tensor dx, dproj_w, dproj_b, dnorm_w, dnorm_b;  // undefined where not asked for / no proj
};
// proj_w [C, C] and proj_b [C] may be undefined (no proj).
AdaShiftBForward adashift_b_forward(const Tensor& x, const Tensor& proj_w, const Tensor& proj_b,
                                    const Tensor& norm_w, const Tensor& norm_b, float eps);
AdaShiftBGrad adashift_b_backward(const Tensor& x, const Tensor& dy, const AdaShiftBSaved& saved,
                                  const Tensor& proj_w, const Tensor& norm_w, bool need_dx);

// ---- AdaShift-B's context network alone -------------------------------------------------------
// s = LayerNorm_C(u), u = proj ? m W^T + b : m, on pooled means m [N, 1, C] (the context of a
// BatchNorm + AdaShift-B op, whose statistics pass gives m): the whole-tensor ops in sequence on
// either device. The CUDA path of the AdaShift-B op above runs the same functions.
struct AdaShiftBContext {
  Tensor s, u;        // [N, 1, C] (u is m itself without proj)
  Tensor mean, rstd;  // [N] LayerNorm statistics
};
struct AdaShiftBContextGrad {
  Tensor dm;  // [N, 1, C], undefined unless need_dm
  Tensor dproj_w, dproj_b, dnorm_w, dnorm_b;  // proj's undefined without proj
};
AdaShiftBContext adashift_b_context_forward(const Tensor& m, const Tensor& proj_w,
                                            const Tensor& proj_b, const Tensor& norm_w,
                                            const Tensor& norm_b, float eps);
// From the forward's m, u, mean and rstd; ds [N, 1, C] the shift's gradient.
AdaShiftBContextGrad adashift_b_context_backward(const Tensor& ds, const Tensor& m,
                                                 const AdaShiftBContext& saved,
                                                 const Tensor& proj_w, const Tensor& norm_w,
                                                 bool need_dm);

// ---- AdaShift-MA as one op --------------------------------------------------------------------
// s = rect(attention(LN_q(t), LN_k(t), LN_v(t))) over the T = Ph*Pw region tokens t = pool(x),
// heads G (d = C / G), softmax(q k^T / sqrt(d)) v per head; rect is LayerNorm (rect.weight/bias)
// or Linear without bias (lin_w) then LayerNorm; y = x * sigmoid(x + s[cell]).
// On the CPU the op runs sample by sample (pool, q/k/v LayerNorm, attention, rect, gate for one
// sample while its x is in cache; backward: both gate gradients in one pass, rect/attention/
// LayerNorm backward, the pooled gradient added to dx in cache). The q/k/v LayerNorms share their
// input's statistics (computed once, and their three backwards run as one). On CUDA it is the
// same sequence of whole-tensor ops (pool, layernorm, matmul, softmax, permute, gate). Both
// backends save s; with keep_context they also save the context network's t, attn, o and z,
// else backward computes them again from x (pool, q/k/v LayerNorms, attention, the 'linear'
// rect's product: the forward's own steps, so the same bits) and the op keeps for backward
// only its shift and, on the CPU, the LayerNorm statistics. Backward always recomputes the
// (cheap, token-sized) q/k/v LayerNorm outputs. The CPU keeps the LayerNorm statistics
// (stats), so its backward does not recompute them; CUDA's recomputes them with the outputs.
struct AdaShiftMAParams {
  int64_t grid, heads;
  Tensor q_w, q_b, k_w, k_b, v_w, v_b;
  Tensor lin_w;  // [C, C] ('linear' rect) or undefined ('norm' rect)
  Tensor rect_w, rect_b;
  float eps;
  // Save t, attn, o, z for backward (faster backward; at 7x7 maps with the 7x7 grid about four
  // times the input's size more) or recompute them there.
  bool keep_context = true;
};
struct AdaShiftMASaved {
  // t, attn, o, z: all defined (kept by the forward) or all undefined (backward recomputes them).
  Tensor t;     // [N, T, C] pooled tokens
  Tensor attn;  // [N, G, T, T] attention probabilities
  Tensor o;     // [N, T, C] attention output (heads merged)
  Tensor z;     // [N, T, C] rect LayerNorm input (o itself for the 'norm' rect)
  Tensor s;     // [N, T, C] shift
  // [N, 4, T] the CPU's LayerNorm statistics: mean and rstd of t (shared by q, k, v), mean and
  // rstd of z (rect); undefined on CUDA.
  Tensor stats;
};
struct AdaShiftMAForward {
  Tensor y;
  AdaShiftMASaved saved;
};
struct AdaShiftMAGrad {
  Tensor dx;  // undefined unless need_dx (with a BatchNorm input: dz, the gradient of bn(x) + r)
  Tensor dq_w, dq_b, dk_w, dk_b, dv_w, dv_b, dlin_w /* undefined without lin_w */, drect_w, drect_b;
  Tensor sum_dz, sum_dz_xhat;  // [N, C], with a BatchNorm input only (batchnorm_act_backward_reduce's)
};
// AdaShift-MA of a BatchNorm's output: the op's input is z = bn(x) + r (r optional, x's shape),
// with bn(x) = (x - mean) * invstd * weight + bias per channel (the statistics from
// batchnorm_stats). The CPU lays each sample's z out in a per-thread buffer (the sample's x and r
// read once per pass) instead of reading a z tensor that BatchNorm wrote: forward y = the gate of
// z, and z is never stored; backward recomputes it, and while each sample's dz is in cache sums
// it per plane as batchnorm_act_backward_reduce does (the same bits), so BatchNorm's backward
// needs only its params and apply passes. On CUDA: z written by batchnorm_act_forward, the MA op,
// then batchnorm_act_backward_reduce on dz. Either way every output has the bits of BatchNorm
// (act None, with the residual) followed by the MA op.
struct MABatchNormInput {
  Tensor mean, invstd, weight, bias;  // [C]
  Tensor residual;                    // x's shape, or undefined
  bool defined() const { return mean.defined(); }
};
AdaShiftMAForward adashift_ma_forward(const Tensor& x, const AdaShiftMAParams& p,
                                      const MABatchNormInput& bn = MABatchNormInput());
// With a BatchNorm input, dx is dz (need_dx is then implied) and sum_dz / sum_dz_xhat are set.
AdaShiftMAGrad adashift_ma_backward(const Tensor& x, const Tensor& dy, const AdaShiftMASaved& saved,
                                    const AdaShiftMAParams& p, bool need_dx,
                                    const MABatchNormInput& bn = MABatchNormInput());

namespace cpu {
void adashift_b_forward(const float* x, int64_t N, int64_t C, int64_t HW, const float* pw,
                        const float* pb, const float* nw, const float* nb, float eps, float* y,
                        float* t, float* u, float* s, float* mean, float* rstd);
// Writes dx (when need_dx), du [N, C] and per-sample LayerNorm weight/bias gradients.
void adashift_b_backward(const float* x, const float* dy, int64_t N, int64_t C, int64_t HW,
                         const float* u, const float* s, const float* mean, const float* rstd,
                         const float* pw, const float* nw, bool need_dx, float* dx, float* du,
                         float* dnw_rows, float* dnb_rows);
// Pointers of the parameters for the per-sample AdaShift-MA kernels (lin_w nullable).
struct AdaShiftMAPtrs {
  const float *q_w, *q_b, *k_w, *k_b, *v_w, *v_b, *lin_w, *rect_w, *rect_b;
  int64_t heads;
  float eps;
};
// bn (nullable): the op's input is then bn(x) + r, laid out sample by sample (BnApply's mean,
// invstd, weight, bias and r; its s unused). t, attn, o, z: all given (written) or all null
// (not kept).
void adashift_ma_forward(const RegionGrid& g, const float* x, const AdaShiftMAPtrs& p,
                         const BnApply* bn, float* y, float* t, float* attn, float* o, float* z,
                         float* s, float* stats);
// stats: the forward's [N, 4, T] LayerNorm statistics (AdaShiftMASaved::stats).
// Writes dx (when need_dx), dz [N, T, C] (the rect LayerNorm's input gradient) and per-sample
// parameter gradient rows prow [N, 8, C]: q.w, q.b, k.w, k.b, v.w, v.b, rect.w, rect.b. With bn
// (need_dx then true), dx is the gradient of bn(x) + r, and sum_dz / sum_dz_xhat [N, C] its
// per-plane sums (batchnorm_act_backward_reduce with act None).
// t, attn, o, z: the forward's (all given) or null (all null: recomputed per sample from x;
// o_out, when given, receives the recomputed o [N, T, C] for the 'linear' rect's weight gradient).
void adashift_ma_backward(const RegionGrid& g, const float* x, const float* dy,
                          const AdaShiftMAPtrs& p, const BnApply* bn, const float* t,
                          const float* attn, const float* o, const float* z, const float* s,
                          const float* stats, bool need_dx, float* dx, float* dz, float* prow, float* sum_dz,
                          float* sum_dz_xhat, float* o_out = nullptr);
void region_pool_forward(const RegionGrid& g, const float* x, float* t);
void region_pool_backward(const RegionGrid& g, const float* dt, float* dx);
void gate_forward(const RegionGrid& g, const float* x, const float* s, float* y);
// pooled (nullable): also the cell means of x, as region_pool_forward gives them (the same
// bits), taken from each block of planes while the pass has it in cache.
void gate_backward_reduce(const RegionGrid& g, const float* x, const float* dy, const float* s,
                          float* ds, float* pooled = nullptr);
void gate_backward_apply(const RegionGrid& g, const float* x, const float* dy, const float* s,
                         const float* dt /* nullable */, float* dx);
// Both gate gradients in one pass (any grid): dx = the direct input gradient, ds per region.
// With region_pool_backward_add (dx += dt / |cell|) it computes what reduce + apply do, with
// one sigmoid per element instead of two (the fused AdaShift-MA backward runs them per sample,
// so the second pass reads dx from cache). pooled: as for gate_backward_reduce.
void gate_backward_grads(const RegionGrid& g, const float* x, const float* dy, const float* s,
                         float* dx, float* ds, float* pooled = nullptr);
void region_pool_backward_add(const RegionGrid& g, const float* dt, float* dx);
}  // namespace cpu

#ifdef ADASHIFT_WITH_CUDA
namespace cuda {
void region_pool_forward(cudaStream_t st, const RegionGrid& g, const float* x, float* t);
void region_pool_backward(cudaStream_t st, const RegionGrid& g, const float* dt, float* dx);
void gate_forward(cudaStream_t st, const RegionGrid& g, const float* x, const float* s, float* y);
void gate_backward_reduce(cudaStream_t st, const RegionGrid& g, const float* x, const float* dy,
                          const float* s, float* ds);
void gate_backward_apply(cudaStream_t st, const RegionGrid& g, const float* x, const float* dy,
                         const float* s, const float* dt, float* dx);
}  // namespace cuda
#endif

}  // namespace adashift

// AdaShift-MA, sample by sample (see ops/adashift.h). Each sample runs pool -> q/k/v LayerNorm
// -> attention per head -> rect -> gate while its x is in cache; backward runs one pass for both
// gate gradients (direct dx written, ds summed per cell), rect / attention / LayerNorm backward
// on the sample's T x C tokens, then adds dt / |cell| to the sample's dx while it is in cache.
// When the op keeps no context (t, attn, o, z), the backward's gate pass also pools the sample
// (block by block, while each block is in cache), and the forward's steps from the pooled tokens
// up to z run again before the rect's backward.
// With a BatchNorm input, each sample's bn(x) + r is laid out in scratch first and the passes
// read it there; backward then also sums the sample's dz per plane for BatchNorm.
// With enough samples each thread takes whole samples (the region kernels called inside then
// run inline); with fewer samples than threads the samples run in turn and the region kernels
// split the sample's channel planes across threads. The token math of a sample is serial in a
// fixed order and the region kernels sum each plane in a fixed order, so the result does not
// depend on the number of threads.
#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>
#include "../ops/adashift.h"
#include "../ops/dense.h"
#include "../ops/norm.h"
#include "../threadpool.h"
#include "gemm.h"
#include "loops.h"

namespace adashift {
namespace cpu {

namespace {

template <typename SampleFn>
void for_each_sample_ma(int64_t N, SampleFn sample) {
  if (N >= num_threads()) {
    parallel_for(N, 1, [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) sample(n);
    });
  } else {
    for (int64_t n = 0; n < N; ++n) sample(n);
  }
}

// Per-thread scratch (reused across samples and calls), on the heap behind one thread_local
// pointer (the static TLS a shared object gets at load is small; see cpu/conv.cc).
enum Slot {
  kQ, kK, kV,                     // q, k, v (forward and backward)
  kDs, kDo, kDq, kDk, kDv,        // backward: ds, do ('linear' rect), dq, dk, dv
  kXhat, kDscore, kDt, kCm,       // backward: q/k/v xhat, dS, dt, channel-major s / ds / dt
  kPooled, kShiftCm, kBnInput,    // the pooled tokens (channel-major), s channel-major, bn(x) + r
  kT, kAttn, kO, kZ,              // t, attn, o, z when the op does not keep them
  kSlots
};
inline float* scratch_ma(Slot which, size_t n) {
  thread_local std::unique_ptr<std::vector<float>[]> buf;
  if (!buf) buf.reset(new std::vector<float>[kSlots]);
  std::vector<float>& b = buf[which];
  if (b.size() < n) b.resize(n);
  return b.data();
}

// C [M, N] (leading dimension ldc) = alpha op(A) op(B) on the calling thread: the package's
// GEMM, whose summation order depends only on K.
inline void mm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
               int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc) {
  gemm_small_serial(ta, tb, M, N, K, alpha, A, lda, B, ldb, 0.0f, C, ldc);
}

struct Dims {
  int64_t T, C, G, d;
  float scale;
};

inline Dims dims_of(const RegionGrid& g, const AdaShiftMAPtrs& p) {
  Dims D;
  D.T = g.tokens();
  D.C = g.C;
  D.G = p.heads;
  D.d = g.C / p.heads;
  D.scale = float(1.0 / std::sqrt(double(D.d)));
  return D;
}

// The grid of one sample's region passes: channel-major tokens [C, T] (a plane's values
// contiguous); the context works on [T, C], one small transpose each way.
inline RegionGrid sample_grid(const RegionGrid& g) {
  RegionGrid g1 = g;
  g1.N = 1;
  g1.channel_major = true;
  return g1;
}

// q, k, v LayerNorm outputs for one sample's tokens ts [T, C] from their statistics (mean,
// rstd [T]); the normalised tokens are written to xh when it is given (the backward's
// LayerNorms need them).
inline void qkv_from_stats(const Dims& D, const AdaShiftMAPtrs& p, const float* ts, const float* mean,
                           const float* rstd, float* xh, float* q, float* k, float* v) {
  const float* w[3] = {p.q_w, p.k_w, p.v_w};
  const float* b[3] = {p.q_b, p.k_b, p.v_b};
  float* y[3] = {q, k, v};
  loops::norm_affine3_rows(ts, mean, rstd, D.T, D.C, w, b, y, xh);
}

// Sample n's input to the op: x's planes themselves, or with a BatchNorm input bn(x) + r laid
// out in the calling thread's scratch by BatchNorm's own forward pass (act None: the bits of the
// tensor BatchNorm would have written).
inline const float* sample_input(const RegionGrid& g, const float* x, const BnApply* bn, int64_t n) {
  const int64_t CHW = g.C * g.H * g.W;
  if (!bn) return x + n * CHW;
  float* z = scratch_ma(kBnInput, size_t(CHW));
  BnApply k = *bn;
  k.s = nullptr;
  k.r = bn->r ? bn->r + n * CHW : nullptr;
  batchnorm_act_forward(BnShape{1, g.C, g.H * g.W}, NormAct::None, k, x + n * CHW, z);
  return z;
}

// Where one sample's context tensors are: the op's saved tensors when it keeps them (the
// forward writes them, the backward only reads them), else the calling thread's scratch.
struct SampleContext {
  float *t, *attn, *o, *z;  // [T, C], [G, T, T], [T, C], [T, C] (z == o for the 'norm' rect)
};
inline SampleContext sample_context(const Dims& D, const AdaShiftMAPtrs& p, const float* t,
                                    const float* attn, const float* o, const float* z, int64_t n) {
  const int64_t TC = D.T * D.C, TT = D.G * D.T * D.T;
  if (t)
    return SampleContext{const_cast<float*>(t) + n * TC, const_cast<float*>(attn) + n * TT,
                         const_cast<float*>(o) + n * TC, const_cast<float*>(z) + n * TC};
  SampleContext c;
  c.t = scratch_ma(kT, size_t(TC));
  c.attn = scratch_ma(kAttn, size_t(TT));
  c.o = scratch_ma(kO, size_t(TC));
  c.z = p.lin_w ? scratch_ma(kZ, size_t(TC)) : c.o;
  return c;
}

// The forward's steps from a sample's pooled tokens (channel-major [C, T], region_pool_forward's
// or the backward's gate pass's, the same bits) to the rect's input z: the tokens into c.t, the
// q/k/v statistics (computed into new_stats when given, else read from st), q, k, v (and their
// xhat into xh when given), the attention per head into c.attn and c.o, and z = o W^T ('linear'
// rect). The forward runs it, and the backward again when the op kept no context: the same
// calls on the same values, so the same bits.
void context_to_z(const Dims& D, const AdaShiftMAPtrs& p, const float* pooled, float* new_stats,
                  const float* st, const SampleContext& c, float* q, float* k, float* v, float* xh) {
  const int64_t T = D.T, C = D.C;
  loops::transpose(pooled, T, C, T, c.t, C);
  // The three LayerNorms share their input, so its statistics are computed once, from the
  // pooled tokens as they are (channel-major: the sums run down the channels with the tokens
  // in the vector lanes).
  if (new_stats) {
    loops::col_moments(pooled, C, T, p.eps, new_stats, new_stats + T);
    st = new_stats;
  }
  qkv_from_stats(D, p, c.t, st, st + T, xh, q, k, v);
  for (int64_t h = 0; h < D.G; ++h) {
    float* A = c.attn + h * T * T;
    const int64_t c0 = h * D.d;
    mm(false, true, T, T, D.d, D.scale, q + c0, C, k + c0, C, A, T);  // scale q_h k_h^T
    softmax_forward(A, T, T, A);
    mm(false, false, T, D.d, T, 1.0f, A, T, v + c0, C, c.o + c0, C);  // o_h = A v_h
  }
  if (p.lin_w) mm(false, true, T, C, C, 1.0f, c.o, C, p.lin_w, C, c.z, C);  // z = o W^T
}

}  // namespace

void adashift_ma_forward(const RegionGrid& g, const float* x, const AdaShiftMAPtrs& p,
                         const BnApply* bn, float* y, float* t, float* attn, float* o, float* z,
                         float* s, float* stats) {
  const Dims D = dims_of(g, p);
  const int64_t T = D.T, C = D.C, HW = g.H * g.W, TC = T * C;
  const RegionGrid g1 = sample_grid(g);
  // One sample: pool, context, gate. The sample's planes are read from memory by the pooling
  // and again, from cache, by the gate (a sample of [64, 28, 28] is 200 KB; one too large for
  // L2 comes back from L3 or memory). Pooling the next sample inside this one's gate loop,
  // block by block with its lines prefetched ahead, measured slower on every shape tried
  // (AMD family 25 model 17, 2 threads, alternated runs: [64,64,28,28] forward 2.45 -> 1.98 ms,
  // [32,256,56,56] 14.4 -> 11.3 ms, ResNet-20's [64,16..64,7..28] 1-6% less): its loads of the
  // next sample stall behind the gate's, where a pooling pass alone streams at full speed.
  auto sample = [&](int64_t n) {
    const float* xs = sample_input(g, x, bn, n);
    const SampleContext c = sample_context(D, p, t, attn, o, z, n);
    float* st = stats + n * 4 * T;  // q/k/v mean, rstd; rect mean, rstd (kept for backward)
    float* rm = st + 2 * T;
    float* pooled = scratch_ma(kPooled, size_t(TC));
    region_pool_forward(g1, xs, pooled);
    context_to_z(D, p, pooled, st, st, c, scratch_ma(kQ, size_t(TC)), scratch_ma(kK, size_t(TC)),
                 scratch_ma(kV, size_t(TC)), nullptr);
    float* ss = s + n * TC;
    layernorm_forward(c.z, p.rect_w, p.rect_b, p.eps, T, C, ss, rm, rm + T);
    float* sc = scratch_ma(kShiftCm, size_t(TC));
    loops::transpose(ss, C, T, C, sc, T);
    gate_forward(g1, xs, sc, y + n * C * HW);
  };
  // Whole samples per thread, or with fewer samples than threads the samples in turn, each
  // pass split across the pool by planes.
  for_each_sample_ma(g.N, sample);
}

void adashift_ma_backward(const RegionGrid& g, const float* x, const float* dy,
                          const AdaShiftMAPtrs& p, const BnApply* bn, const float* t,
                          const float* attn, const float* o, const float* z, const float* s,
                          const float* stats, bool need_dx, float* dx, float* dz, float* prow, float* sum_dz,
                          float* sum_dz_xhat, float* o_out) {
  const Dims D = dims_of(g, p);
  const int64_t T = D.T, C = D.C, HW = g.H * g.W, TC = T * C;
  const RegionGrid g1 = sample_grid(g);
  const bool recompute = t == nullptr;
  need_dx = need_dx || bn;
  for_each_sample_ma(g.N, [&](int64_t n) {
    const float* xs = sample_input(g, x, bn, n);
    const float* dys = dy + n * C * HW;
    const float* ss = s + n * TC;
    float* pr = prow + n * 8 * C;
    float* ds = scratch_ma(kDs, size_t(TC));
    float* q = scratch_ma(kQ, size_t(TC));
    float* k = scratch_ma(kK, size_t(TC));
    float* v = scratch_ma(kV, size_t(TC));
    float* dob = scratch_ma(kDo, size_t(TC));
    float* dq = scratch_ma(kDq, size_t(TC));
    float* dk = scratch_ma(kDk, size_t(TC));
    float* dv = scratch_ma(kDv, size_t(TC));
    float* dS = scratch_ma(kDscore, size_t(T * T));
    const float* st = stats + n * 4 * T;  // q/k/v mean, rstd; rect mean, rstd
    float* xh = scratch_ma(kXhat, size_t(TC));
    float* dt = scratch_ma(kDt, size_t(TC));
    // Both gate gradients in one pass: the direct input gradient into dx, the shift's to ds;
    // without a kept context the same pass pools the sample too.
    float* dxs = need_dx ? dx + n * C * HW : nullptr;
    float* cm = scratch_ma(kCm, size_t(2 * TC));  // s, then ds, channel-major
    float* pooled = recompute ? scratch_ma(kPooled, size_t(TC)) : nullptr;
    loops::transpose(ss, C, T, C, cm, T);
    if (need_dx) gate_backward_grads(g1, xs, dys, cm, dxs, cm + TC, pooled);
    else gate_backward_reduce(g1, xs, dys, cm, cm + TC, pooled);
    loops::transpose(cm + TC, T, C, T, ds, C);
    // The context: the forward's, or computed again from the pooled sample (its statistics are
    // the forward's), with q, k, v and their xhat; o into o_out when given.
    SampleContext c = sample_context(D, p, t, attn, o, z, n);
    if (recompute) {
      if (o_out) {
        c.o = o_out + n * TC;
        if (!p.lin_w) c.z = c.o;
      }
      context_to_z(D, p, pooled, nullptr, st, c, q, k, v, xh);
    }
    // rect's LayerNorm backward (its statistics saved by the forward)
    float* dzs = dz + n * TC;
    layernorm_backward(ds, c.z, st + 2 * T, st + 3 * T, p.rect_w, T, C, dzs, pr + 6 * C, pr + 7 * C);
    const float* dov = dzs;  // d o (dz itself for the 'norm' rect)
    if (p.lin_w) {
      mm(false, false, T, C, C, 1.0f, dzs, C, p.lin_w, C, dob, C);  // do = dz W
      dov = dob;
    }
    // attention backward, head by head, on q, k, v recomputed from the saved statistics
    if (!recompute) qkv_from_stats(D, p, c.t, st, st + T, xh, q, k, v);
    for (int64_t h = 0; h < D.G; ++h) {
      const float* A = c.attn + h * T * T;
      const int64_t c0 = h * D.d;
      mm(false, true, T, T, D.d, 1.0f, dov + c0, C, v + c0, C, dS, T);    // dA = do_h v_h^T
      mm(true, false, T, D.d, T, 1.0f, A, T, dov + c0, C, dv + c0, C);    // dv_h = A^T do_h
      softmax_backward(A, dS, T, T, dS);                                   // dS (in place)
      mm(false, false, T, D.d, T, D.scale, dS, T, k + c0, C, dq + c0, C);  // dq_h = s dS k_h
      mm(true, false, T, D.d, T, D.scale, dS, T, q + c0, C, dk + c0, C);   // dk_h = s dS^T q_h
    }
    // The q/k/v LayerNorms' backward in one pass (shared statistics): dt and the six
    // parameter gradient rows of this sample.
    std::fill(pr, pr + 6 * C, 0.0f);
    float* acc[6];
    for (int i = 0; i < 6; ++i) acc[i] = pr + i * C;
    const float* dys3[3] = {dq, dk, dv};
    const float* w3[3] = {p.q_w, p.k_w, p.v_w};
    loops::layernorm3_backward_rows(dys3, xh, st + T, w3, T, C, dt, acc);
    // The pooled path, dt / |cell|, added to the sample's dx while it is in cache.
    if (need_dx) {
      loops::transpose(dt, C, T, C, cm, T);
      region_pool_backward_add(g1, cm, dxs);
    }
    // BatchNorm's reduce pass over this sample's planes while its dz is in cache (act None: dz
    // is the incoming gradient; the residual plays no part).
    if (bn) {
      BnApply k = *bn;
      k.s = nullptr;
      k.r = nullptr;
      batchnorm_act_backward_reduce(BnShape{1, C, HW}, NormAct::None, k, x + n * C * HW, dxs,
                                    sum_dz + n * C, sum_dz_xhat + n * C, nullptr, nullptr);
    }
  });
}

}  // namespace cpu
}  // namespace adashift

// CPU optimizer updates. Element-wise updates run over chunks from the thread pool; each chunk
// is a plain loop over contiguous floats (compiled per instruction set with AS_VECTORIZE) with
// the per-element formula from ops/optim.h and the mode branches hoisted out of the loop.
// Reductions (gradient norms, LAMB's ||p|| and ||update||) cut the tensor into fixed blocks of
// kReduceBlock elements: each block sums in double (omp simd: a fixed vector order per machine),
// and the block partials are added in block order, so the result does not depend on the thread
// count.
#include "../ops/optim.h"
#include <algorithm>
#include <cmath>
#include <vector>
#include "../threadpool.h"
#include "loops.h"
#include "reduce.h"

namespace adashift {
namespace cpu {

namespace {

constexpr int64_t kGrain = 1 << 15;  // elements per chunk below which a thread is not worth it
// Reduction blocks per thread-pool chunk: small tensors (biases, norms) reduce inline.
constexpr int64_t kBlocksPerChunk = kGrain / kReduceBlock;

// ---- hot loops --------------------------------------------------------------------------------
AS_VECTORIZE void sgd_plain_loop(float* __restrict p, const float* __restrict g, int64_t n,
                                 SgdParams h) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) p[i] = math::sgd_plain(p[i], g[i], h);
}

// The mode flags (first_step, nesterov) are uniform: the ternaries become selects, the loop
// stays branch-free and vectorises.
AS_VECTORIZE void sgd_momentum_loop(float* __restrict p, const float* __restrict g,
                                    float* __restrict buf, int64_t n, SgdParams h) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) math::sgd_momentum(p[i], g[i], buf[i], h);
}

AS_VECTORIZE void adamw_loop(float* __restrict p, const float* __restrict g, float* __restrict m,
                             float* __restrict v, int64_t n, AdamWParams h) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) math::adamw(p[i], g[i], m[i], v[i], h);
}

AS_VECTORIZE double sumsq_loop(const float* __restrict x, int64_t n) {
  double acc = 0.0;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) acc += double(x[i]) * double(x[i]);
  return acc;
}

AS_VECTORIZE void lamb_fused_loop(float* __restrict p, const float* __restrict g,
                                  float* __restrict m, float* __restrict v, float clip, int64_t n,
                                  LambParams h) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    float mm = m[i], vv = v[i];
    math::lamb_moments(g[i], clip, mm, vv, h);
    m[i] = mm;
    v[i] = vv;
    const float u = math::lamb_update(p[i], mm, vv, h);
    p[i] = p[i] * h.decay - h.lr * u;
  }
}

// Updates m, v over [0, n); adds sum (p decay)^2 and sum update^2 to out[0], out[1].
AS_VECTORIZE void lamb_moments_loop(const float* __restrict p, const float* __restrict g,
                                    float* __restrict m, float* __restrict v, float clip,
                                    int64_t n, LambParams h, double* out) {
  double sp = 0.0, su = 0.0;
#pragma omp simd reduction(+ : sp, su)
  for (int64_t i = 0; i < n; ++i) {
    float mm = m[i], vv = v[i];
    math::lamb_moments(g[i], clip, mm, vv, h);
    m[i] = mm;
    v[i] = vv;
    const float pd = p[i] * h.decay;
    const float u = math::lamb_update(p[i], mm, vv, h);
    sp += double(pd) * double(pd);
    su += double(u) * double(u);
  }
  out[0] = sp;
  out[1] = su;
}

AS_VECTORIZE void lamb_apply_loop(float* __restrict p, const float* __restrict m,
                                  const float* __restrict v, float lr_trust, int64_t n,
                                  LambParams h) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float u = math::lamb_update(p[i], m[i], v[i], h);
    p[i] = p[i] * h.decay - lr_trust * u;
  }
}

template <typename F>
void for_each(int64_t n, F f) {
  parallel_for(n, kGrain, [&](int64_t b, int64_t e) { f(b, e); });
}

// Sums block(i0, i1, double* two) over fixed blocks of kReduceBlock; partials added in order.
template <typename F>
void block_sums2(int64_t n, double* out, F block) {
  const int64_t blocks = (n + kReduceBlock - 1) / kReduceBlock;
  std::vector<double> part(size_t(std::max<int64_t>(blocks, 1)) * 2, 0.0);
  parallel_for(blocks, kBlocksPerChunk, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t i0 = b * kReduceBlock, i1 = std::min(n, i0 + kReduceBlock);
      block(i0, i1, part.data() + 2 * b);
    }
  });
  double s0 = 0.0, s1 = 0.0;
  for (int64_t b = 0; b < blocks; ++b) {
    s0 += part[size_t(2 * b)];
    s1 += part[size_t(2 * b + 1)];
  }
  out[0] = s0;
  out[1] = s1;
}

double sumsq(const float* x, int64_t n) {
  const int64_t blocks = (n + kReduceBlock - 1) / kReduceBlock;
  std::vector<double> part(size_t(std::max<int64_t>(blocks, 1)), 0.0);
  parallel_for(blocks, kBlocksPerChunk, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t i0 = b * kReduceBlock, i1 = std::min(n, i0 + kReduceBlock);
      part[size_t(b)] = sumsq_loop(x + i0, i1 - i0);
    }
  });
  double s = 0.0;
  for (int64_t b = 0; b < blocks; ++b) s += part[size_t(b)];
  return s;
}

}  // namespace

// ---- launchers ----------------------------------------------------------------------------------
// h with its step-dependent fields from the schedule (when given).
template <typename Params>
Params with_dynamic(Params h, const float* dyn) {
  if (dyn) math::apply_dynamic(h, dyn);
  return h;
}

void sgd_step(float* p, const float* g, float* buf, int64_t n, const SgdParams& h0, const float* dyn) {
  const SgdParams h = with_dynamic(h0, dyn);
  if (buf)
    for_each(n, [&](int64_t b, int64_t e) { sgd_momentum_loop(p + b, g + b, buf + b, e - b, h); });
  else
    for_each(n, [&](int64_t b, int64_t e) { sgd_plain_loop(p + b, g + b, e - b, h); });
}

void adamw_step(float* p, const float* g, float* m, float* v, int64_t n, const AdamWParams& h0,
                const float* dyn) {
  const AdamWParams h = with_dynamic(h0, dyn);
  for_each(n, [&](int64_t b, int64_t e) { adamw_loop(p + b, g + b, m + b, v + b, e - b, h); });
}

void lamb_grad_clip(const float* const* grads, const int64_t* n, int64_t count, float max_norm,
                    float* out) {
  double total = 0.0;
  for (int64_t i = 0; i < count; ++i) total += sumsq(grads[i], n[i]);
  out[0] = math::lamb_clip_factor(float(std::sqrt(total)), max_norm);
}

void lamb_fused(float* p, const float* g, float* m, float* v, const float* clip, int64_t n,
                const LambParams& h0, const float* dyn) {
  const LambParams h = with_dynamic(h0, dyn);
  const float c = clip ? clip[0] : 1.0f;
  for_each(n, [&](int64_t b, int64_t e) {
    lamb_fused_loop(p + b, g + b, m + b, v + b, c, e - b, h);
  });
}

void lamb_moments(const float* p, const float* g, float* m, float* v, const float* clip,
                  int64_t n, const LambParams& h0, const float* dyn, float* norms) {
  const LambParams h = with_dynamic(h0, dyn);
  const float c = clip ? clip[0] : 1.0f;
  double s[2];
  block_sums2(n, s, [&](int64_t i0, int64_t i1, double* two) {
    lamb_moments_loop(p + i0, g + i0, m + i0, v + i0, c, i1 - i0, h, two);
  });
  norms[0] = float(std::sqrt(s[0]));
  norms[1] = float(std::sqrt(s[1]));
}

void lamb_apply(float* p, const float* m, const float* v, const float* norms, int64_t n,
                const LambParams& h0, const float* dyn) {
  const LambParams h = with_dynamic(h0, dyn);
  const float lr_trust = h.lr * math::lamb_trust(norms[0], norms[1], h.trust_clip);
  for_each(n, [&](int64_t b, int64_t e) {
    lamb_apply_loop(p + b, m + b, v + b, lr_trust, e - b, h);
  });
}

void optim_advance(float* sched, const SchedConst& c) { math::sched_advance(sched, c); }

void optim_sched_write(float* sched, int64_t index, float value) { sched[index] = value; }

}  // namespace cpu
}  // namespace adashift

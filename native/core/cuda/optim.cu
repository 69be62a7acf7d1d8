// CUDA optimizer updates. Element-wise updates are grid-stride loops that move float4s when
// every pointer is 16-byte aligned (then finish the last n % 4 elements one by one) and run a
// scalar loop otherwise; each element's math is the shared formula from ops/optim.h.
// Reductions (global gradient norm, LAMB's ||p|| and ||update||) write per-block partial sums
// (double) to scratch from the caching allocator, then one block adds them in a fixed order:
// no atomics, the same bits on every run. The scalars they produce (clip factor, norms) stay
// on the device and are read by the next kernel in stream order: no host synchronisation.
#include "../ops/optim.h"
#include "common.cuh"

namespace adashift {
namespace cuda {

using namespace detail;

namespace {

constexpr int kBlock = 256;
// Blocks (and partial sums) per tensor of the global gradient norm: enough to stream a large
// gradient at full bandwidth, few enough for the final block to add them quickly.
constexpr int kClipParts = 512;

// ---- element-wise update kernels ---------------------------------------------------------------
// For every i: op(p[i], g[i], a[i], b[i]) with a, b the state buffers (NB of them are used).
// Each thread first takes the schedule's scalars into its copy of the op (capturable updates).
template <int NB, class Op, bool VEC>
__global__ void k_update(Op op0, float* p, const float* g, float* a, float* b, int64_t n) {
  Op op = op0;
  op.prepare();
  const int64_t t0 = global_thread(), stride = global_stride();
  int64_t tail = 0;
  if (VEC) {
    const int64_t n4 = n >> 2;
    for (int64_t i = t0; i < n4; i += stride) {
      float4 P = ld4(p, i);
      const float4 G = ld4(g, i);
      float4 A = NB > 0 ? ld4(a, i) : make_float4(0.f, 0.f, 0.f, 0.f);
      float4 B = NB > 1 ? ld4(b, i) : make_float4(0.f, 0.f, 0.f, 0.f);
      op(P.x, G.x, A.x, B.x);
      op(P.y, G.y, A.y, B.y);
      op(P.z, G.z, A.z, B.z);
      op(P.w, G.w, A.w, B.w);
      st4(p, i, P);
      if (NB > 0) st4(a, i, A);
      if (NB > 1) st4(b, i, B);
    }
    tail = n4 << 2;
  }
  for (int64_t i = tail + t0; i < n; i += stride) {
    float P = p[i];
    float A = NB > 0 ? a[i] : 0.f;
    float B = NB > 1 ? b[i] : 0.f;
    op(P, g[i], A, B);
    p[i] = P;
    if (NB > 0) a[i] = A;
    if (NB > 1) b[i] = B;
  }
}

// dyn: the schedule's derived scalars (sched + kSchedDynamic), or null.
template <class Params>
struct WithDynamic {
  Params h;
  const float* dyn;
  __device__ void prepare() {
    if (dyn) math::apply_dynamic(h, dyn);
  }
};
struct SgdPlainOp : WithDynamic<SgdParams> {
  __device__ void operator()(float& p, float g, float&, float&) const { p = math::sgd_plain(p, g, h); }
};
struct SgdMomentumOp : WithDynamic<SgdParams> {
  __device__ void operator()(float& p, float g, float& buf, float&) const {
    math::sgd_momentum(p, g, buf, h);
  }
};
struct AdamWOp : WithDynamic<AdamWParams> {
  __device__ void operator()(float& p, float g, float& m, float& v) const { math::adamw(p, g, m, v, h); }
};
// LAMB without adaptation: moments and update in one pass. clip: nullable device scalar.
struct LambFusedOp : WithDynamic<LambParams> {
  const float* clip;
  __device__ void operator()(float& p, float g, float& m, float& v) const {
    const float c = clip ? __ldg(clip) : 1.0f;
    math::lamb_moments(g, c, m, v, h);
    const float u = math::lamb_update(p, m, v, h);
    p = p * h.decay - h.lr * u;
  }
};

template <int NB, class Op>
void launch_update(cudaStream_t s, Op op, float* p, const float* g, float* a, float* b, int64_t n) {
  if (n <= 0) return;
  const bool vec = aligned16(p) && aligned16(g) && (NB < 1 || aligned16(a)) && (NB < 2 || aligned16(b));
  if (vec) {
    k_update<NB, Op, true><<<grid_for((n + 3) / 4, kBlock), kBlock, 0, s>>>(op, p, g, a, b, n);
  } else {
    k_update<NB, Op, false><<<grid_for(n, kBlock), kBlock, 0, s>>>(op, p, g, a, b, n);
  }
  CUDA_CHECK_LAUNCH();
}

// ---- global gradient norm -----------------------------------------------------------------------
// Block b of a grid of G <= kClipParts writes the sum of squares of its grid-stride share of x to
// part[b]; block 0 also zeroes part[G .. kClipParts) so that the final pass adds a fixed count.
template <bool VEC>
__global__ void k_sumsq_partial(const float* x, int64_t n, double* part) {
  __shared__ double sh[32];
  const int64_t t0 = global_thread(), stride = global_stride();
  double acc = 0.0;
  int64_t tail = 0;
  if (VEC) {
    const int64_t n4 = n >> 2;
    for (int64_t i = t0; i < n4; i += stride) {
      const float4 v = ld4(x, i);
      acc += double(v.x) * double(v.x);
      acc += double(v.y) * double(v.y);
      acc += double(v.z) * double(v.z);
      acc += double(v.w) * double(v.w);
    }
    tail = n4 << 2;
  }
  for (int64_t i = tail + t0; i < n; i += stride) acc += double(x[i]) * double(x[i]);
  const double total = block_sum(acc, sh);
  if (threadIdx.x == 0) part[blockIdx.x] = total;
  if (blockIdx.x == 0)
    for (int k = int(gridDim.x) + threadIdx.x; k < kClipParts; k += blockDim.x) part[k] = 0.0;
}

// One block: thread t adds the partials of tensors t, t + blockDim, ... (each tensor's in order),
// then the block adds the thread sums in a fixed tree.
__global__ void k_clip_final(const double* part, int64_t count, float max_norm, float* out) {
  __shared__ double sh[32];
  double acc = 0.0;
  for (int64_t i = threadIdx.x; i < count; i += blockDim.x) {
    double t = 0.0;
    const double* q = part + i * kClipParts;
    for (int k = 0; k < kClipParts; ++k) t += q[k];
    acc += t;
  }
  const double total = block_sum(acc, sh);
  if (threadIdx.x == 0) out[0] = math::lamb_clip_factor(float(sqrt(total)), max_norm);
}

// ---- LAMB with adaptation -----------------------------------------------------------------------
// Pass 1: moments in place; block b writes sum (p decay)^2 and sum update^2 to part[2b], part[2b+1].
template <bool VEC>
__global__ void k_lamb_moments(LambParams h, const float* dyn, const float* p, const float* g,
                               float* m, float* v, const float* clip, int64_t n, double* part) {
  __shared__ double sh[32];
  if (dyn) math::apply_dynamic(h, dyn);
  const int64_t t0 = global_thread(), stride = global_stride();
  const float c = clip ? clip[0] : 1.0f;
  double sp = 0.0, su = 0.0;
  int64_t tail = 0;
  if (VEC) {
    const int64_t n4 = n >> 2;
    for (int64_t i = t0; i < n4; i += stride) {
      const float4 P = ld4(p, i), G = ld4(g, i);
      float4 M = ld4(m, i), V = ld4(v, i);
      math::lamb_moments(G.x, c, M.x, V.x, h);
      math::lamb_moments(G.y, c, M.y, V.y, h);
      math::lamb_moments(G.z, c, M.z, V.z, h);
      math::lamb_moments(G.w, c, M.w, V.w, h);
      st4(m, i, M);
      st4(v, i, V);
      const float px = P.x * h.decay, py = P.y * h.decay, pz = P.z * h.decay, pw = P.w * h.decay;
      const float ux = math::lamb_update(P.x, M.x, V.x, h), uy = math::lamb_update(P.y, M.y, V.y, h);
      const float uz = math::lamb_update(P.z, M.z, V.z, h), uw = math::lamb_update(P.w, M.w, V.w, h);
      sp += double(px) * double(px);
      sp += double(py) * double(py);
      sp += double(pz) * double(pz);
      sp += double(pw) * double(pw);
      su += double(ux) * double(ux);
      su += double(uy) * double(uy);
      su += double(uz) * double(uz);
      su += double(uw) * double(uw);
    }
    tail = n4 << 2;
  }
  for (int64_t i = tail + t0; i < n; i += stride) {
    float M = m[i], V = v[i];
    math::lamb_moments(g[i], c, M, V, h);
    m[i] = M;
    v[i] = V;
    const float pd = p[i] * h.decay;
    const float u = math::lamb_update(p[i], M, V, h);
    sp += double(pd) * double(pd);
    su += double(u) * double(u);
  }
  const double tp = block_sum(sp, sh);
  const double tu = block_sum(su, sh);
  if (threadIdx.x == 0) {
    part[2 * blockIdx.x] = tp;
    part[2 * blockIdx.x + 1] = tu;
  }
}

// One block adds the partials of pass 1 in a fixed order: norms = (||p decay||, ||update||).
__global__ void k_lamb_norms(const double* part, int parts, float* norms) {
  __shared__ double sh[32];
  double sp = 0.0, su = 0.0;
  for (int b = threadIdx.x; b < parts; b += blockDim.x) {
    sp += part[2 * b];
    su += part[2 * b + 1];
  }
  const double tp = block_sum(sp, sh);
  const double tu = block_sum(su, sh);
  if (threadIdx.x == 0) {
    norms[0] = float(sqrt(tp));
    norms[1] = float(sqrt(tu));
  }
}

// Pass 2: p = p decay - lr trust(norms) update(p, m, v).
template <bool VEC>
__global__ void k_lamb_apply(LambParams h, const float* dyn, float* p, const float* m,
                             const float* v, const float* norms, int64_t n) {
  if (dyn) math::apply_dynamic(h, dyn);
  const float lr_trust = h.lr * math::lamb_trust(norms[0], norms[1], h.trust_clip);
  const int64_t t0 = global_thread(), stride = global_stride();
  int64_t tail = 0;
  if (VEC) {
    const int64_t n4 = n >> 2;
    for (int64_t i = t0; i < n4; i += stride) {
      float4 P = ld4(p, i);
      const float4 M = ld4(m, i), V = ld4(v, i);
      P.x = P.x * h.decay - lr_trust * math::lamb_update(P.x, M.x, V.x, h);
      P.y = P.y * h.decay - lr_trust * math::lamb_update(P.y, M.y, V.y, h);
      P.z = P.z * h.decay - lr_trust * math::lamb_update(P.z, M.z, V.z, h);
      P.w = P.w * h.decay - lr_trust * math::lamb_update(P.w, M.w, V.w, h);
      st4(p, i, P);
    }
    tail = n4 << 2;
  }
  for (int64_t i = tail + t0; i < n; i += stride)
    p[i] = p[i] * h.decay - lr_trust * math::lamb_update(p[i], m[i], v[i], h);
}

// ---- schedules of capturable updates (one thread: a few scalars) -----------------------------
__global__ void k_sched_advance(float* sched, SchedConst c) { math::sched_advance(sched, c); }
__global__ void k_sched_write(float* sched, int64_t index, float value) { sched[index] = value; }

}  // namespace

// ---- launchers ----------------------------------------------------------------------------------
void sgd_step(cudaStream_t s, float* p, const float* g, float* buf, int64_t n, const SgdParams& h,
              const float* dyn) {
  if (buf)
    launch_update<1>(s, SgdMomentumOp{{h, dyn}}, p, g, buf, nullptr, n);
  else
    launch_update<0>(s, SgdPlainOp{{h, dyn}}, p, g, nullptr, nullptr, n);
}

void adamw_step(cudaStream_t s, float* p, const float* g, float* m, float* v, int64_t n,
                const AdamWParams& h, const float* dyn) {
  launch_update<2>(s, AdamWOp{{h, dyn}}, p, g, m, v, n);
}

void lamb_grad_clip(cudaStream_t s, const float* const* grads, const int64_t* n, int64_t count,
                    float max_norm, float* out) {
  Scratch part(size_t(count > 0 ? count : 1) * kClipParts * sizeof(double));
  double* base = part.as<double>();
  for (int64_t i = 0; i < count; ++i) {
    double* q = base + i * kClipParts;
    const bool vec = aligned16(grads[i]);
    int grid = grid_for(vec ? (n[i] + 3) / 4 : n[i], kBlock);
    if (grid > kClipParts) grid = kClipParts;
    if (vec)
      k_sumsq_partial<true><<<grid, kBlock, 0, s>>>(grads[i], n[i], q);
    else
      k_sumsq_partial<false><<<grid, kBlock, 0, s>>>(grads[i], n[i], q);
    CUDA_CHECK_LAUNCH();
  }
  k_clip_final<<<1, kBlock, 0, s>>>(base, count, max_norm, out);
  CUDA_CHECK_LAUNCH();
}

void lamb_fused(cudaStream_t s, float* p, const float* g, float* m, float* v, const float* clip,
                int64_t n, const LambParams& h, const float* dyn) {
  launch_update<2>(s, LambFusedOp{{h, dyn}, clip}, p, g, m, v, n);
}

void lamb_moments(cudaStream_t s, const float* p, const float* g, float* m, float* v,
                  const float* clip, int64_t n, const LambParams& h, const float* dyn,
                  float* norms) {
  const bool vec = aligned16(p) && aligned16(g) && aligned16(m) && aligned16(v);
  const int grid = grid_for(vec ? (n + 3) / 4 : n, kBlock);
  Scratch part(size_t(grid) * 2 * sizeof(double));
  if (vec)
    k_lamb_moments<true><<<grid, kBlock, 0, s>>>(h, dyn, p, g, m, v, clip, n, part.as<double>());
  else
    k_lamb_moments<false><<<grid, kBlock, 0, s>>>(h, dyn, p, g, m, v, clip, n, part.as<double>());
  CUDA_CHECK_LAUNCH();
  k_lamb_norms<<<1, kBlock, 0, s>>>(part.as<double>(), grid, norms);
  CUDA_CHECK_LAUNCH();
}

void lamb_apply(cudaStream_t s, float* p, const float* m, const float* v, const float* norms,
                int64_t n, const LambParams& h, const float* dyn) {
  if (n <= 0) return;
  const bool vec = aligned16(p) && aligned16(m) && aligned16(v);
  if (vec)
    k_lamb_apply<true><<<grid_for((n + 3) / 4, kBlock), kBlock, 0, s>>>(h, dyn, p, m, v, norms, n);
  else
    k_lamb_apply<false><<<grid_for(n, kBlock), kBlock, 0, s>>>(h, dyn, p, m, v, norms, n);
  CUDA_CHECK_LAUNCH();
}

void optim_advance(cudaStream_t s, float* sched, const SchedConst& c) {
  k_sched_advance<<<1, 1, 0, s>>>(sched, c);
  CUDA_CHECK_LAUNCH();
}

void optim_sched_write(cudaStream_t s, float* sched, int64_t index, float value) {
  k_sched_write<<<1, 1, 0, s>>>(sched, index, value);
  CUDA_CHECK_LAUNCH();
}

}  // namespace cuda
}  // namespace adashift

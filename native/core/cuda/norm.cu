// CUDA BatchNorm (+ fused activation) kernels.
//
// x is [N, C, H, W] contiguous; work is split by (n, c) planes: each block loops over planes in
// grid-stride order (gridDim.x capped, any N * C works) and walks its plane as a flat array
// (float4 when H*W % 4 == 0 and the pointers are 16-byte aligned).
//
//   k_plane_moments   per plane, as the CPU: the mean, then the corrected two-pass sums of the
//                     deviations from it (the plane read twice, the second time from cache);
//                     per-thread float partials, block sums in double in a fixed order -> plane
//                     mean and M2 (double).
//   k_channel_*       one thread per channel: Chan's formula over n in order -> mean, invstd,
//                     running-stats update (in place); then one thread per plane for
//                     plane_xhat and pooled.
//   k_bn_ew           forward y = act(bn(x) + r) or backward dx (and dr) (per-plane constants
//                     in registers; r, the optional residual, read alongside x)
//   k_bn_reduce       per plane: block sums of dz_d, dz_d (x - mean), ds (fixed order); dz_d
//                     itself per element when asked for
//   k_bn_params       one thread per channel: planes in order of n, in double
// No atomics: every sum has a fixed order that depends only on the launch shape, so the same
// inputs give the same bits on every run on one device. Per-element formulas: math.h.
#include "../ops/norm.h"
#include "common.cuh"

namespace adashift {
namespace cuda {

using namespace detail;

namespace {

// ---- statistics ------------------------------------------------------------------------------
// Per plane, as the CPU (cpu/norm.cc moments_planes): the mean, then with M2 the corrected two-
// pass sums of the deviations from it, M2 = sum d^2 - (sum d)^2 / n. The second pass reads the
// plane again, from cache. (A single pass shifted by the plane's first element lost the
// variance to cancellation when that element was far from the mean.)
template <bool VEC>
__device__ __forceinline__ void plane_sums(const float* __restrict__ x, int64_t base, int64_t hw,
                                           float shift, bool squares, float& a, float& b) {
  a = 0.0f;
  b = 0.0f;
  if (VEC) {
    const int64_t n4 = hw >> 2, b4 = base >> 2;
    for (int64_t i = threadIdx.x; i < n4; i += blockDim.x) {
      const float4 v = ld4(x, b4 + i);
      const float d0 = v.x - shift, d1 = v.y - shift, d2 = v.z - shift, d3 = v.w - shift;
      a += (d0 + d1) + (d2 + d3);
      if (squares) b += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);
    }
  } else {
    for (int64_t i = threadIdx.x; i < hw; i += blockDim.x) {
      const float d = x[base + i] - shift;
      a += d;
      if (squares) b += d * d;
    }
  }
}

// M2: also the sum of squared deviations (training); else only the mean (eval planes).
template <bool M2, bool VEC>
__global__ void k_plane_moments(int64_t planes, int64_t hw, const float* __restrict__ x,
                                double* __restrict__ pm, double* __restrict__ pm2) {
  __shared__ double sh[32];
  __shared__ float mean_f;
  const double n = double(hw);
  for (int64_t p = blockIdx.x; p < planes; p += gridDim.x) {
    const int64_t base = p * hw;
    float a, b;
    plane_sums<VEC>(x, base, hw, 0.0f, false, a, b);
    const double A = block_sum(double(a), sh);
    if (!M2) {
      if (threadIdx.x == 0) pm[p] = A / n;
      continue;
    }
    if (threadIdx.x == 0) mean_f = float(A / n);
    __syncthreads();
    const float mf = mean_f;  // read before block_sum's barriers: thread 0 rewrites it next plane
    plane_sums<VEC>(x, base, hw, mf, true, a, b);
    const double S1 = block_sum(double(a), sh);
    const double S2 = block_sum(double(b), sh);
    if (threadIdx.x == 0) {
      pm[p] = double(mf) + S1 / n;
      const double m2 = S2 - S1 * S1 / n;
      pm2[p] = m2 > 0.0 ? m2 : 0.0;
    }
  }
}

__global__ void k_channel_train(int64_t N, int64_t C, int64_t hw, const double* __restrict__ pm,
                                const double* __restrict__ pm2, float momentum, float eps,
                                float* running_mean, float* running_var, float* __restrict__ mean,
                                float* __restrict__ invstd) {
  const double nb = double(hw);
  for (int64_t c = global_thread(); c < C; c += global_stride()) {
    double cnt = 0.0, mu = 0.0, m2 = 0.0;
    for (int64_t n = 0; n < N; ++n) {
      const int64_t p = n * C + c;
      const double tot = cnt + nb, delta = pm[p] - mu;
      mu += delta * (nb / tot);
      m2 += pm2[p] + delta * delta * (cnt * nb / tot);
      cnt = tot;
    }
    const double var = m2 / cnt;
    mean[c] = float(mu);
    invstd[c] = float(1.0 / sqrt(var + double(eps)));
    if (running_mean) {
      const double m = double(momentum);
      running_mean[c] = float((1.0 - m) * double(running_mean[c]) + m * mu);
      running_var[c] = float((1.0 - m) * double(running_var[c]) + m * (m2 / (cnt - 1.0)));
    }
  }
}

__global__ void k_channel_eval(int64_t C, const float* __restrict__ running_mean,
                               const float* __restrict__ running_var, float eps,
                               float* __restrict__ mean, float* __restrict__ invstd) {
  for (int64_t c = global_thread(); c < C; c += global_stride()) {
    mean[c] = running_mean[c];
    invstd[c] = float(1.0 / sqrt(double(running_var[c]) + double(eps)));
  }
}

// rm: the residual's plane means (added to pooled), or null.
__global__ void k_planes(int64_t planes, int64_t C, const double* __restrict__ pm,
                         const double* __restrict__ rm, const float* __restrict__ mean,
                         const float* __restrict__ invstd, const float* __restrict__ weight,
                         const float* __restrict__ bias, float* __restrict__ plane_xhat,
                         float* __restrict__ pooled) {
  for (int64_t p = global_thread(); p < planes; p += global_stride()) {
    const int64_t c = p % C;
    const double xh = (pm[p] - double(mean[c])) * double(invstd[c]);
    plane_xhat[p] = float(xh);
    pooled[p] = float(xh * double(weight[c]) + double(bias[c]) + (rm ? rm[p] : 0.0));
  }
}

// ---- element-wise passes ---------------------------------------------------------------------
struct PlaneK {
  float mean, invstd, scale, bias, s, add, k1, k2;
};

__device__ __forceinline__ PlaneK plane_constants(const BnApply& k, int64_t p, int64_t c,
                                                  int64_t hw, const float* dm, const float* dweight,
                                                  const float* dbias, float inv_count) {
  PlaneK q;
  q.mean = k.mean[c];
  q.invstd = k.invstd[c];
  q.scale = q.invstd * k.weight[c];
  q.bias = k.bias[c];
  q.s = k.s ? k.s[p] : 0.0f;
  q.add = dm ? dm[p] / float(hw) : 0.0f;
  q.k1 = dbias ? dbias[c] * inv_count : 0.0f;
  q.k2 = dweight ? dweight[c] * inv_count : 0.0f;
  return q;
}

// The forward's y, or the backward's dx with dz (the residual's gradient) in *dz. r: the
// residual's element (0 without one).
template <int ACT, bool BWD>
__device__ __forceinline__ float ew_value(const PlaneK& q, float x, float dy, float r, float* dz) {
  const float z = math::bn_norm(x, q.mean, q.scale, q.bias) + r;
  if (!BWD) return math::bn_act<ACT>(z, q.s);
  *dz = math::bn_act_grad<ACT>(z, q.s, dy).dx + q.add;
  return math::bn_input_grad(*dz, x, q.mean, q.invstd, q.scale, q.k1, q.k2);
}

// RES: with the residual k.r (read) and, backward, its gradient dr (written).
template <int ACT, bool BWD, bool VEC, bool RES>
__global__ void k_bn_ew(int64_t planes, int64_t C, int64_t hw, BnApply k,
                        const float* __restrict__ x, const float* __restrict__ dy,
                        const float* __restrict__ dm, const float* __restrict__ dweight,
                        const float* __restrict__ dbias, float inv_count, float* __restrict__ out,
                        float* __restrict__ dr) {
  for (int64_t p = blockIdx.x; p < planes; p += gridDim.x) {
    const PlaneK q = plane_constants(k, p, p % C, hw, dm, dweight, dbias, inv_count);
    const int64_t base = p * hw;
    if (VEC) {
      const int64_t n4 = hw >> 2, b4 = base >> 2;
      for (int64_t i = threadIdx.x; i < n4; i += blockDim.x) {
        const float4 xv = ld4(x, b4 + i);
        const float4 dv = BWD ? ld4(dy, b4 + i) : make_float4(0.f, 0.f, 0.f, 0.f);
        const float4 rv = RES ? ld4(k.r, b4 + i) : make_float4(0.f, 0.f, 0.f, 0.f);
        float4 dz;
        st4(out, b4 + i,
            make_float4(ew_value<ACT, BWD>(q, xv.x, dv.x, rv.x, &dz.x),
                        ew_value<ACT, BWD>(q, xv.y, dv.y, rv.y, &dz.y),
                        ew_value<ACT, BWD>(q, xv.z, dv.z, rv.z, &dz.z),
                        ew_value<ACT, BWD>(q, xv.w, dv.w, rv.w, &dz.w)));
        if (BWD && RES) st4(dr, b4 + i, dz);
      }
    } else {
      for (int64_t i = threadIdx.x; i < hw; i += blockDim.x) {
        float dz;
        out[base + i] = ew_value<ACT, BWD>(q, x[base + i], BWD ? dy[base + i] : 0.0f,
                                           RES ? k.r[base + i] : 0.0f, &dz);
        if (BWD && RES) dr[base + i] = dz;
      }
    }
  }
}

// Adds one element's terms; returns its direct gradient dz_d.
template <int ACT>
__device__ __forceinline__ float red_add(const PlaneK& q, float x, float dy, float r, float& a,
                                         float& b, float& e) {
  const float z = math::bn_norm(x, q.mean, q.scale, q.bias) + r;
  const math::GateGrad g = math::bn_act_grad<ACT>(z, q.s, dy);
  a += g.dx;
  b += g.dx * (x - q.mean);
  e += g.ds;
  return g.dx;
}

// dz (nullable): dz_d written per element as well.
template <int ACT, bool VEC, bool RES>
__global__ void k_bn_reduce(int64_t planes, int64_t C, int64_t hw, BnApply k,
                            const float* __restrict__ x, const float* __restrict__ dy,
                            float* __restrict__ sum_dz, float* __restrict__ sum_dz_xhat,
                            float* __restrict__ ds, float* __restrict__ dz) {
  __shared__ float sh[32];
  for (int64_t p = blockIdx.x; p < planes; p += gridDim.x) {
    const PlaneK q = plane_constants(k, p, p % C, hw, nullptr, nullptr, nullptr, 0.0f);
    const int64_t base = p * hw;
    float a = 0.0f, b = 0.0f, e = 0.0f;
    if (VEC) {
      const int64_t n4 = hw >> 2, b4 = base >> 2;
      for (int64_t i = threadIdx.x; i < n4; i += blockDim.x) {
        const float4 xv = ld4(x, b4 + i), dv = ld4(dy, b4 + i);
        const float4 rv = RES ? ld4(k.r, b4 + i) : make_float4(0.f, 0.f, 0.f, 0.f);
        float4 g;
        g.x = red_add<ACT>(q, xv.x, dv.x, rv.x, a, b, e);
        g.y = red_add<ACT>(q, xv.y, dv.y, rv.y, a, b, e);
        g.z = red_add<ACT>(q, xv.z, dv.z, rv.z, a, b, e);
        g.w = red_add<ACT>(q, xv.w, dv.w, rv.w, a, b, e);
        if (dz) st4(dz, b4 + i, g);
      }
    } else {
      for (int64_t i = threadIdx.x; i < hw; i += blockDim.x) {
        const float g = red_add<ACT>(q, x[base + i], dy[base + i], RES ? k.r[base + i] : 0.0f, a, b, e);
        if (dz) dz[base + i] = g;
      }
    }
    const float A = block_sum(a, sh);
    const float B = block_sum(b, sh);
    float E = 0.0f;
    if (ds) E = block_sum(e, sh);  // ds is the same for the whole block: no divergence
    if (threadIdx.x == 0) {
      sum_dz[p] = A;
      sum_dz_xhat[p] = float(double(B) * double(q.invstd));
      if (ds) ds[p] = E;
    }
  }
}

__global__ void k_bn_params(int64_t N, int64_t C, const float* __restrict__ sum_dz,
                            const float* __restrict__ sum_dz_xhat, const float* __restrict__ dm,
                            const float* __restrict__ plane_xhat, float* __restrict__ dweight,
                            float* __restrict__ dbias) {
  for (int64_t c = global_thread(); c < C; c += global_stride()) {
    double s1 = 0.0, s2 = 0.0;
    for (int64_t n = 0; n < N; ++n) {
      const int64_t p = n * C + c;
      s1 += double(sum_dz[p]);
      s2 += double(sum_dz_xhat[p]);
      if (dm) {
        s1 += double(dm[p]);
        s2 += double(dm[p]) * double(plane_xhat[p]);
      }
    }
    dweight[c] = float(s2);
    dbias[c] = float(s1);
  }
}

// ---- launch helpers -------------------------------------------------------------------------
bool vec_ok(int64_t hw, const float* a, const float* b, const float* c) {
  return hw % 4 == 0 && aligned16(a) && aligned16(b) && aligned16(c);
}

void launch_moments(cudaStream_t st, const BnShape& d, const float* x, double* pm, double* pm2) {
  const bool vec = vec_ok(d.HW, x, nullptr, nullptr);
  const int block = block_for_items(vec ? d.HW / 4 : d.HW);
  const int grid = grid_for_items(d.planes(), block);
  if (pm2) {
    if (vec) k_plane_moments<true, true><<<grid, block, 0, st>>>(d.planes(), d.HW, x, pm, pm2);
    else k_plane_moments<true, false><<<grid, block, 0, st>>>(d.planes(), d.HW, x, pm, pm2);
  } else {
    if (vec) k_plane_moments<false, true><<<grid, block, 0, st>>>(d.planes(), d.HW, x, pm, nullptr);
    else k_plane_moments<false, false><<<grid, block, 0, st>>>(d.planes(), d.HW, x, pm, nullptr);
  }
  CUDA_CHECK_LAUNCH();
}

void launch_planes(cudaStream_t st, const BnShape& d, const double* pm, const double* rm,
                   const float* mean, const float* invstd, const float* weight, const float* bias,
                   float* plane_xhat, float* pooled) {
  k_planes<<<grid_for(d.planes(), 256), 256, 0, st>>>(d.planes(), d.C, pm, rm, mean, invstd,
                                                       weight, bias, plane_xhat, pooled);
  CUDA_CHECK_LAUNCH();
}

template <int ACT, bool BWD, bool VEC>
void launch_ew_res(cudaStream_t st, const BnShape& d, const BnApply& k, const float* x,
                   const float* dy, const float* dm, const float* dweight, const float* dbias,
                   float* out, float* dr, int grid, int block) {
  const float inv_count = float(1.0 / double(d.count()));
  if (k.r)
    k_bn_ew<ACT, BWD, VEC, true><<<grid, block, 0, st>>>(d.planes(), d.C, d.HW, k, x, dy, dm,
                                                         dweight, dbias, inv_count, out, dr);
  else
    k_bn_ew<ACT, BWD, VEC, false><<<grid, block, 0, st>>>(d.planes(), d.C, d.HW, k, x, dy, dm,
                                                          dweight, dbias, inv_count, out, dr);
}

template <int ACT, bool BWD>
void launch_ew_act(cudaStream_t st, const BnShape& d, const BnApply& k, const float* x,
                   const float* dy, const float* dm, const float* dweight, const float* dbias,
                   float* out, float* dr) {
  const bool vec = vec_ok(d.HW, x, dy, out) && aligned16(k.r) && aligned16(dr);
  const int block = block_for_items(vec ? d.HW / 4 : d.HW);
  const int grid = grid_for_items(d.planes(), block);
  if (vec) launch_ew_res<ACT, BWD, true>(st, d, k, x, dy, dm, dweight, dbias, out, dr, grid, block);
  else launch_ew_res<ACT, BWD, false>(st, d, k, x, dy, dm, dweight, dbias, out, dr, grid, block);
  CUDA_CHECK_LAUNCH();
}

template <bool BWD>
void launch_ew(cudaStream_t st, const BnShape& d, NormAct act, const BnApply& k, const float* x,
               const float* dy, const float* dm, const float* dweight, const float* dbias,
               float* out, float* dr) {
  if (d.planes() <= 0 || d.HW <= 0) return;
  switch (act) {
    case NormAct::ReLU: launch_ew_act<math::bnact::kReLU, BWD>(st, d, k, x, dy, dm, dweight, dbias, out, dr); break;
    case NormAct::SiLU: launch_ew_act<math::bnact::kSiLU, BWD>(st, d, k, x, dy, dm, dweight, dbias, out, dr); break;
    case NormAct::Gate: launch_ew_act<math::bnact::kGate, BWD>(st, d, k, x, dy, dm, dweight, dbias, out, dr); break;
    case NormAct::GELU: launch_ew_act<math::bnact::kGELU, BWD>(st, d, k, x, dy, dm, dweight, dbias, out, dr); break;
    case NormAct::GELUTanh: launch_ew_act<math::bnact::kGELUTanh, BWD>(st, d, k, x, dy, dm, dweight, dbias, out, dr); break;
    default: launch_ew_act<math::bnact::kNone, BWD>(st, d, k, x, dy, dm, dweight, dbias, out, dr); break;
  }
}

template <int ACT, bool VEC>
void launch_reduce_res(cudaStream_t st, const BnShape& d, const BnApply& k, const float* x,
                       const float* dy, float* sum_dz, float* sum_dz_xhat, float* ds, float* dz,
                       int grid, int block) {
  if (k.r)
    k_bn_reduce<ACT, VEC, true><<<grid, block, 0, st>>>(d.planes(), d.C, d.HW, k, x, dy, sum_dz,
                                                        sum_dz_xhat, ds, dz);
  else
    k_bn_reduce<ACT, VEC, false><<<grid, block, 0, st>>>(d.planes(), d.C, d.HW, k, x, dy, sum_dz,
                                                         sum_dz_xhat, ds, dz);
}

template <int ACT>
void launch_reduce_act(cudaStream_t st, const BnShape& d, const BnApply& k, const float* x,
                       const float* dy, float* sum_dz, float* sum_dz_xhat, float* ds, float* dz) {
  const bool vec = vec_ok(d.HW, x, dy, dz) && aligned16(k.r);
  const int block = block_for_items(vec ? d.HW / 4 : d.HW);
  const int grid = grid_for_items(d.planes(), block);
  if (vec) launch_reduce_res<ACT, true>(st, d, k, x, dy, sum_dz, sum_dz_xhat, ds, dz, grid, block);
  else launch_reduce_res<ACT, false>(st, d, k, x, dy, sum_dz, sum_dz_xhat, ds, dz, grid, block);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

// ---- launchers ------------------------------------------------------------------------------
void batchnorm_stats_train(cudaStream_t st, const BnShape& d, const float* x,
                           const float* weight, const float* bias, float momentum, float eps,
                           float* running_mean, float* running_var, float* mean, float* invstd,
                           float* plane_xhat, float* pooled, const float* residual) {
  const int64_t P = d.planes();
  Scratch scratch(size_t(3 * (P > 0 ? P : 1)) * sizeof(double));
  double* pm = scratch.as<double>();
  double* pm2 = pm + P;
  double* rm = pm2 + P;  // the residual's plane means (for pooled)
  if (P > 0) launch_moments(st, d, x, pm, pm2);
  k_channel_train<<<grid_for(d.C, 128), 128, 0, st>>>(d.N, d.C, d.HW, pm, pm2, momentum, eps,
                                                       running_mean, running_var, mean, invstd);
  CUDA_CHECK_LAUNCH();
  if (plane_xhat && P > 0) {
    if (residual) launch_moments(st, d, residual, rm, nullptr);
    launch_planes(st, d, pm, residual ? rm : nullptr, mean, invstd, weight, bias, plane_xhat,
                  pooled);
  }
}

void batchnorm_stats_eval(cudaStream_t st, const BnShape& d, const float* x, const float* weight,
                          const float* bias, const float* running_mean, const float* running_var,
                          float eps, float* mean, float* invstd, float* plane_xhat, float* pooled,
                          const float* residual) {
  k_channel_eval<<<grid_for(d.C, 128), 128, 0, st>>>(d.C, running_mean, running_var, eps, mean,
                                                      invstd);
  CUDA_CHECK_LAUNCH();
  const int64_t P = d.planes();
  if (!plane_xhat || P <= 0) return;
  Scratch scratch(size_t(2 * P) * sizeof(double));
  double* pm = scratch.as<double>();
  double* rm = pm + P;
  launch_moments(st, d, x, pm, nullptr);
  if (residual) launch_moments(st, d, residual, rm, nullptr);
  launch_planes(st, d, pm, residual ? rm : nullptr, mean, invstd, weight, bias, plane_xhat, pooled);
}

void batchnorm_act_forward(cudaStream_t st, const BnShape& d, NormAct act, const BnApply& p,
                           const float* x, float* y) {
  launch_ew<false>(st, d, act, p, x, nullptr, nullptr, nullptr, nullptr, y, nullptr);
}

void batchnorm_act_backward_reduce(cudaStream_t st, const BnShape& d, NormAct act,
                                   const BnApply& p, const float* x, const float* dy,
                                   float* sum_dz, float* sum_dz_xhat, float* ds, float* dz) {
  if (d.planes() <= 0) return;
  switch (act) {
    case NormAct::ReLU: launch_reduce_act<math::bnact::kReLU>(st, d, p, x, dy, sum_dz, sum_dz_xhat, ds, dz); break;
    case NormAct::SiLU: launch_reduce_act<math::bnact::kSiLU>(st, d, p, x, dy, sum_dz, sum_dz_xhat, ds, dz); break;
    case NormAct::Gate: launch_reduce_act<math::bnact::kGate>(st, d, p, x, dy, sum_dz, sum_dz_xhat, ds, dz); break;
    case NormAct::GELU: launch_reduce_act<math::bnact::kGELU>(st, d, p, x, dy, sum_dz, sum_dz_xhat, ds, dz); break;
    case NormAct::GELUTanh: launch_reduce_act<math::bnact::kGELUTanh>(st, d, p, x, dy, sum_dz, sum_dz_xhat, ds, dz); break;
    default: launch_reduce_act<math::bnact::kNone>(st, d, p, x, dy, sum_dz, sum_dz_xhat, ds, dz); break;
  }
}

void batchnorm_backward_params(cudaStream_t st, const BnShape& d, const float* sum_dz,
                               const float* sum_dz_xhat, const float* dm, const float* plane_xhat,
                               float* dweight, float* dbias) {
  k_bn_params<<<grid_for(d.C, 128), 128, 0, st>>>(d.N, d.C, sum_dz, sum_dz_xhat, dm, plane_xhat,
                                                   dweight, dbias);
  CUDA_CHECK_LAUNCH();
}

void batchnorm_act_backward_apply(cudaStream_t st, const BnShape& d, NormAct act,
                                  const BnApply& p, const float* x, const float* dy,
                                  const float* dm, const float* dweight, const float* dbias,
                                  float* dx, float* dr) {
  launch_ew<true>(st, d, act, p, x, dy, dm, dweight, dbias, dx, dr);
}

}  // namespace cuda
}  // namespace adashift

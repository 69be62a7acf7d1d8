// CUDA pooling kernels: one thread per output element in forward, one thread per input element
// in backward (a gather over the windows that contain it, in ascending (oh, ow) order: the same
// additions in the same order as the CPU's per-plane scatter, no atomics). Grid-stride loops
// over all elements; windows and divisors come from math.h (pool_window, pool_outputs_of).
#include "../ops/pool.h"
#include "common.cuh"

namespace adashift {
namespace cuda {

using namespace detail;

namespace {

__device__ __forceinline__ math::PoolWindow window(const Pool2d& g, int oh, int ow) {
  return math::pool_window(oh, ow, g.H, g.W, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw,
                           g.count_include_pad);
}

__global__ void k_max_fwd(Pool2d g, const float* __restrict__ x, float* __restrict__ y,
                          float* __restrict__ indices) {
  const int64_t out_plane = int64_t(g.Ho) * g.Wo, in_plane = int64_t(g.H) * g.W;
  const int64_t total = g.N * g.C * out_plane;
  for (int64_t i = global_thread(); i < total; i += global_stride()) {
    const int64_t p = i / out_plane;
    const int r = int(i % out_plane);
    const int oh = r / g.Wo, ow = r % g.Wo;
    const math::PoolWindow w = window(g, oh, ow);
    const float* xp = x + p * in_plane;
    float best = -INFINITY;
    int bi = w.h0 * g.W + w.w0;
    for (int h = w.h0; h < w.h1; ++h)
      for (int c = w.w0; c < w.w1; ++c) {
        const float v = xp[int64_t(h) * g.W + c];
        if (math::pool_takes(v, best)) {
          best = v;
          bi = h * g.W + c;
        }
      }
    y[i] = best;
    indices[i] = float(bi);
  }
}

__global__ void k_max_bwd(Pool2d g, const float* __restrict__ dy, const float* __restrict__ indices,
                          float* __restrict__ dx) {
  const int64_t out_plane = int64_t(g.Ho) * g.Wo, in_plane = int64_t(g.H) * g.W;
  const int64_t total = g.N * g.C * in_plane;
  for (int64_t i = global_thread(); i < total; i += global_stride()) {
    const int64_t p = i / in_plane;
    const int r = int(i % in_plane);
    const int h = r / g.W, w = r % g.W;
    const math::OutRange rows = math::pool_outputs_of(h, g.kh, g.sh, g.ph, g.Ho);
    const math::OutRange cols = math::pool_outputs_of(w, g.kw, g.sw, g.pw, g.Wo);
    const float* gp = dy + p * out_plane;
    const float* ip = indices + p * out_plane;
    const float me = float(r);
    float acc = 0.0f;
    for (int oh = rows.o0; oh < rows.o1; ++oh)
      for (int ow = cols.o0; ow < cols.o1; ++ow) {
        const int64_t o = int64_t(oh) * g.Wo + ow;
        if (ip[o] == me) acc += gp[o];
      }
    dx[i] = acc;
  }
}

__global__ void k_avg_fwd(Pool2d g, const float* __restrict__ x, float* __restrict__ y) {
  const int64_t out_plane = int64_t(g.Ho) * g.Wo, in_plane = int64_t(g.H) * g.W;
  const int64_t total = g.N * g.C * out_plane;
  for (int64_t i = global_thread(); i < total; i += global_stride()) {
    const int64_t p = i / out_plane;
    const int r = int(i % out_plane);
    const math::PoolWindow w = window(g, r / g.Wo, r % g.Wo);
    const float* xp = x + p * in_plane;
    float acc = 0.0f;
    for (int h = w.h0; h < w.h1; ++h)
      for (int c = w.w0; c < w.w1; ++c) acc += xp[int64_t(h) * g.W + c];
    y[i] = acc / float(w.divisor);
  }
}

__global__ void k_avg_bwd(Pool2d g, const float* __restrict__ dy, float* __restrict__ dx) {
  const int64_t out_plane = int64_t(g.Ho) * g.Wo, in_plane = int64_t(g.H) * g.W;
  const int64_t total = g.N * g.C * in_plane;
  for (int64_t i = global_thread(); i < total; i += global_stride()) {
    const int64_t p = i / in_plane;
    const int r = int(i % in_plane);
    const int h = r / g.W, w = r % g.W;
    const math::OutRange rows = math::pool_outputs_of(h, g.kh, g.sh, g.ph, g.Ho);
    const math::OutRange cols = math::pool_outputs_of(w, g.kw, g.sw, g.pw, g.Wo);
    const float* gp = dy + p * out_plane;
    float acc = 0.0f;
    for (int oh = rows.o0; oh < rows.o1; ++oh)
      for (int ow = cols.o0; ow < cols.o1; ++ow)
        acc += gp[int64_t(oh) * g.Wo + ow] / float(window(g, oh, ow).divisor);
    dx[i] = acc;
  }
}

}  // namespace

void max_pool2d_forward(cudaStream_t st, const Pool2d& g, const float* x, float* y,
                        float* indices) {
  const int64_t n = g.planes() * g.Ho * g.Wo;
  if (n <= 0) return;
  k_max_fwd<<<grid_for(n, 256), 256, 0, st>>>(g, x, y, indices);
  CUDA_CHECK_LAUNCH();
}

void max_pool2d_backward(cudaStream_t st, const Pool2d& g, const float* dy, const float* indices,
                         float* dx) {
  const int64_t n = g.planes() * g.H * g.W;
  if (n <= 0) return;
  k_max_bwd<<<grid_for(n, 256), 256, 0, st>>>(g, dy, indices, dx);
  CUDA_CHECK_LAUNCH();
}

void avg_pool2d_forward(cudaStream_t st, const Pool2d& g, const float* x, float* y) {
  const int64_t n = g.planes() * g.Ho * g.Wo;
  if (n <= 0) return;
  k_avg_fwd<<<grid_for(n, 256), 256, 0, st>>>(g, x, y);
  CUDA_CHECK_LAUNCH();
}

void avg_pool2d_backward(cudaStream_t st, const Pool2d& g, const float* dy, float* dx) {
  const int64_t n = g.planes() * g.H * g.W;
  if (n <= 0) return;
  k_avg_bwd<<<grid_for(n, 256), 256, 0, st>>>(g, dy, dx);
  CUDA_CHECK_LAUNCH();
}

}  // namespace cuda
}  // namespace adashift

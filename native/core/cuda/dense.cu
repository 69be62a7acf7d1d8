// CUDA kernels for the context networks' dense ops: LayerNorm and softmax over the last axis
// (one warp per row, double accumulators like the CPU code, fixed-order warp sums), LayerNorm's
// parameter gradients as deterministic column sums, a plain shared-memory tiled batched
// matmul, and axis permutation.
#include <cmath>
#include "../ops/dense.h"
#include "common.cuh"

namespace adashift {
namespace cuda {

using namespace detail;

namespace {

constexpr int kRowBlock = 256;            // 8 warps: 8 rows in flight per block
constexpr int kRowsPerBlock = kRowBlock / 32;

// Row loop for warp-per-row kernels: the bounds are the same for every lane of the warp, so
// full-mask shuffles inside the body are safe.
#define FOR_EACH_WARP_ROW(r, rows)                                                        \
  for (int64_t r = int64_t(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5); r < (rows); \
       r += int64_t(gridDim.x) * (blockDim.x >> 5))

// ---- LayerNorm ------------------------------------------------------------------------------
// Per row: mean and biased variance in double (two passes), rstd = 1 / sqrt(var + eps), then
// y = (x - mean) * rstd * w + b -- the CPU expressions.
__global__ void k_layernorm_forward(const float* x, const float* w, const float* b, float eps,
                                    int64_t rows, int64_t C, float* y, float* mean,
                                    float* rstd) {
  const int lane = threadIdx.x & 31;
  FOR_EACH_WARP_ROW(r, rows) {
    const float* xr = x + r * C;
    double s = 0.0;
    for (int64_t j = lane; j < C; j += 32) s += double(xr[j]);
    s = warp_sum(s);
    const double mu = s / double(C);
    double v = 0.0;
    for (int64_t j = lane; j < C; j += 32) {
      const double d = double(xr[j]) - mu;
      v += d * d;
    }
    v = warp_sum(v);
    const float rs = float(1.0 / sqrt(v / double(C) + double(eps)));
    const float m = float(mu);
    float* yr = y + r * C;
    for (int64_t j = lane; j < C; j += 32) yr[j] = (xr[j] - m) * rs * w[j] + b[j];
    if (lane == 0) {
      mean[r] = m;
      rstd[r] = rs;
    }
  }
}

// dx = rstd * (dy*w - mean(dy*w) - xhat * mean(dy*w*xhat)), per row.
__global__ void k_layernorm_backward_dx(const float* dy, const float* x, const float* mean,
                                        const float* rstd, const float* w, int64_t rows,
                                        int64_t C, float* dx) {
  const int lane = threadIdx.x & 31;
  FOR_EACH_WARP_ROW(r, rows) {
    const float* xr = x + r * C;
    const float* dyr = dy + r * C;
    const float m = mean[r], rs = rstd[r];
    double a = 0.0, bsum = 0.0;
    for (int64_t j = lane; j < C; j += 32) {
      const double g = double(dyr[j]) * double(w[j]);
      a += g;
      bsum += g * double((xr[j] - m) * rs);
    }
    a = warp_sum(a);
    bsum = warp_sum(bsum);
    const float ma = float(a / double(C)), mb = float(bsum / double(C));
    float* dxr = dx + r * C;
    for (int64_t j = lane; j < C; j += 32) {
      const float xhat = (xr[j] - m) * rs;
      // __fmul_rn keeps dy*w rounded as on the CPU (no FMA contraction with "- ma"): when the
      // row's variance is ~0 (e.g. C == 1), rstd ~ 1/sqrt(eps) is huge and dy*w - mean(dy*w)
      // must cancel exactly, not leave the product's rounding error times rstd.
      dxr[j] = rs * (__fmul_rn(dyr[j], w[j]) - ma - xhat * mb);
    }
  }
}

// dweight[j] += dy * xhat, dbias[j] += dy (column sums over rows).
struct LayerNormParamGrad {
  const float* dy;
  const float* x;
  const float* mean;
  const float* rstd;
  int64_t C;
  __device__ void operator()(int64_t r, int64_t j, double* acc) const {
    const float d = dy[r * C + j];
    acc[0] += double(d) * double((x[r * C + j] - mean[r]) * rstd[r]);
    acc[1] += double(d);
  }
};

// ---- softmax over the last axis ---------------------------------------------------------------
__global__ void k_softmax_forward(const float* x, int64_t rows, int64_t n, float* y) {
  const int lane = threadIdx.x & 31;
  FOR_EACH_WARP_ROW(r, rows) {
    const float* xr = x + r * n;
    float* yr = y + r * n;
    float mx = -INFINITY;
    for (int64_t j = lane; j < n; j += 32) mx = fmaxf(mx, xr[j]);
    mx = warp_max(mx);
    double s = 0.0;
    for (int64_t j = lane; j < n; j += 32) {
      const float e = math::vexp(xr[j] - mx);  // the CPU's exp (math.h)
      yr[j] = e;
      s += double(e);
    }
    s = warp_sum(s);
    const float inv = float(1.0 / s);
    for (int64_t j = lane; j < n; j += 32) yr[j] *= inv;  // each lane rescales its own writes
  }
}

__global__ void k_softmax_backward(const float* y, const float* dy, int64_t rows, int64_t n,
                                   float* dx) {
  const int lane = threadIdx.x & 31;
  FOR_EACH_WARP_ROW(r, rows) {
    const float* yr = y + r * n;
    const float* dyr = dy + r * n;
    double s = 0.0;
    for (int64_t j = lane; j < n; j += 32) s += double(yr[j]) * double(dyr[j]);
    s = warp_sum(s);
    const float sf = float(s);
    float* dxr = dx + r * n;
    for (int64_t j = lane; j < n; j += 32) dxr[j] = yr[j] * (dyr[j] - sf);
  }
}

#undef FOR_EACH_WARP_ROW

// ---- batched matmul -------------------------------------------------------------------------
// C[e] = op(A[e]) @ op(B[e]) with 32 x 32 output tiles and 32-deep k tiles in shared memory.
// Blocks of 32 x 8 threads; thread (tx, ty) owns outputs (ty + 8m, tx), m = 0..3, and adds
// k in increasing order. Tiles are loaded so that consecutive threads read consecutive
// addresses for either storage order (A stored [K, M] when trans_a, B stored [N, K] when
// trans_b). blockIdx.x/y/z loop over column tiles / row tiles / batch entries, so any size fits
// the grid limits.
constexpr int kTile = 32;

__global__ void k_matmul(MatmulDims d, const float* a, const float* b, float* c) {
  __shared__ float As[kTile][kTile + 1];  // As[k][i]
  __shared__ float Bs[kTile][kTile + 1];  // Bs[k][j]
  const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * kTile + tx;
  const int64_t M = d.M, N = d.N, K = d.K;
  const int64_t tiles_m = (M + kTile - 1) / kTile, tiles_n = (N + kTile - 1) / kTile;
  for (int64_t e = blockIdx.z; e < d.batch; e += gridDim.z) {
    const float* A = a + e * d.stride_a;
    const float* B = b + e * d.stride_b;
    float* Cm = c + e * d.stride_c;
    for (int64_t tm = blockIdx.y; tm < tiles_m; tm += gridDim.y) {
      for (int64_t tn = blockIdx.x; tn < tiles_n; tn += gridDim.x) {
        const int64_t i0 = tm * kTile, j0 = tn * kTile;
        float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int64_t k0 = 0; k0 < K; k0 += kTile) {
          for (int idx = tid; idx < kTile * kTile; idx += kTile * 8) {
            const int hi = idx / kTile, lo = idx % kTile;
            {
              const int ii = d.trans_a ? lo : hi, kk = d.trans_a ? hi : lo;
              const int64_t i = i0 + ii, k = k0 + kk;
              As[kk][ii] = (i < M && k < K) ? (d.trans_a ? A[k * M + i] : A[i * K + k]) : 0.0f;
            }
            {
              const int jj = d.trans_b ? hi : lo, kk = d.trans_b ? lo : hi;
              const int64_t j = j0 + jj, k = k0 + kk;
              Bs[kk][jj] = (j < N && k < K) ? (d.trans_b ? B[j * K + k] : B[k * N + j]) : 0.0f;
            }
          }
          __syncthreads();
          const int kmax = K - k0 < kTile ? int(K - k0) : kTile;
          for (int kk = 0; kk < kmax; ++kk) {
            const float bv = Bs[kk][tx];
#pragma unroll
            for (int m = 0; m < 4; ++m) acc[m] += As[kk][ty + 8 * m] * bv;
          }
          __syncthreads();
        }
#pragma unroll
        for (int m = 0; m < 4; ++m) {
          const int64_t i = i0 + ty + 8 * m, j = j0 + tx;
          if (i < M && j < N) Cm[i * N + j] = acc[m];
        }
      }
    }
  }
}

// ---- permute ----------------------------------------------------------------------------------
__global__ void k_permute(PermuteDims d, const float* x, float* out, int64_t total) {
  for (int64_t o = global_thread(); o < total; o += global_stride()) {
    int64_t rem = o, src = 0;
#pragma unroll
    for (int i = 5; i >= 0; --i) {  // fixed trip count: the dims stay in registers
      if (i < d.rank) {
        src += (rem % d.out_shape[i]) * d.in_strides[i];
        rem /= d.out_shape[i];
      }
    }
    out[o] = x[src];
  }
}

}  // namespace

// ---- launchers ------------------------------------------------------------------------------
void layernorm_forward(cudaStream_t s, const float* x, const float* w, const float* b, float eps,
                       int64_t rows, int64_t C, float* y, float* mean, float* rstd) {
  if (rows <= 0 || C <= 0) return;
  k_layernorm_forward<<<grid_for(rows, kRowsPerBlock), kRowBlock, 0, s>>>(x, w, b, eps, rows, C,
                                                                          y, mean, rstd);
  CUDA_CHECK_LAUNCH();
}

void layernorm_backward(cudaStream_t s, const float* dy, const float* x, const float* mean,
                        const float* rstd, const float* w, int64_t rows, int64_t C, float* dx,
                        float* dw, float* db) {
  if (C <= 0) return;
  if (rows > 0) {
    k_layernorm_backward_dx<<<grid_for(rows, kRowsPerBlock), kRowBlock, 0, s>>>(
        dy, x, mean, rstd, w, rows, C, dx);
    CUDA_CHECK_LAUNCH();
  }
  float* outs[2] = {dw, db};  // rows == 0 gives zeros, like the CPU code
  column_sums<2>(s, LayerNormParamGrad{dy, x, mean, rstd, C}, rows, C, outs);
}

void softmax_forward(cudaStream_t s, const float* x, int64_t rows, int64_t n, float* y) {
  if (rows <= 0 || n <= 0) return;
  k_softmax_forward<<<grid_for(rows, kRowsPerBlock), kRowBlock, 0, s>>>(x, rows, n, y);
  CUDA_CHECK_LAUNCH();
}

void softmax_backward(cudaStream_t s, const float* y, const float* dy, int64_t rows, int64_t n,
                      float* dx) {
  if (rows <= 0 || n <= 0) return;
  k_softmax_backward<<<grid_for(rows, kRowsPerBlock), kRowBlock, 0, s>>>(y, dy, rows, n, dx);
  CUDA_CHECK_LAUNCH();
}

void matmul(cudaStream_t s, const MatmulDims& d, const float* a, const float* b, float* c) {
  if (d.batch <= 0 || d.M <= 0 || d.N <= 0) return;
  const int64_t tiles_m = (d.M + kTile - 1) / kTile, tiles_n = (d.N + kTile - 1) / kTile;
  const dim3 grid(unsigned(tiles_n < kMaxGridX ? tiles_n : kMaxGridX),
                  unsigned(tiles_m < kMaxGridYZ ? tiles_m : kMaxGridYZ),
                  unsigned(d.batch < kMaxGridYZ ? d.batch : kMaxGridYZ));
  k_matmul<<<grid, dim3(kTile, 8), 0, s>>>(d, a, b, c);
  CUDA_CHECK_LAUNCH();
}

void permute(cudaStream_t s, const PermuteDims& d, const float* x, float* out) {
  int64_t total = 1;
  for (int i = 0; i < d.rank; ++i) total *= d.out_shape[i];
  if (total <= 0) return;
  k_permute<<<grid_for(total, 256), 256, 0, s>>>(d, x, out, total);
  CUDA_CHECK_LAUNCH();
}

}  // namespace cuda
}  // namespace adashift

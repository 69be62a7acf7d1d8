// CUDA 2-D convolution: im2col / col2im kernels around a shared-memory tiled SGEMM of our own
// (no cuBLAS), with deterministic weight and bias gradients.
//
// Samples are processed in chunks of nb (the im2col columns of a chunk, nb x K x P floats, stay
// under kScratchFloats); within a chunk every GEMM is batched over the samples:
//   forward  y[n]     = W [Cout, K] @ cols[n] [K, P] (+ bias per row, in the GEMM epilogue)
//   dW       part[n]  = dy[n] [Cout, P] @ cols[n]^T, then dw = sum over n in order (one thread
//                       per weight element, double sum within a chunk; chunks added to dw
//                       in order, in float)
//   dX       dcols[n] = W^T [K, Cout] @ dy[n] [Cout, P], then col2im as a gather (one thread
//                       per input element, taps in a fixed order: no atomics)
//   db       one block per channel: double sums over (n, p) in a fixed pattern + block_sum
// A 1x1, stride-1, unpadded convolution uses x (or dx) itself as the columns. No float atomics
// anywhere: the same inputs give the same bits on every run on one device.
#include <algorithm>
#include "../ops/conv.h"
#include "../ops/elementwise.h"
#include "common.cuh"

namespace adashift {
namespace cuda {

using namespace detail;

namespace {

constexpr int64_t kScratchFloats = int64_t(1) << 25;  // im2col columns per chunk (128 MiB)

// ---- SGEMM --------------------------------------------------------------------------------------
// C[e] = alpha * op(A[e]) op(B[e]) + beta * C[e] (+ bias[i] on row i), row-major with leading
// dimensions, e < batch; stride 0 shares an operand across the batch. beta == 0: C is not read.
struct GemmArgs {
  int64_t M, N, K, batch;
  const float* A;
  int64_t lda, stride_a;
  const float* B;
  int64_t ldb, stride_b;
  float* C;
  int64_t ldc, stride_c;
  float alpha, beta;
  const float* bias;  // per row of C, or null
};

constexpr int kThreads = 256;
constexpr int kBK = 16;

// A block of 256 threads computes a BM x BN tile of C. Each k step loads a BM x kBK tile of
// op(A) and a kBK x BN tile of op(B) into shared memory (zero-filled outside the matrices), with
// consecutive threads reading consecutive addresses for either storage order; thread (tx, ty)
// then owns the TM x TN outputs (ty + TY*r, tx + TX*c) in registers and adds k in increasing
// order. blockIdx.x / y / z loop over column tiles / row tiles / batch entries.
template <int BM, int BN, int TM, int TN, bool TA, bool TB>
__global__ void __launch_bounds__(kThreads) k_sgemm(GemmArgs g) {
  constexpr int TX = BN / TN, TY = BM / TM;
  static_assert(TX * TY == kThreads, "the tile must give 256 threads");
  static_assert((BM * kBK) % kThreads == 0 && (BN * kBK) % kThreads == 0, "whole tile loads");
  __shared__ float As[kBK][BM + 4];
  __shared__ float Bs[kBK][BN + 4];
  const int tid = threadIdx.x;
  const int tx = tid % TX, ty = tid / TX;
  const int64_t tiles_m = (g.M + BM - 1) / BM, tiles_n = (g.N + BN - 1) / BN;
  for (int64_t e = blockIdx.z; e < g.batch; e += gridDim.z) {
    const float* A = g.A + e * g.stride_a;
    const float* B = g.B + e * g.stride_b;
    float* C = g.C + e * g.stride_c;
    for (int64_t tm = blockIdx.y; tm < tiles_m; tm += gridDim.y) {
      for (int64_t tn = blockIdx.x; tn < tiles_n; tn += gridDim.x) {
        const int64_t i0 = tm * BM, j0 = tn * BN;
        float acc[TM][TN];
#pragma unroll
        for (int r = 0; r < TM; ++r)
#pragma unroll
          for (int c = 0; c < TN; ++c) acc[r][c] = 0.0f;
        for (int64_t k0 = 0; k0 < g.K; k0 += kBK) {
#pragma unroll
          for (int t = 0; t < BM * kBK / kThreads; ++t) {
            const int idx = tid + t * kThreads;
            const int ii = TA ? idx % BM : idx / kBK;
            const int kk = TA ? idx / BM : idx % kBK;
            const int64_t i = i0 + ii, k = k0 + kk;
            float v = 0.0f;
            if (i < g.M && k < g.K) v = TA ? A[k * g.lda + i] : A[i * g.lda + k];
            As[kk][ii] = v;
          }
#pragma unroll
          for (int t = 0; t < kBK * BN / kThreads; ++t) {
            const int idx = tid + t * kThreads;
            const int jj = TB ? idx / kBK : idx % BN;
            const int kk = TB ? idx % kBK : idx / BN;
            const int64_t j = j0 + jj, k = k0 + kk;
            float v = 0.0f;
            if (j < g.N && k < g.K) v = TB ? B[j * g.ldb + k] : B[k * g.ldb + j];
            Bs[kk][jj] = v;
          }
          __syncthreads();
#pragma unroll
          for (int kk = 0; kk < kBK; ++kk) {
            float a[TM], b[TN];
#pragma unroll
            for (int r = 0; r < TM; ++r) a[r] = As[kk][ty + TY * r];
#pragma unroll
            for (int c = 0; c < TN; ++c) b[c] = Bs[kk][tx + TX * c];
#pragma unroll
            for (int r = 0; r < TM; ++r)
#pragma unroll
              for (int c = 0; c < TN; ++c) acc[r][c] = fmaf(a[r], b[c], acc[r][c]);
          }
          __syncthreads();
        }
#pragma unroll
        for (int r = 0; r < TM; ++r) {
          const int64_t i = i0 + ty + TY * r;
          if (i >= g.M) continue;
          const float add = g.bias ? g.bias[i] : 0.0f;
#pragma unroll
          for (int c = 0; c < TN; ++c) {
            const int64_t j = j0 + tx + TX * c;
            if (j >= g.N) continue;
            float* cp = C + i * g.ldc + j;
            float v = g.alpha * acc[r][c];
            if (g.beta != 0.0f) v += g.beta * *cp;
            *cp = v + add;
          }
        }
      }
    }
  }
}

template <int BM, int BN, int TM, int TN>
void launch_sgemm_tile(cudaStream_t s, const GemmArgs& g, bool ta, bool tb) {
  const int64_t tiles_m = (g.M + BM - 1) / BM, tiles_n = (g.N + BN - 1) / BN;
  const dim3 grid(unsigned(tiles_n < kMaxGridX ? tiles_n : kMaxGridX),
                  unsigned(tiles_m < kMaxGridYZ ? tiles_m : kMaxGridYZ),
                  unsigned(g.batch < kMaxGridYZ ? g.batch : kMaxGridYZ));
  if (!ta && !tb) k_sgemm<BM, BN, TM, TN, false, false><<<grid, kThreads, 0, s>>>(g);
  else if (!ta && tb) k_sgemm<BM, BN, TM, TN, false, true><<<grid, kThreads, 0, s>>>(g);
  else if (ta && !tb) k_sgemm<BM, BN, TM, TN, true, false><<<grid, kThreads, 0, s>>>(g);
  else k_sgemm<BM, BN, TM, TN, true, true><<<grid, kThreads, 0, s>>>(g);
  CUDA_CHECK_LAUNCH();
}

// Picks the tile by the shape: short C (few output channels) gets wide, short tiles so that no
// block computes mostly padding; large products get 128 x 128 tiles (8 x 8 per thread).
void sgemm(cudaStream_t s, const GemmArgs& g, bool ta, bool tb) {
  if (g.M <= 0 || g.N <= 0 || g.batch <= 0) return;
  if (g.M <= 16) launch_sgemm_tile<16, 128, 1, 8>(s, g, ta, tb);
  else if (g.M <= 32) launch_sgemm_tile<32, 128, 2, 8>(s, g, ta, tb);
  else if (g.M >= 128 && g.N >= 128) launch_sgemm_tile<128, 128, 8, 8>(s, g, ta, tb);
  else launch_sgemm_tile<64, 64, 4, 4>(s, g, ta, tb);
}

// ---- im2col / col2im ----------------------------------------------------------------------------
// cols[n][r][p] for nb samples: r = (c, i, j) a kernel tap, p = (oh, ow) an output pixel.
__global__ void k_im2col(Conv2dDims d, const float* x, int64_t nb, float* cols) {
  const int64_t K = d.Cin * d.kh * d.kw, P = d.Ho * d.Wo, total = nb * K * P;
  for (int64_t idx = global_thread(); idx < total; idx += global_stride()) {
    const int64_t p = idx % P, rn = idx / P;
    const int64_t r = rn % K, n = rn / K;
    const int64_t ow = p % d.Wo, oh = p / d.Wo;
    const int64_t j = r % d.kw, i = (r / d.kw) % d.kh, c = r / (d.kw * d.kh);
    const int64_t ih = oh * d.stride_h - d.pad_h + i, iw = ow * d.stride_w - d.pad_w + j;
    float v = 0.0f;
    if (ih >= 0 && ih < d.H && iw >= 0 && iw < d.W) v = x[((n * d.Cin + c) * d.H + ih) * d.W + iw];
    cols[idx] = v;
  }
}

// dx[n][c][ih][iw] = sum over taps (i, j) that reach (ih, iw) from an output pixel of
// dcols[n][(c, i, j)][(oh, ow)], taps in row-major order.
__global__ void k_col2im(Conv2dDims d, const float* dcols, int64_t nb, float* dx) {
  const int64_t K = d.Cin * d.kh * d.kw, P = d.Ho * d.Wo;
  const int64_t total = nb * d.Cin * d.H * d.W;
  for (int64_t idx = global_thread(); idx < total; idx += global_stride()) {
    const int64_t iw = idx % d.W, ih = (idx / d.W) % d.H;
    const int64_t c = (idx / (d.W * d.H)) % d.Cin, n = idx / (d.W * d.H * d.Cin);
    const float* col = dcols + n * K * P + c * d.kh * d.kw * P;
    float acc = 0.0f;
    for (int64_t i = 0; i < d.kh; ++i) {
      const int64_t th = ih + d.pad_h - i;  // = oh * stride_h
      if (th < 0 || th % d.stride_h != 0) continue;
      const int64_t oh = th / d.stride_h;
      if (oh >= d.Ho) continue;
      for (int64_t j = 0; j < d.kw; ++j) {
        const int64_t tw = iw + d.pad_w - j;
        if (tw < 0 || tw % d.stride_w != 0) continue;
        const int64_t ow = tw / d.stride_w;
        if (ow >= d.Wo) continue;
        acc += col[(i * d.kw + j) * P + oh * d.Wo + ow];
      }
    }
    dx[idx] = acc;
  }
}

// ---- reductions -----------------------------------------------------------------------------
// dw[e] (+)= sum over n < nb of part[n][e], in n order, in double.
__global__ void k_sum_partials(const float* part, int64_t nb, int64_t CK, bool accumulate,
                               float* dw) {
  for (int64_t e = global_thread(); e < CK; e += global_stride()) {
    double s = 0.0;
    for (int64_t n = 0; n < nb; ++n) s += double(part[n * CK + e]);
    dw[e] = accumulate ? dw[e] + float(s) : float(s);
  }
}

// db[c] = sum over n, p of dy[n][c][p]: one block per channel, threads stride over (n, p) in a
// fixed pattern, double partials, block_sum in warp order.
__global__ void k_bias_grad(const float* dy, int64_t N, int64_t C, int64_t P, float* db) {
  __shared__ double sh[32];
  for (int64_t c = blockIdx.x; c < C; c += gridDim.x) {
    double acc = 0.0;
    for (int64_t t = threadIdx.x; t < N * P; t += blockDim.x) {
      const int64_t n = t / P, p = t % P;
      acc += double(dy[(n * C + c) * P + p]);
    }
    acc = block_sum(acc, sh);
    if (threadIdx.x == 0) db[c] = float(acc);
  }
}

int64_t samples_per_chunk(const Conv2dDims& d) {
  const int64_t per = d.Cin * d.kh * d.kw * d.Ho * d.Wo;
  int64_t nb = per > 0 ? kScratchFloats / per : d.N;
  if (nb < 1) nb = 1;
  if (nb > d.N) nb = d.N;
  return nb;
}

void im2col(cudaStream_t s, const Conv2dDims& d, const float* x, int64_t nb, float* cols) {
  const int64_t total = nb * d.K() * d.P();
  k_im2col<<<grid_for(total, 256), 256, 0, s>>>(d, x, nb, cols);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

// ---- launchers ------------------------------------------------------------------------------
void conv2d_forward(cudaStream_t s, const Conv2dDims& d, const float* x, const float* w,
                    const float* b, float* y) {
  if (d.N <= 0) return;
  const int64_t K = d.K(), P = d.P();
  const int64_t x_stride = d.Cin * d.H * d.W, y_stride = d.Cout * P;
  if (d.pointwise()) {
    GemmArgs g{d.Cout, P, d.Cin, d.N, w, d.Cin, 0, x, P, x_stride, y, P, y_stride, 1.0f, 0.0f, b};
    sgemm(s, g, false, false);
    return;
  }
  const int64_t nb_max = samples_per_chunk(d);
  Scratch cols(size_t(nb_max * K * P) * sizeof(float));
  for (int64_t n0 = 0; n0 < d.N; n0 += nb_max) {
    const int64_t nb = d.N - n0 < nb_max ? d.N - n0 : nb_max;
    im2col(s, d, x + n0 * x_stride, nb, cols.as<float>());
    GemmArgs g{d.Cout, P, K, nb, w, K, 0, cols.as<float>(), P, K * P,
               y + n0 * y_stride, P, y_stride, 1.0f, 0.0f, b};
    sgemm(s, g, false, false);
  }
}

void conv2d_backward(cudaStream_t s, const Conv2dDims& d, const float* dy, const float* x,
                     const float* w, float* dx, float* dw, float* db, const float* dx_add) {
  const int64_t K = d.K(), P = d.P(), CK = d.Cout * K;
  const int64_t x_stride = d.Cin * d.H * d.W, y_stride = d.Cout * P;
  if (db) {
    const int64_t blocks = d.Cout < 65535 ? d.Cout : 65535;
    k_bias_grad<<<unsigned(blocks), 256, 0, s>>>(dy, d.N, d.Cout, P, db);
    CUDA_CHECK_LAUNCH();
  }
  if (d.N <= 0) {
    if (dw) CUDA_CHECK(cudaMemsetAsync(dw, 0, size_t(CK) * sizeof(float), s));
    return;
  }
  const int64_t nb_max = samples_per_chunk(d);
  if (dw) {
    // The per-sample partials (nb x Cout x K floats) have the same budget as the columns: with
    // many channels on a small map they are the larger of the two (1x1 maps, 4096 channels, 4096
    // samples would otherwise ask for 256 GiB).
    const int64_t nb_dw = std::max<int64_t>(1, std::min<int64_t>(nb_max, CK > 0 ? kScratchFloats / CK : nb_max));
    Scratch part(size_t(nb_dw * CK) * sizeof(float));
    Scratch cols(d.pointwise() ? sizeof(float) : size_t(nb_dw * K * P) * sizeof(float));
    for (int64_t n0 = 0; n0 < d.N; n0 += nb_dw) {
      const int64_t nb = d.N - n0 < nb_dw ? d.N - n0 : nb_dw;
      const float* c = x + n0 * x_stride;  // pointwise: x[n] is [Cin, P] = [K, P]
      if (!d.pointwise()) {
        im2col(s, d, x + n0 * x_stride, nb, cols.as<float>());
        c = cols.as<float>();
      }
      // part[n] [Cout, K] = dy[n] [Cout, P] @ cols[n]^T (cols stored [K, P])
      GemmArgs g{d.Cout, K, P, nb, dy + n0 * y_stride, P, y_stride, c, P,
                 d.pointwise() ? x_stride : K * P, part.as<float>(), K, CK, 1.0f, 0.0f, nullptr};
      sgemm(s, g, false, true);
      k_sum_partials<<<grid_for(CK, 256), 256, 0, s>>>(part.as<float>(), nb, CK, n0 > 0, dw);
      CUDA_CHECK_LAUNCH();
    }
  }
  if (dx) {
    if (d.pointwise()) {
      // dx[n] [Cin, P] = W^T [Cin, Cout] @ dy[n] [Cout, P]
      GemmArgs g{d.Cin, P, d.Cout, d.N, w, d.Cin, 0, dy, P, y_stride, dx, P, x_stride,
                 1.0f, 0.0f, nullptr};
      sgemm(s, g, true, false);
    } else {
      Scratch dcols(size_t(nb_max * K * P) * sizeof(float));
      for (int64_t n0 = 0; n0 < d.N; n0 += nb_max) {
        const int64_t nb = d.N - n0 < nb_max ? d.N - n0 : nb_max;
        GemmArgs g{K, P, d.Cout, nb, w, K, 0, dy + n0 * y_stride, P, y_stride, dcols.as<float>(),
                   P, K * P, 1.0f, 0.0f, nullptr};
        sgemm(s, g, true, false);
        const int64_t total = nb * x_stride;
        k_col2im<<<grid_for(total, 256), 256, 0, s>>>(d, dcols.as<float>(), nb, dx + n0 * x_stride);
        CUDA_CHECK_LAUNCH();
      }
    }
    // The folded gradient: one element-wise add over dx (in place).
    if (dx_add) binary(s, Binary::Add, dx, dx_add, dx, d.N * x_stride);
  }
}

}  // namespace cuda
}  // namespace adashift

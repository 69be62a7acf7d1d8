// CUDA 2-D convolution: im2col / col2im kernels around a shared-memory tiled SGEMM of our own
// (no cuBLAS), with deterministic weight and bias gradients; with conv_allow_tf32, products of 64
// or more rows run on the tensor cores in TF32 instead (k_sgemm_tf32, below the SGEMM).
//
// Samples are processed in chunks of nb (the im2col columns of a chunk, nb x K x P floats, stay
// under conv_scratch_floats()); within a chunk every GEMM is batched over the samples:
//   forward  y[n]     = W [Cout, K] @ cols[n] [K, P] (+ bias per row, in the GEMM epilogue)
//   dW       part[n]  = dy[n] [Cout, P] @ cols[n]^T, then dw = sum over n in order (one thread
//                       per weight element, double sum within a chunk; chunks added to dw
//                       in order, in float)
//   dX       dcols[n] = W^T [K, Cout] @ dy[n] [Cout, P], then col2im as a gather (one thread
//                       per input element, taps in a fixed order: no atomics)
//   db       one block per channel: double sums over (n, p) in a fixed pattern + block_sum
// A 1x1, stride-1, unpadded convolution uses x (or dx) itself as the columns. No float atomics
// anywhere: the same inputs give the same bits on every run on one device.
//
// In TF32 (conv_allow_tf32) the forward and dX products are one GEMM over the chunk's samples
// (the batch folded into the columns) and dW is one GEMM whose depth runs over the chunk's
// samples and pixels (summed in the tensor cores' float accumulators, chunks added in order),
// split over the depth into enough blocks to fill the GPU when its output has few tiles (the
// splits' sums added in order, in double): the bits depend on the device's SM count and the
// kernel variant, and are the same on every run with both fixed. set_conv_f32_kernel(1) runs the float32 forward and dX products folded
// the same way (k_sgemm_foldn), with the per-sample kernel's bits.
#include <mma.h>
#include <algorithm>
#include <atomic>
#include <type_traits>
#include "../ops/conv.h"
#include "../ops/elementwise.h"
#include "common.cuh"

namespace adashift {
namespace cuda {

using namespace detail;

namespace {

// im2col columns per chunk (default 2^25 floats, 128 MiB; tests lower it to make chunks)
std::atomic<int64_t> g_scratch_floats{int64_t(1) << 25};

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

// ---- partial sums --------------------------------------------------------------------------
// dw[e] (+)= sum over n < nb of part[n][e], in n order, in double.
__global__ void k_sum_partials(const float* part, int64_t nb, int64_t CK, bool accumulate,
                               float* dw) {
  for (int64_t e = global_thread(); e < CK; e += global_stride()) {
    double s = 0.0;
    for (int64_t n = 0; n < nb; ++n) s += double(part[n * CK + e]);
    dw[e] = accumulate ? dw[e] + float(s) : float(s);
  }
}

// ---- TF32 tensor-core GEMM (conv_allow_tf32) ------------------------------------------------------
// The convolution's three products with the batch folded into one GEMM, so that a small map (7x7
// outputs at 512 channels) still gives the tensor cores full tiles:
//   FoldN (forward, dX): C_n[M][P] = op(A)[M][K] @ B_n[K][P] for n < nb, computed as one
//     M x (nb P) product whose column j is pixel j % P of sample j / P; A is shared (the weight,
//     TA: stored [K][M]), B_n and C_n are per sample.
//   FoldK (dW): C[M][N] = beta C + sum over n of A_n[M][P] @ B_n[N][P]^T, one product of depth
//     nb P whose k-tiles stay inside one sample (the sum over samples happens in the
//     accumulators, in sample order: no per-sample partials).
// A block of 8 warps computes a 128 x 128 tile of C in k-steps of 32: each thread loads its 16
// elements of the A tile and 16 of the B tile into registers (consecutive threads on consecutive
// addresses, zero outside the matrices; the next step's loads are issued before this step's
// products), rounds them to TF32 and stores them to shared memory in the operand's own storage
// order, which the fragment layouts then name (no transposes). Warp (wm, wn) owns the 64 x 32
// sub-tile at (64 wm, 32 wn): 4 x 2 accumulators of 16 x 16, k-steps of 8. The epilogue stages
// each accumulator through a per-warp 16 x 16 buffer and writes it with the bounds, bias and beta.
// Every product adds in a fixed order: the same inputs give the same bits on every run.
struct TcGemmArgs {
  int64_t M, N, K;  // FoldN: N = P (columns per sample), K the depth; FoldK: N, K = P per sample
  int64_t nb;       // samples
  const float* A;
  int64_t lda, stride_a;  // stride_a: per sample (FoldK); 0 for FoldN (the shared weight)
  const float* B;
  int64_t ldb, stride_b;
  float* C;
  int64_t ldc, stride_c;  // stride_c: per sample (FoldN)
  float beta;             // FoldK: 0 or 1 (a later chunk of samples adds to dw)
  const float* bias;      // per row of C, or null
  // FoldK split over the depth: blockIdx.z takes k-steps [z * per, (z + 1) * per) of the
  // product and writes its sums to C + z * split_stride (launch_tf32 adds them up).
  int64_t split_stride = 0;
};

constexpr int kTcBM = 128, kTcBN = 128;
constexpr int kTcMinRows = 64;  // below this, the SIMT tiles waste less

// Operands in shared memory, aligned as the fragment loads require (256 bits): a [128][BK] tile
// has rows of BK + 4 floats, a [BK][128] tile rows of 136 (the padding spreads the fragment
// loads' rows over the banks: in the TF32 fragment layout lane (g, t) = (lane / 4, lane % 4)
// reads row t, column g, i.e. bank (t * stride + g) mod 32, which for a stride of 132 put lanes
// (t, g) and (t + 1, g - 4) on one bank; 136 gives 8t + g, all 32 apart); each buffer holds the
// larger layout (4608 floats at BK 32 either way).
template <int BK>
struct alignas(32) TcSmem {
  static constexpr int kLdShort = BK + 4, kLdLong = kTcBM + 8;
  static constexpr int kFloats =
      kTcBM * kLdShort > BK * kLdLong ? kTcBM * kLdShort : BK * kLdLong;
  float a[kFloats];
  float b[kFloats];
  float stage[8][16 * 16];  // per warp, the epilogue's 16 x 16 buffer
};

// Global -> register loads of the folded GEMMs' k-tiles, shared by the TF32 and float32 kernels:
// a BM x BK tile of op(A) and a BK x BN tile of B per step, kPer elements of each per thread,
// consecutive threads on consecutive addresses, zero outside the matrices. A thread's place is
// fixed for the whole product: in a [rows][BK] tile (A not TA: [M][K]; B for FoldK: [N][P]) k is
// s_k and its rows s_r + kRowStep t; in a [BK][128] tile (A TA: [K][M]; B for FoldN: [K][P]) its
// row index is l_r and k = l_k + 2 t. FoldN: the thread's column of B (fixed over k) is pixel
// j % P of sample j / P.
template <bool TA, bool FOLDK, int BK>
struct FoldLoader {
  static constexpr int kRowStep = kThreads / BK, kPer = kTcBM * BK / kThreads;
  static_assert(kThreads / kTcBM == 2, "two k per pass in a [BK][128] tile");
  static_assert(!(TA && FOLDK), "FoldK reads A as stored");
  int s_k, s_r, l_r, l_k;
  int64_t ktiles_per, ktiles;
  const float* a_first;  // A's element for this thread at k-tile 0
  bool a_in;             // TA: the thread's row is inside M
  int a_rows;            // not TA: how many of its rows are inside M
  int64_t a_step;
  const float* b_first;  // null: the thread's B column (FoldN) is outside
  int b_rows;
  int64_t b_step;
  float ra[kPer], rb[kPer];

  // How many of a thread's kPer elements lie inside: those of index < count.
  __device__ __forceinline__ static int count(int64_t first, int64_t limit, int step) {
    if (first >= limit) return 0;
    const int64_t c = (limit - first + step - 1) / step;
    return c < kPer ? int(c) : kPer;
  }
  __device__ __forceinline__ void begin(const TcGemmArgs& g, int tid, int64_t i0, int64_t j0) {
    s_k = tid % BK;
    s_r = tid / BK;
    l_r = tid % kTcBM;
    l_k = tid / kTcBM;
    ktiles_per = (g.K + BK - 1) / BK;
    ktiles = FOLDK ? g.nb * ktiles_per : ktiles_per;
    a_first = TA ? g.A + l_k * g.lda + (i0 + l_r) : g.A + (i0 + s_r) * g.lda + s_k;
    a_in = TA ? i0 + l_r < g.M : true;
    a_rows = TA ? kPer : count(i0 + s_r, g.M, kRowStep);
    a_step = TA ? 2 * g.lda : kRowStep * g.lda;
    b_first = nullptr;
    b_rows = kPer;
    if (FOLDK) {
      b_first = g.B + (j0 + s_r) * g.ldb + s_k;
      b_rows = count(j0 + s_r, g.N, kRowStep);
    } else {
      const int64_t j = j0 + l_r;
      if (j < g.nb * g.N) b_first = g.B + (j / g.N) * g.stride_b + (j % g.N) + l_k * g.ldb;
    }
    b_step = FOLDK ? kRowStep * g.ldb : 2 * g.ldb;
  }
  // Loads k-tile kt's elements into ra / rb.
  __device__ __forceinline__ void load(const TcGemmArgs& g, int64_t kt) {
    const int64_t n = FOLDK ? kt / ktiles_per : 0;
    const int64_t k0 = (FOLDK ? kt % ktiles_per : kt) * BK;
    // Elements inside along k: a [rows][BK] tile has one k per thread, a [BK][128] tile kPer.
    const int k_short = k0 + s_k < g.K ? kPer : 0;
    const int k_long = count(k0 + l_k, g.K, 2);
    const int na = a_in ? (TA ? k_long : (k_short ? a_rows : 0)) : 0;
    const float* pa = a_first + n * g.stride_a + (TA ? k0 * g.lda : k0);
#pragma unroll
    for (int t = 0; t < kPer; ++t) {
      ra[t] = t < na ? *pa : 0.0f;
      pa += a_step;
    }
    const int nbv = FOLDK ? (k_short ? b_rows : 0) : (b_first ? k_long : 0);
    const float* pb = FOLDK ? b_first + n * g.stride_b + k0 : b_first + k0 * g.ldb;
#pragma unroll
    for (int t = 0; t < kPer; ++t) {
      rb[t] = t < nbv ? *pb : 0.0f;
      pb += b_step;
    }
  }
  // Shared-memory offsets of element t of the A and B tiles. As stored: A [m][k] (not TA) or
  // [k][m] (TA), B [n][k] (FoldK) or [k][n] (FoldN). K-major: A [k][m], B [k][n] always.
  __device__ __forceinline__ int a_at(int t, int ld_short, int ld_long, bool k_major) const {
    if (TA) return (l_k + 2 * t) * ld_long + l_r;
    return k_major ? s_k * ld_long + s_r + kRowStep * t : (s_r + kRowStep * t) * ld_short + s_k;
  }
  __device__ __forceinline__ int b_at(int t, int ld_short, int ld_long, bool k_major) const {
    if (!FOLDK) return (l_k + 2 * t) * ld_long + l_r;
    return k_major ? s_k * ld_long + s_r + kRowStep * t : (s_r + kRowStep * t) * ld_short + s_k;
  }
};

// The k-step (BK) and the blocks per SM the registers are capped for (MINB) are template
// parameters: the variants below are timed against each other on a GPU (cuda_check).
template <bool TA, bool FOLDK, int BK, int MINB>
__global__ void __launch_bounds__(kThreads, MINB) k_sgemm_tf32(TcGemmArgs g) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  // Not launched below compute capability 8.0 (tf32_usable() says no).
#else
  namespace wmma = nvcuda::wmma;
  using LayoutA = typename std::conditional<TA, wmma::col_major, wmma::row_major>::type;
  using LayoutB = typename std::conditional<FOLDK, wmma::col_major, wmma::row_major>::type;
  using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, LayoutA>;
  using FragB = wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, LayoutB>;
  using FragC = wmma::fragment<wmma::accumulator, 16, 16, 8, float>;
  __shared__ TcSmem<BK> sm;
  constexpr int kTcBK = BK, kTcLdShort = TcSmem<BK>::kLdShort, kTcLdLong = TcSmem<BK>::kLdLong;
  using Loader = FoldLoader<TA, FOLDK, BK>;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int wm = warp >> 2, wn = warp & 3;  // 2 x 4 warps
  const int64_t cols = FOLDK ? g.N : g.nb * g.N;  // columns of C
  const int64_t tiles_m = (g.M + kTcBM - 1) / kTcBM, tiles_n = (cols + kTcBN - 1) / kTcBN;
  for (int64_t tm = blockIdx.y; tm < tiles_m; tm += gridDim.y) {
    for (int64_t tn = blockIdx.x; tn < tiles_n; tn += gridDim.x) {
      const int64_t i0 = tm * kTcBM, j0 = tn * kTcBN;
      Loader ld;
      ld.begin(g, tid, i0, j0);
      // This block's k-steps: all of them, or its split's share (which may be empty: its sums
      // are then zeros).
      const int64_t per = (ld.ktiles + gridDim.z - 1) / gridDim.z;
      const int64_t kt_begin = int64_t(blockIdx.z) * per;
      const int64_t kt_end = kt_begin + per < ld.ktiles ? kt_begin + per : ld.ktiles;
      float* const C = g.C + int64_t(blockIdx.z) * g.split_stride;
      auto load = [&](int64_t kt) { ld.load(g, kt); };
      // Stores the loaded elements, rounded to TF32, in the operands' storage order.
      auto store = [&]() {
#pragma unroll
        for (int t = 0; t < Loader::kPer; ++t) {
          sm.a[ld.a_at(t, kTcLdShort, kTcLdLong, false)] = wmma::__float_to_tf32(ld.ra[t]);
          sm.b[ld.b_at(t, kTcLdShort, kTcLdLong, false)] = wmma::__float_to_tf32(ld.rb[t]);
        }
      };
      FragC acc[4][2];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
      if (kt_begin < kt_end) {
        load(kt_begin);
        store();
      }
      __syncthreads();
      for (int64_t kt = kt_begin; kt < kt_end; ++kt) {
        const bool more = kt + 1 < kt_end;
        if (more) load(kt + 1);  // in flight while the tensor cores work on this step
#pragma unroll
        for (int k8 = 0; k8 < kTcBK; k8 += 8) {
          FragB b[2];
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            const int n = wn * 32 + 16 * j;
            const float* p = FOLDK ? sm.b + n * kTcLdShort + k8 : sm.b + k8 * kTcLdLong + n;
            wmma::load_matrix_sync(b[j], p, FOLDK ? kTcLdShort : kTcLdLong);
          }
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const int m = wm * 64 + 16 * i;
            FragA a;
            const float* p = TA ? sm.a + k8 * kTcLdLong + m : sm.a + m * kTcLdShort + k8;
            wmma::load_matrix_sync(a, p, TA ? kTcLdLong : kTcLdShort);
#pragma unroll
            for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], a, b[j], acc[i][j]);
          }
        }
        __syncthreads();
        if (more) {
          store();
          __syncthreads();
        }
      }
      // Epilogue: each accumulator through the warp's buffer; lane l writes entries l + 32 t,
      // which share the column l % 16 (rows l / 16 + 2 t): one column lookup per lane and j.
      float* stage = sm.stage[warp];
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const int64_t col = j0 + wn * 32 + 16 * j + (lane & 15);
        float* cbase = nullptr;
        if (col < cols) cbase = FOLDK ? C + col : C + (col / g.N) * g.stride_c + col % g.N;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          wmma::store_matrix_sync(stage, acc[i][j], 16, wmma::mem_row_major);
          __syncwarp();
          const int64_t row0 = i0 + wm * 64 + 16 * i + (lane >> 4);
#pragma unroll
          for (int t = 0; t < 8; ++t) {
            const int64_t row = row0 + 2 * t;
            if (!cbase || row >= g.M) continue;
            float* cp = cbase + row * g.ldc;
            float v = stage[lane + 32 * t];
            if (g.beta != 0.0f) v += g.beta * *cp;
            if (g.bias) v += g.bias[row];
            *cp = v;
          }
          __syncwarp();  // the buffer is read before the next accumulator overwrites it
        }
      }
      __syncthreads();  // the next tile's first store must not overwrite operands still in use
    }
  }
#endif
}

// ---- float32 folded GEMM (FoldN) -------------------------------------------------------------
// The forward's and dX's products as one M x (nb P) GEMM on the FMA units, loaded like the TF32
// kernel's (FoldLoader, k-steps of 16, the next step's loads in registers during this one's
// products) and stored k-major ([k][m] and [k][n], 16-byte aligned rows). Thread (tx, ty) of
// 16 x 16 owns rows ty*4 + {0..3} and 64 + ty*4 + {0..3} and the same columns by tx, so that its
// operands are two float4 reads each per k and a warp's reads fall in distinct banks. Each
// output is one FMA chain over k in increasing order with the same zero padding as k_sgemm: the
// bits of the per-sample kernel. For timing against it on a GPU (set_conv_f32_kernel).
struct alignas(16) F32Smem {
  float a[16][kTcBM + 4];
  float b[16][kTcBN + 4];
};

template <bool TA>
__global__ void __launch_bounds__(kThreads, 2) k_sgemm_foldn(TcGemmArgs g) {
  using Loader = FoldLoader<TA, false, 16>;
  constexpr int kLd = kTcBM + 4;
  __shared__ F32Smem sm;
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int64_t cols = g.nb * g.N;
  const int64_t tiles_m = (g.M + kTcBM - 1) / kTcBM, tiles_n = (cols + kTcBN - 1) / kTcBN;
  float* const sa = &sm.a[0][0];
  float* const sb = &sm.b[0][0];
  for (int64_t tm = blockIdx.y; tm < tiles_m; tm += gridDim.y) {
    for (int64_t tn = blockIdx.x; tn < tiles_n; tn += gridDim.x) {
      const int64_t i0 = tm * kTcBM, j0 = tn * kTcBN;
      Loader ld;
      ld.begin(g, tid, i0, j0);
      float acc[8][8];
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = 0.0f;
      auto store = [&]() {
#pragma unroll
        for (int t = 0; t < Loader::kPer; ++t) {
          sa[ld.a_at(t, kLd, kLd, true)] = ld.ra[t];
          sb[ld.b_at(t, kLd, kLd, true)] = ld.rb[t];
        }
      };
      ld.load(g, 0);
      store();
      __syncthreads();
      for (int64_t kt = 0; kt < ld.ktiles; ++kt) {
        const bool more = kt + 1 < ld.ktiles;
        if (more) ld.load(g, kt + 1);
#pragma unroll
        for (int kk = 0; kk < 16; ++kk) {
          const float4 a0 = *reinterpret_cast<const float4*>(&sm.a[kk][ty * 4]);
          const float4 a1 = *reinterpret_cast<const float4*>(&sm.a[kk][64 + ty * 4]);
          const float4 b0 = *reinterpret_cast<const float4*>(&sm.b[kk][tx * 4]);
          const float4 b1 = *reinterpret_cast<const float4*>(&sm.b[kk][64 + tx * 4]);
          const float a[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
          const float b[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
          for (int i = 0; i < 8; ++i)
#pragma unroll
            for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        __syncthreads();
        if (more) {
          store();
          __syncthreads();
        }
      }
      // Epilogue: column j of C is pixel j % P of sample j / P; as k_sgemm, acc + bias (+0).
      int64_t coff[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int64_t col = j0 + (j < 4 ? tx * 4 + j : 64 + tx * 4 + j - 4);
        coff[j] = col < cols ? (col / g.N) * g.stride_c + col % g.N : -1;
      }
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const int64_t row = i0 + (i < 4 ? ty * 4 + i : 64 + ty * 4 + i - 4);
        if (row >= g.M) continue;
        const float add = g.bias ? g.bias[row] : 0.0f;
#pragma unroll
        for (int j = 0; j < 8; ++j)
          if (coff[j] >= 0) g.C[coff[j] + row * g.ldc] = acc[i][j] + add;
      }
      __syncthreads();  // the next tile's first store must not overwrite operands in use
    }
  }
}

// The float32 convolution GEMM for products of >= 64 rows (set_conv_f32_kernel): 0, the default,
// is k_sgemm over the samples (blockIdx.z); 1 is k_sgemm_foldn (same bits).
std::atomic<int> g_f32_kernel{0};

bool f32_folded(int64_t M) { return g_f32_kernel.load() == 1 && M >= kTcMinRows; }

// The folded kernels' grid: column tiles (x) and row tiles (y) of 128, capped (the kernels loop
// over the rest), and z splits of the depth.
dim3 fold_grid(int64_t M, int64_t cols, int64_t z) {
  const int64_t tiles_m = (M + kTcBM - 1) / kTcBM, tiles_n = (cols + kTcBN - 1) / kTcBN;
  return dim3(unsigned(tiles_n < kMaxGridX ? tiles_n : kMaxGridX),
              unsigned(tiles_m < kMaxGridYZ ? tiles_m : kMaxGridYZ), unsigned(z));
}

template <bool TA>
void launch_foldn(cudaStream_t s, const TcGemmArgs& g) {
  k_sgemm_foldn<TA><<<fold_grid(g.M, g.nb * g.N, 1), kThreads, 0, s>>>(g);
  CUDA_CHECK_LAUNCH();
}

// TF32 products run where the setting allows them, the device has TF32 tensor cores (8.0+), and
// the product has enough rows for the 128-row tiles.
bool tf32_usable(int64_t M) {
  return conv_allow_tf32() && M >= kTcMinRows && cuda_current_cc_major() >= 8;
}

// The kernel variants (set_conv_tf32_variant): 0 is the default.
//   0: k-steps of 32, one block of 8 warps per SM (ptxas: 255 registers)
//   1: k-steps of 16, one block per SM (about 220 registers)
//   2: k-steps of 16, registers capped for two blocks per SM (128: some spilled)
constexpr int kTf32Variants = 3;
std::atomic<int> g_tf32_variant{0};

// Splits of a FoldK product over its depth: a weight gradient has few output tiles (64 x 147
// for a 7x7 stem: two) and a depth of every sample's pixels (18 x 12544 per chunk), which one
// block per tile would walk alone. Enough splits for about two blocks per SM, each of at least
// 4 k-steps of 32, their sums within the scratch budget.
int64_t foldk_splits(const TcGemmArgs& g, int64_t tiles) {
  const int64_t ksteps = g.nb * ((g.K + 31) / 32);
  int64_t want = (2 * int64_t(cuda_current_sm_count()) + tiles - 1) / tiles;
  want = std::min<int64_t>(want, ksteps / 4);
  want = std::min<int64_t>(want, g_scratch_floats.load() / std::max<int64_t>(1, g.M * g.N));
  return std::max<int64_t>(1, std::min<int64_t>(want, kMaxGridYZ));
}

template <bool TA, bool FOLDK>
void launch_tf32(cudaStream_t s, const TcGemmArgs& g) {
  const int64_t cols = FOLDK ? g.N : g.nb * g.N;
  const int64_t tiles = ((g.M + kTcBM - 1) / kTcBM) * ((cols + kTcBN - 1) / kTcBN);
  const int64_t splits = FOLDK ? foldk_splits(g, tiles) : 1;
  const dim3 grid = fold_grid(g.M, cols, splits);
  // Split: each split's sums to scratch, then added in split order (in double) into C, which
  // FoldK's callers lay out densely (ldc == N).
  TcGemmArgs k = g;
  Scratch part(splits > 1 ? size_t(splits * g.M * g.N) * sizeof(float) : sizeof(float));
  if (splits > 1) {
    AS_CHECK(g.ldc == g.N && !g.bias, Arg, "internal: a split TF32 product needs a dense C and no bias");
    k.C = part.as<float>();
    k.beta = 0.0f;
    k.split_stride = g.M * g.N;
  }
  switch (g_tf32_variant.load()) {
    case 1: k_sgemm_tf32<TA, FOLDK, 16, 1><<<grid, kThreads, 0, s>>>(k); break;
    case 2: k_sgemm_tf32<TA, FOLDK, 16, 2><<<grid, kThreads, 0, s>>>(k); break;
    default: k_sgemm_tf32<TA, FOLDK, 32, 1><<<grid, kThreads, 0, s>>>(k); break;
  }
  CUDA_CHECK_LAUNCH();
  if (splits > 1) {
    k_sum_partials<<<grid_for(g.M * g.N, 256), 256, 0, s>>>(part.as<float>(), splits, g.M * g.N,
                                                            g.beta != 0.0f, g.C);
    CUDA_CHECK_LAUNCH();
  }
}

// C_n = op(A) B_n for the samples n < nb (FoldN: the forward and dX products): on the tensor cores
// in TF32 where allowed, else the folded float32 kernel where chosen, else the per-sample SGEMM.
template <bool TA>
void gemm_foldn(cudaStream_t s, const TcGemmArgs& t) {
  if (tf32_usable(t.M)) {
    launch_tf32<TA, false>(s, t);
  } else if (f32_folded(t.M)) {
    launch_foldn<TA>(s, t);
  } else {
    const GemmArgs g{t.M, t.N, t.K, t.nb, t.A, t.lda, t.stride_a, t.B, t.ldb, t.stride_b,
                     t.C, t.ldc, t.stride_c, 1.0f, 0.0f, t.bias};
    sgemm(s, g, TA, false);
  }
}

// ---- im2col / col2im by rows -----------------------------------------------------------------
// The flat kernels below decode every element's place with 64-bit divisions (five for im2col,
// and two per tap for col2im's stride tests): hundreds of instructions per float moved. These
// walk rows instead, with 32-bit indices (the launchers check that they fit): a row (a tap of
// one sample's columns; one image row of dx) is decoded once per thread, and a thread keeps the
// same place within rows from row to row, stepping through a long row by a fixed increment.
// A block of 256 threads takes R = 256 / L rows at once, L = min(row length, 256) threads each.
struct RowWalk {
  int L, R, q, first;  // lanes per row, rows at once, this thread's row offset and first place
  __device__ __forceinline__ RowWalk(int len) {
    L = len < int(blockDim.x) ? len : int(blockDim.x);
    R = int(blockDim.x) / L;
    q = int(threadIdx.x) / L;
    first = int(threadIdx.x) % L;
  }
};

// cols[n][r][p] = x[n][c][oh*sh - ph + i][ow*sw - pw + j] (0 outside), r = (c, i, j), p = (oh, ow).
__global__ void k_im2col_rows(Conv2dDims d, const float* x, int rows, float* cols) {
  const int P = int(d.Ho * d.Wo), Wo = int(d.Wo), khw = int(d.kh * d.kw), K = int(d.Cin) * khw;
  const int kw = int(d.kw), H = int(d.H), W = int(d.W), sh = int(d.stride_h), sw = int(d.stride_w);
  const int ph = int(d.pad_h), pw = int(d.pad_w);
  const RowWalk rw(P);
  if (rw.q >= rw.R) return;  // no barriers below
  const int oh0 = rw.first / Wo, ow0 = rw.first % Wo, dh = rw.L / Wo, dw = rw.L % Wo;
  for (int row = int(blockIdx.x) * rw.R + rw.q; row < rows; row += int(gridDim.x) * rw.R) {
    const int n = row / K, r = row - n * K, c = r / khw, ij = r - c * khw, i = ij / kw;
    const int j = ij - i * kw;
    const float* xp = x + (int64_t(n) * d.Cin + c) * int64_t(H) * W;
    float* out = cols + int64_t(row) * P;
    int oh = oh0, ow = ow0;
    for (int p = rw.first; p < P; p += rw.L) {
      const int ih = oh * sh - ph + i, iw = ow * sw - pw + j;
      out[p] = (ih >= 0 && ih < H && iw >= 0 && iw < W) ? xp[ih * W + iw] : 0.0f;
      ow += dw;
      oh += dh;
      if (ow >= Wo) {
        ow -= Wo;
        ++oh;
      }
    }
  }
}

// dx[n][c][ih][iw] = sum over the taps (i, j) that reach (ih, iw) from an output pixel of
// dcols[n][(c, i, j)][(oh, ow)], i then j increasing (k_col2im's order: the same bits). A tap i
// reaches row ih when ih + ph - i is a multiple of sh: i = (ih + ph) % sh, then every sh-th.
template <bool STRIDE1>
__global__ void k_col2im_rows(Conv2dDims d, const float* dcols, int rows, float* dx) {
  const int H = int(d.H), W = int(d.W), C = int(d.Cin), kh = int(d.kh), kw = int(d.kw);
  const int Ho = int(d.Ho), Wo = int(d.Wo), sh = int(d.stride_h), sw = int(d.stride_w);
  const int ph = int(d.pad_h), pw = int(d.pad_w);
  const int64_t P = int64_t(Ho) * Wo, K = int64_t(C) * kh * kw;
  const RowWalk rw(W);
  if (rw.q >= rw.R) return;
  for (int row = int(blockIdx.x) * rw.R + rw.q; row < rows; row += int(gridDim.x) * rw.R) {
    const int nc = row / H, ih = row - nc * H, n = nc / C, c = nc - n * C;
    const float* col = dcols + int64_t(n) * K * P + int64_t(c) * kh * kw * P;
    float* out = dx + int64_t(row) * W;
    const int th0 = ih + ph;  // = oh * sh + i
    const int i_first = STRIDE1 ? 0 : th0 % sh;
    for (int iw = rw.first; iw < W; iw += rw.L) {
      const int tw0 = iw + pw;  // = ow * sw + j
      const int j_first = STRIDE1 ? 0 : tw0 % sw;
      float acc = 0.0f;
      for (int i = i_first; i < kh; i += STRIDE1 ? 1 : sh) {
        const int th = th0 - i;
        if (th < 0) break;  // i only grows
        const int oh = STRIDE1 ? th : th / sh;
        if (oh >= Ho) continue;
        for (int j = j_first; j < kw; j += STRIDE1 ? 1 : sw) {
          const int tw = tw0 - j;
          if (tw < 0) break;
          const int ow = STRIDE1 ? tw : tw / sw;
          if (ow >= Wo) continue;
          acc += col[(int64_t(i) * kw + j) * P + int64_t(oh) * Wo + ow];
        }
      }
      out[iw] = acc;
    }
  }
}

// Whether the row kernels' 32-bit indices hold: rows, row lengths, and every in-row offset.
bool rows_fit(const Conv2dDims& d, int64_t nb) {
  const int64_t lim = int64_t(1) << 30;
  return nb * d.K() < lim && nb * d.Cin * d.H < lim && d.P() < lim && d.H * d.W < lim &&
         d.Ho * d.stride_h + d.kh < lim && d.Wo * d.stride_w + d.kw < lim && d.K() * d.P() < lim * 2;
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
  int64_t nb = per > 0 ? g_scratch_floats.load() / per : d.N;
  if (nb < 1) nb = 1;
  if (nb > d.N) nb = d.N;
  return nb;
}

void im2col(cudaStream_t s, const Conv2dDims& d, const float* x, int64_t nb, float* cols) {
  const int64_t total = nb * d.K() * d.P();
  if (rows_fit(d, nb)) {
    const int64_t rows = nb * d.K();
    const int64_t per_block = 256 / std::min<int64_t>(d.P(), 256);  // rows at once
    k_im2col_rows<<<grid_for_items((rows + per_block - 1) / per_block, 256), 256, 0, s>>>(
        d, x, int(rows), cols);
  } else {
    k_im2col<<<grid_for(total, 256), 256, 0, s>>>(d, x, nb, cols);
  }
  CUDA_CHECK_LAUNCH();
}

void col2im(cudaStream_t s, const Conv2dDims& d, const float* dcols, int64_t nb, float* dx) {
  if (rows_fit(d, nb)) {
    const int64_t rows = nb * d.Cin * d.H;
    const int64_t per_block = 256 / std::min<int64_t>(d.W, 256);
    const int grid = grid_for_items((rows + per_block - 1) / per_block, 256);
    if (d.stride_h == 1 && d.stride_w == 1)
      k_col2im_rows<true><<<grid, 256, 0, s>>>(d, dcols, int(rows), dx);
    else
      k_col2im_rows<false><<<grid, 256, 0, s>>>(d, dcols, int(rows), dx);
  } else {
    const int64_t total = nb * d.Cin * d.H * d.W;
    k_col2im<<<grid_for(total, 256), 256, 0, s>>>(d, dcols, nb, dx);
  }
  CUDA_CHECK_LAUNCH();
}

}  // namespace

int64_t conv_scratch_floats() { return g_scratch_floats.load(); }
int conv_tf32_variants() { return kTf32Variants; }
int conv_f32_kernel() { return g_f32_kernel.load(); }
void set_conv_f32_kernel(int k) {
  AS_CHECK(k == 0 || k == 1, Arg, "float32 convolution kernel ", k, " out of range (0 or 1)");
  g_f32_kernel.store(k);
}
void set_conv_tf32_variant(int v) {
  AS_CHECK(v >= 0 && v < kTf32Variants, Arg, "TF32 convolution variant ", v, " out of range");
  g_tf32_variant.store(v);
}
void set_conv_scratch_floats(int64_t n) { g_scratch_floats.store(n > 0 ? n : 1); }

// ---- launchers ------------------------------------------------------------------------------
void conv2d_forward(cudaStream_t s, const Conv2dDims& d, const float* x, const float* w,
                    const float* b, float* y) {
  if (d.N <= 0) return;
  const int64_t K = d.K(), P = d.P();
  const int64_t x_stride = d.Cin * d.H * d.W, y_stride = d.Cout * P;
  if (d.pointwise()) {
    gemm_foldn<false>(s, TcGemmArgs{d.Cout, P, d.Cin, d.N, w, d.Cin, 0, x, P, x_stride, y, P,
                                    y_stride, 0.0f, b});
    return;
  }
  const int64_t nb_max = samples_per_chunk(d);
  Scratch cols(size_t(nb_max * K * P) * sizeof(float));
  for (int64_t n0 = 0; n0 < d.N; n0 += nb_max) {
    const int64_t nb = d.N - n0 < nb_max ? d.N - n0 : nb_max;
    im2col(s, d, x + n0 * x_stride, nb, cols.as<float>());
    gemm_foldn<false>(s, TcGemmArgs{d.Cout, P, K, nb, w, K, 0, cols.as<float>(), P, K * P,
                                    y + n0 * y_stride, P, y_stride, 0.0f, b});
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
    // TF32: one product over a chunk's samples and pixels (FoldK), no partials; a 1x1 stride-1
    // convolution reads x itself, so its whole batch is one product. Float32: per-sample
    // partials, whose budget (nb x Cout x K floats) is the columns': with many channels on a
    // small map they are the larger of the two (1x1 maps, 4096 channels, 4096 samples would
    // otherwise ask for 256 GiB).
    const bool tf32 = tf32_usable(d.Cout);
    const int64_t nb_dw =
        tf32 ? (d.pointwise() ? d.N : nb_max)
             : std::max<int64_t>(1, std::min<int64_t>(nb_max, CK > 0 ? g_scratch_floats.load() / CK : nb_max));
    Scratch part(tf32 ? sizeof(float) : size_t(nb_dw * CK) * sizeof(float));
    Scratch cols(d.pointwise() ? sizeof(float) : size_t(nb_dw * K * P) * sizeof(float));
    for (int64_t n0 = 0; n0 < d.N; n0 += nb_dw) {
      const int64_t nb = d.N - n0 < nb_dw ? d.N - n0 : nb_dw;
      const float* c = x + n0 * x_stride;  // pointwise: x[n] is [Cin, P] = [K, P]
      if (!d.pointwise()) {
        im2col(s, d, x + n0 * x_stride, nb, cols.as<float>());
        c = cols.as<float>();
      }
      const int64_t c_stride = d.pointwise() ? x_stride : K * P;
      if (tf32) {
        launch_tf32<false, true>(s, TcGemmArgs{d.Cout, K, P, nb, dy + n0 * y_stride, P, y_stride,
                                               c, P, c_stride, dw, K, 0, n0 > 0 ? 1.0f : 0.0f,
                                               nullptr});
        continue;
      }
      // part[n] [Cout, K] = dy[n] [Cout, P] @ cols[n]^T (cols stored [K, P])
      GemmArgs g{d.Cout, K, P, nb, dy + n0 * y_stride, P, y_stride, c, P, c_stride,
                 part.as<float>(), K, CK, 1.0f, 0.0f, nullptr};
      sgemm(s, g, false, true);
      k_sum_partials<<<grid_for(CK, 256), 256, 0, s>>>(part.as<float>(), nb, CK, n0 > 0, dw);
      CUDA_CHECK_LAUNCH();
    }
  }
  if (dx) {
    if (d.pointwise()) {
      // dx[n] [Cin, P] = W^T [Cin, Cout] @ dy[n] [Cout, P]
      gemm_foldn<true>(s, TcGemmArgs{d.Cin, P, d.Cout, d.N, w, d.Cin, 0, dy, P, y_stride, dx, P,
                                     x_stride, 0.0f, nullptr});
    } else {
      Scratch dcols(size_t(nb_max * K * P) * sizeof(float));
      for (int64_t n0 = 0; n0 < d.N; n0 += nb_max) {
        const int64_t nb = d.N - n0 < nb_max ? d.N - n0 : nb_max;
        // dcols[n] [K, P] = W^T [K, Cout] @ dy[n] [Cout, P]
        gemm_foldn<true>(s, TcGemmArgs{K, P, d.Cout, nb, w, K, 0, dy + n0 * y_stride, P, y_stride,
                                       dcols.as<float>(), P, K * P, 0.0f, nullptr});
        col2im(s, d, dcols.as<float>(), nb, dx + n0 * x_stride);
      }
    }
    // The folded gradient: one element-wise add over dx (in place).
    if (dx_add) binary(s, Binary::Add, dx, dx_add, dx, d.N * x_stride);
  }
}

}  // namespace cuda
}  // namespace adashift

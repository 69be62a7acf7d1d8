// CPU SGEMM: the package's own cache-blocked, packed kernel and the BLAS path (gemm.h).
//
// Own kernel (the BLIS loop nest):
//   for jc over N in steps of NC:           a panel of B columns
//     for pc over K in steps of KC:         a depth block (the summation block)
//       pack B[pc:pc+kc, jc:jc+nc] into NR-wide slivers, k-major   (shared, parallel)
//       for each MC block of rows of C, for a range of B slivers:  (tasks over blocks of C)
//         pack A[ic:ic+mc, pc:pc+kc] into MR-tall slivers, k-major (thread-local)
//         for each B sliver, for each A sliver: MR x NR register tile over kc, then
//         C_tile = alpha * tile + beta * C_tile (first depth block) or C_tile += alpha * tile.
// Every element of C is the sum over depth blocks, in order, of one kc-long chain of FMAs in
// k order: the bits do not depend on how C is split among threads, nor on the thread count.
// Packing pads partial slivers with zeros, so the micro-kernel always runs a full tile.
//
// The register tile is MR x NR floats of accumulators. The micro-kernel is plain C++ over
// fixed-size arrays (compiled per instruction set by AS_VECTORIZE: the j loop becomes NR/16
// zmm or NR/8 ymm registers); the tile is picked at run time for the CPU so that the
// accumulators fit the register file: 8 x 32 with AVX-512 (16 of 32 zmm), 6 x 16 with AVX2
// (12 of 16 ymm), 4 x 16 otherwise.
//
// The same driver serves the convolution's implicit operands: B packed by a GemmBSource (image
// windows, never materialised as an im2col matrix) and A packed once for many products
// (GemmPackedA). Two more register-tile kernels serve convolutions: gemm_pixel_rows (output
// pixel runs against channel slivers, the input read in place) and gemm_rows_batched (weight
// gradients: tap rows read in place, summed over samples in registers).
#include "gemm.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "../common.h"
#include "../threadpool.h"
#include "loops.h"

#ifdef ADASHIFT_WITH_BLAS
// The Fortran interface (every argument by pointer; the trailing hidden lengths of the two
// character arguments are passed for Fortran-compiled BLAS and ignored by OpenBLAS's C one).
extern "C" void sgemm_(const char* transa, const char* transb, const int* m, const int* n,
                       const int* k, const float* alpha, const float* a, const int* lda,
                       const float* b, const int* ldb, const float* beta, float* c,
                       const int* ldc, size_t len_transa, size_t len_transb);
#ifdef ADASHIFT_BLAS_OPENBLAS
extern "C" void openblas_set_num_threads(int n);
#endif
#endif

namespace adashift {
namespace cpu {

namespace {

constexpr int64_t KC = kGemmKC;
constexpr int64_t kNC = 4096;    // columns of B per packed panel (rounded to NR)
constexpr int64_t kMCRows = 128;  // rows of A per packed block (rounded down to MR)
// Below this many multiply-adds a product runs on one thread (the pool's wake-up costs more).
constexpr double kParallelMacs = 1 << 17;

// ---- aligned, growing, reused buffers ------------------------------------------------------
struct Buffer {
  std::vector<float> v;
  float* get(size_t n) {
    if (v.size() < n + 16) v.resize(n + 16);
    uintptr_t p = reinterpret_cast<uintptr_t>(v.data());
    return reinterpret_cast<float*>((p + 63) & ~uintptr_t(63));  // 64-byte aligned
  }
};
Buffer& a_buffer() {
  thread_local Buffer b;
  return b;
}
Buffer& b_buffer() {
  thread_local Buffer b;
  return b;
}

// ---- packing ----------------------------------------------------------------------------------
// Both packers transpose for the common layouts (A rows into k-major slivers; B^T rows into
// k-major slivers) with loops::transpose (8 x 8 blocks through registers): for the small
// products of the attention context, strided scalar stores had cost as much as the multiply-adds.
// op(A)[i][k] for rows [i0, i0 + mc), depth [p0, p0 + kc) into slivers out[s][k][MR].
void pack_a(bool trans, const float* A, int64_t lda, int64_t i0, int64_t mc, int64_t p0,
            int64_t kc, int MR, float* out) {
  for (int64_t s = 0; s * MR < mc; ++s) {
    float* o = out + s * kc * MR;
    const int64_t r0 = i0 + s * MR;
    const int mr = int(std::min<int64_t>(MR, i0 + mc - r0));
    if (!trans) {
      loops::transpose(A + r0 * lda + p0, lda, mr, kc, o, MR);
    } else if (mr == MR) {
      // whole slivers: one row's MR floats per depth step (a fixed-size copy, vector moves)
      for (int64_t k = 0; k < kc; ++k) std::memcpy(o + k * MR, A + (p0 + k) * lda + r0, sizeof(float) * size_t(MR));
    } else {
      for (int64_t k = 0; k < kc; ++k) {
        const float* src = A + (p0 + k) * lda + r0;
        for (int r = 0; r < mr; ++r) o[k * MR + r] = src[r];
      }
    }
    if (mr < MR)
      for (int64_t k = 0; k < kc; ++k)
        for (int r = mr; r < MR; ++r) o[k * MR + r] = 0.0f;
  }
}

// op(B)[k][j] for depth [p0, p0 + kc), the slivers [s0, s1) of columns from j0 (panel width
// nc) into out[s][k][NR].
void pack_b(bool trans, const float* B, int64_t ldb, int64_t p0, int64_t kc, int64_t j0,
            int64_t nc, int NR, int64_t s0, int64_t s1, float* out) {
  for (int64_t s = s0; s < s1; ++s) {
    float* o = out + s * kc * NR;
    const int64_t c0 = j0 + s * NR;
    const int nr = int(std::min<int64_t>(NR, j0 + nc - c0));
    if (!trans && nr == NR) {
      for (int64_t k = 0; k < kc; ++k) std::memcpy(o + k * NR, B + (p0 + k) * ldb + c0, sizeof(float) * size_t(NR));
    } else if (!trans) {
      for (int64_t k = 0; k < kc; ++k) {
        const float* src = B + (p0 + k) * ldb + c0;
        float* d = o + k * NR;
        for (int j = 0; j < nr; ++j) d[j] = src[j];
        for (int j = nr; j < NR; ++j) d[j] = 0.0f;
      }
    } else {
      loops::transpose(B + c0 * ldb + p0, ldb, nr, kc, o, NR);
      if (nr < NR)
        for (int64_t k = 0; k < kc; ++k)
          for (int j = nr; j < NR; ++j) o[k * NR + j] = 0.0f;
    }
  }
}

// ---- the macro-kernel: one packed A block against a range of packed B slivers ---------------
struct Block {
  const float* Ap;   // packed A block (ceil(mc / MR) slivers of kc x MR)
  const float* Bp;   // packed B panel (slivers of kc x NR)
  int64_t mc, nc, kc;
  int64_t s0, s1;    // B slivers to run
  float* C;          // C at (ic, jc)
  int64_t ldc;
  float alpha, beta;
  bool first;        // first depth block: apply beta
  // A read in place instead of Ap (macro_inplace_*): op(A)[i][k] of the block at
  // A[i * rs + k * ks] (A at the block's first row and depth), rows clamped below mc.
  const float* A = nullptr;
  int64_t rs = 0, ks = 0;
};

// Writes an MR x NR register tile (mr x nr of it valid) to C: alpha acc (+ beta C unless beta
// is 0) on the first depth block, else C += alpha acc. Every register-tile kernel stores this way
// (the convolution kernels with alpha 1 and beta 0, which the products leave exact).
template <int MR, int NR>
__attribute__((always_inline)) inline void store_tile(const float (&acc)[MR][NR], float* c,
                                                      int64_t ldc, int mr, int nr, bool first,
                                                      float alpha = 1.0f, float beta = 0.0f) {
  if (mr == MR && nr == NR) {
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      float* __restrict ci = c + i * ldc;
      if (!first) {
#pragma omp simd
        for (int j = 0; j < NR; ++j) ci[j] += alpha * acc[i][j];
      } else if (beta == 0.0f) {
#pragma omp simd
        for (int j = 0; j < NR; ++j) ci[j] = alpha * acc[i][j];
      } else {
#pragma omp simd
        for (int j = 0; j < NR; ++j) ci[j] = alpha * acc[i][j] + beta * ci[j];
      }
    }
    return;
  }
  for (int i = 0; i < mr; ++i) {
    float* ci = c + i * ldc;
    if (!first)
      for (int j = 0; j < nr; ++j) ci[j] += alpha * acc[i][j];
    else if (beta == 0.0f)
      for (int j = 0; j < nr; ++j) ci[j] = alpha * acc[i][j];
    else
      for (int j = 0; j < nr; ++j) ci[j] = alpha * acc[i][j] + beta * ci[j];
  }
}

template <int MR, int NR, bool IN_PLACE = false>
__attribute__((always_inline)) inline void macro_body(const Block& p) {
  for (int64_t s = p.s0; s < p.s1; ++s) {
    const float* __restrict b = p.Bp + s * p.kc * NR;
    const int64_t j0 = s * NR;
    const int nr = int(std::min<int64_t>(NR, p.nc - j0));
    for (int64_t t = 0; t * MR < p.mc; ++t) {
      const float* __restrict a = IN_PLACE ? nullptr : p.Ap + t * p.kc * MR;
      const float* row[MR];
      if (IN_PLACE)
        for (int i = 0; i < MR; ++i) row[i] = p.A + std::min<int64_t>(t * MR + i, p.mc - 1) * p.rs;
      float acc[MR][NR];
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i)
#pragma omp simd
        for (int j = 0; j < NR; ++j) acc[i][j] = 0.0f;
      for (int64_t k = 0; k < p.kc; ++k) {
        const float* __restrict bk = b + k * NR;
#pragma GCC unroll 16
        for (int i = 0; i < MR; ++i) {
          const float av = IN_PLACE ? row[i][k * p.ks] : a[k * MR + i];
#pragma omp simd
          for (int j = 0; j < NR; ++j) acc[i][j] += av * bk[j];
        }
      }
      store_tile<MR, NR>(acc, p.C + t * MR * p.ldc + j0, p.ldc,
                         int(std::min<int64_t>(MR, p.mc - t * MR)), nr, p.first, p.alpha, p.beta);
    }
  }
}

// One entry point per register tile, each compiled for every instruction set.
AS_VECTORIZE void macro_8x32(const Block& p) { macro_body<8, 32>(p); }
AS_VECTORIZE void macro_6x16(const Block& p) { macro_body<6, 16>(p); }
AS_VECTORIZE void macro_4x16(const Block& p) { macro_body<4, 16>(p); }
AS_VECTORIZE void macro_inplace_8x32(const Block& p) { macro_body<8, 32, true>(p); }
// Seven rows (14 accumulators, enough to cover the FMA latency on two pipes) for the small
// products whose rows it pads less than eight-row tiles do (gemm_small_serial): AdaShift-MA's
// attention over 7 x 7 = 49 tokens, where 8-row tiles compute 56 rows for 49.
AS_VECTORIZE void macro_inplace_7x32(const Block& p) { macro_body<7, 32, true>(p); }
AS_VECTORIZE void macro_inplace_6x16(const Block& p) { macro_body<6, 16, true>(p); }
// One vector wide (AVX-512) for the last columns of a product when 16 or fewer are left
// (gemm_small_serial): a 32-wide sliver there is half zeros, and the attention context of
// AdaShift-MA with 16 channels has most of its products 16 columns wide.
AS_VECTORIZE void macro_inplace_8x16(const Block& p) { macro_body<8, 16, true>(p); }
AS_VECTORIZE void macro_inplace_7x16(const Block& p) { macro_body<7, 16, true>(p); }
AS_VECTORIZE void macro_inplace_4x16(const Block& p) { macro_body<4, 16, true>(p); }

struct Kernel {
  int MR, NR;
  void (*run)(const Block&);
  const char* name;
  void (*run_inplace)(const Block&);  // the same tile with A read in place
};

Kernel pick_kernel() {
#if defined(__GNUC__) && defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return {8, 32, macro_8x32, "8x32 (avx512)", macro_inplace_8x32};
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return {6, 16, macro_6x16, "6x16 (avx2)", macro_inplace_6x16};
  return {4, 16, macro_4x16, "4x16 (sse)", macro_inplace_4x16};
#else
  return {6, 16, macro_6x16, "6x16", macro_inplace_6x16};
#endif
}

const Kernel& kernel() {
  static const Kernel k = pick_kernel();
  return k;
}

void scale_c(int64_t M, int64_t N, float beta, float* C, int64_t ldc) {
  for (int64_t i = 0; i < M; ++i) {
    float* c = C + i * ldc;
    if (beta == 0.0f)
      std::fill(c, c + N, 0.0f);
    else if (beta != 1.0f)
      for (int64_t j = 0; j < N; ++j) c[j] *= beta;
  }
}

struct PackAOnTheFly {
  bool ta;
  const float* A;
  int64_t lda;
  const float* operator()(int64_t ic, int64_t mc, int64_t pc, int64_t kc, float* scratch) const {
    pack_a(ta, A, lda, ic, mc, pc, kc, kernel().MR, scratch);
    return scratch;
  }
};

int64_t mc_rows(int MR) { return std::max<int64_t>(MR, kMCRows / MR * MR); }

// geta(ic, mc, pc, kc, scratch): the packed A block for rows [ic, ic + mc), depth [pc, pc + kc)
// (packed into scratch, or found prepacked); packb(p0, kc, j0, nc, NR, s0, s1, out): fills
// slivers [s0, s1) of the B panel.
template <class GetA, class PackB>
void gemm_driver(int64_t M, int64_t N, int64_t K, float alpha, const GetA& geta,
                 const PackB& packb, float beta, float* C, int64_t ldc, bool allow_parallel) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0 || alpha == 0.0f) {
    scale_c(M, N, beta, C, ldc);
    return;
  }
  const Kernel& kern = kernel();
  const int MR = kern.MR, NR = kern.NR;
  const int64_t MC = mc_rows(MR);
  const int64_t NC = std::max<int64_t>(NR, kNC / NR * NR);
  const int threads = allow_parallel ? num_threads() : 1;
  const bool par = threads > 1 && double(M) * double(N) * double(K) >= kParallelMacs;

  // One row block, one column panel, several depth blocks (tall-K products: a weight gradient
  // summed over a batch of tokens, [C, N*T] x [N*T, C]): the panel's slivers are split across the
  // pool once and each task runs every depth block for its slivers, packing its own A and B.
  // Below, each depth block is a parallel step of its own (pack B, then multiply), and here
  // those steps cost more than their arithmetic (AdaShift-MA's rect weight gradient, 64 x 64 x
  // 3136: 112-367 us, 70-230 GFLOP/s). Every output's sum is the same chain in the same order.
  if (par && M <= MC && N <= NC && K > KC) {
    const int64_t slivers = (N + NR - 1) / NR, parts = std::min<int64_t>(slivers, threads);
    parallel_for(parts, 1, [&](int64_t t0, int64_t t1) {
      const int64_t s0 = slivers * t0 / parts, s1 = slivers * t1 / parts;
      float* Bp = b_buffer().get(size_t(slivers * NR * KC));
      float* scratch = a_buffer().get(size_t(MC * KC));
      for (int64_t pc = 0; pc < K; pc += KC) {
        const int64_t kc = std::min(KC, K - pc);
        packb(pc, kc, int64_t(0), N, NR, s0, s1, Bp);
        const float* Ap = geta(int64_t(0), M, pc, kc, scratch);
        kern.run(Block{Ap, Bp, M, N, kc, s0, s1, C, ldc, alpha, beta, pc == 0});
      }
    });
    return;
  }

  const int64_t nc_max = std::min(NC, (N + NR - 1) / NR * NR);
  const int64_t kc_max = std::min(KC, K);
  float* Bp = b_buffer().get(size_t(nc_max * kc_max));

  for (int64_t jc = 0; jc < N; jc += NC) {
    const int64_t nc = std::min(NC, N - jc);
    const int64_t slivers = (nc + NR - 1) / NR;
    for (int64_t pc = 0; pc < K; pc += KC) {
      const int64_t kc = std::min(KC, K - pc);
      const bool first = pc == 0;
      const int64_t m_blocks = (M + MC - 1) / MC;
      if (!par) {
        packb(pc, kc, jc, nc, NR, int64_t(0), slivers, Bp);
        float* scratch = a_buffer().get(size_t(MC * kc));
        for (int64_t mb = 0; mb < m_blocks; ++mb) {
          const int64_t ic = mb * MC, mc = std::min(MC, M - ic);
          const float* Ap = geta(ic, mc, pc, kc, scratch);
          kern.run(Block{Ap, Bp, mc, nc, kc, 0, slivers, C + ic * ldc + jc, ldc, alpha, beta,
                         first});
        }
        continue;
      }
      // Pack the B panel across the pool, then split C into tasks: row blocks x ranges of B
      // slivers, enough for every thread to get about two (contiguous chunks of tasks share
      // their packed A block).
      parallel_for(slivers, std::max<int64_t>(1, 8192 / (kc * NR)), [&](int64_t s0, int64_t s1) {
        packb(pc, kc, jc, nc, NR, s0, s1, Bp);
      });
      const int64_t want = 2 * int64_t(threads);
      const int64_t n_parts =
          std::min<int64_t>(slivers, std::max<int64_t>(1, (want + m_blocks - 1) / m_blocks));
      const int64_t tasks = m_blocks * n_parts;
      parallel_for(tasks, 1, [&](int64_t t0, int64_t t1) {
        float* scratch = a_buffer().get(size_t(MC * kc));
        const float* Ap = nullptr;
        int64_t packed = -1;
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t mb = t / n_parts, part = t % n_parts;
          const int64_t ic = mb * MC, mc = std::min(MC, M - ic);
          if (packed != mb) {
            Ap = geta(ic, mc, pc, kc, scratch);
            packed = mb;
          }
          const int64_t s0 = slivers * part / n_parts, s1 = slivers * (part + 1) / n_parts;
          if (s0 < s1)
            kern.run(Block{Ap, Bp, mc, nc, kc, s0, s1, C + ic * ldc + jc, ldc, alpha, beta, first});
        }
      });
    }
  }
}

void gemm_own(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
              int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc,
              bool allow_parallel) {
  gemm_driver(M, N, K, alpha, PackAOnTheFly{ta, A, lda},
              [&](int64_t p0, int64_t kc, int64_t j0, int64_t nc, int NR, int64_t s0, int64_t s1,
                  float* out) { pack_b(tb, B, ldb, p0, kc, j0, nc, NR, s0, s1, out); },
              beta, C, ldc, allow_parallel);
}

// ---- prepacked A against an unpacked window source (convolutions) ---------------------------
// The micro-kernel of macro_body with B read in place: row k of the sliver at column q0 is
// xp + off[p0 + k] + q0 (NR floats, unaligned). Same accumulation order as macro_body.
template <int MR, int NR>
__attribute__((always_inline)) inline void direct_body(const float* Ap, const float* xp,
                                                       const int64_t* off, int64_t q0,
                                                       int64_t mc, int nr, int64_t kc,
                                                       float* C, int64_t ldc, bool first) {
  for (int64_t t = 0; t * MR < mc; ++t) {
    const float* __restrict a = Ap + t * kc * MR;
    float acc[MR][NR];
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma omp simd
      for (int j = 0; j < NR; ++j) acc[i][j] = 0.0f;
    for (int64_t k = 0; k < kc; ++k) {
      const float* __restrict bk = xp + off[k] + q0;
      const float* __restrict ak = a + k * MR;
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
        const float av = ak[i];
#pragma omp simd
        for (int j = 0; j < NR; ++j) acc[i][j] += av * bk[j];
      }
    }
    store_tile<MR, NR>(acc, C + t * MR * ldc, ldc, int(std::min<int64_t>(MR, mc - t * MR)), nr, first);
  }
}

struct DirectBlock {
  const float* Ap;
  const float* xp;
  const int64_t* off;  // at the block's first depth
  int64_t q_base, mc, N, kc;
  float* C;            // C at row ic, column 0
  int64_t ldc;
  bool first;
};

template <int MR, int NR>
__attribute__((always_inline)) inline void direct_macro(const DirectBlock& p) {
  for (int64_t j0 = 0; j0 < p.N; j0 += NR) {
    const int nr = int(std::min<int64_t>(NR, p.N - j0));
    direct_body<MR, NR>(p.Ap, p.xp, p.off, p.q_base + j0, p.mc, nr, p.kc, p.C + j0, p.ldc,
                        p.first);
  }
}

// With AVX-512: 8 rows x 3 vectors (24 accumulators, 11 loads per 24 FMAs; the 32-wide
// sliver's 16 FMAs took 10 loads): a 16-channel 3x3 convolution at 28x28 0.64 -> 0.61 ms
// forward (batch 64). 64 columns spill the accumulators.
AS_VECTORIZE void direct_8x48(const DirectBlock& p) {
  static_assert(48 <= kWindowsTileCols, "the callers' slack past the last column");
  direct_macro<8, 48>(p);
}
AS_VECTORIZE void direct_6x16(const DirectBlock& p) { direct_macro<6, 16>(p); }
AS_VECTORIZE void direct_4x16(const DirectBlock& p) { direct_macro<4, 16>(p); }

// ---- A read in place along the depth (convolution weight gradients) -------------------------
// Rows [i0, i1) of C [., N] (=, or += unless first) sum over samples s of A~_s @ B_s, where row i
// of A~_s is xps[s] + off[i] (K floats, contiguous: the depth runs along it) and B_s is packed
// as depth blocks of slivers (gemm_rows_pack). The register tile is the packed kernel's
// (MR x NR): per depth step MR broadcasts, read from MR row pointers instead of a packed A
// sliver; the tile stays in registers across all the samples and is written once.
struct RowsBlock {
  const int64_t* off;    // row offsets (indexed by row)
  const float* const* xps;
  int64_t samples;
  int64_t i0, i1, K;
  const float* Bp;       // samples' packed operands, back to back
  int64_t N;
  float* C;
  int64_t ldc;
  bool first;
  const int32_t* kmap;   // depth k reads element kmap[k] of a row (null: element k)
  int64_t tap_pitch;     // > 0: rows are 3x3 taps with this row pitch (rows_taps3x3_macro)
};

// One register tile of rows_macro and rows_taps3x3_macro: acc = sum over samples of the tile's
// rows of A~_n (read through row = rows_of(n): row(r, e) is element e of the tile's row r)
// against B sliver s, each element's products in order of sample, depth block and k.
template <int MR, int NR, bool MAPPED, typename RowsOf>
__attribute__((always_inline)) inline void rows_tile(const RowsBlock& p, int64_t s, int64_t slivers,
                                                     RowsOf rows_of, float (&acc)[MR][NR]) {
#pragma GCC unroll 32
  for (int r = 0; r < MR; ++r)
#pragma omp simd
    for (int j = 0; j < NR; ++j) acc[r][j] = 0.0f;
  const int64_t per_sample = slivers * NR * p.K;
  for (int64_t n = 0; n < p.samples; ++n) {
    const auto row = rows_of(n);
    for (int64_t pc = 0; pc < p.K; pc += KC) {
      const int64_t kc = std::min(KC, p.K - pc);
      const float* __restrict b = p.Bp + n * per_sample + slivers * NR * pc + s * kc * NR;
      for (int64_t k = 0; k < kc; ++k) {
        const float* __restrict bk = b + k * NR;
        const int64_t e = MAPPED ? int64_t(p.kmap[pc + k]) : pc + k;
#pragma GCC unroll 32
        for (int r = 0; r < MR; ++r) {
          const float av = row(r, e);
#pragma omp simd
          for (int j = 0; j < NR; ++j) acc[r][j] += av * bk[j];
        }
      }
    }
  }
}

template <int MR, int NR, bool MAPPED>
__attribute__((always_inline)) inline void rows_macro(const RowsBlock& p) {
  const int64_t slivers = (p.N + NR - 1) / NR;
  for (int64_t s = 0; s < slivers; ++s) {
    const int nr = int(std::min<int64_t>(NR, p.N - s * NR));
    for (int64_t i = p.i0; i < p.i1; i += MR) {
      const int mr = int(std::min<int64_t>(MR, p.i1 - i));
      float acc[MR][NR];
      rows_tile<MR, NR, MAPPED>(p, s, slivers, [&](int64_t n) {
        struct Rows {
          const float* a[MR];
          float operator()(int r, int64_t e) const { return a[r][e]; }
        } rows;
        for (int r = 0; r < MR; ++r) rows.a[r] = p.xps[n] + p.off[std::min<int64_t>(i + r, p.i1 - 1)];
        return rows;
      }, acc);
      store_tile<MR, NR>(acc, p.C + i * p.ldc + s * NR, p.ldc, mr, nr, p.first);
    }
  }
}

AS_VECTORIZE void rows_8x32(const RowsBlock& p) { rows_macro<8, 32, false>(p); }
AS_VECTORIZE void rows_6x16(const RowsBlock& p) { rows_macro<6, 16, false>(p); }
AS_VECTORIZE void rows_4x16(const RowsBlock& p) { rows_macro<4, 16, false>(p); }
AS_VECTORIZE void rows_mapped_8x32(const RowsBlock& p) { rows_macro<8, 32, true>(p); }
AS_VECTORIZE void rows_mapped_6x16(const RowsBlock& p) { rows_macro<6, 16, true>(p); }
AS_VECTORIZE void rows_mapped_4x16(const RowsBlock& p) { rows_macro<4, 16, true>(p); }
// With AVX-512 and at most 16 columns (a 16-channel weight gradient): one vector per row, 16
// rows, instead of a 32-wide sliver half of zeros.
AS_VECTORIZE void rows_16x16(const RowsBlock& p) { rows_macro<16, 16, false>(p); }
AS_VECTORIZE void rows_mapped_16x16(const RowsBlock& p) { rows_macro<16, 16, true>(p); }
// The last rows of a range when 8 or fewer are left (a 16-row tile would compute 16).
AS_VECTORIZE void rows_8x16(const RowsBlock& p) { rows_macro<8, 16, false>(p); }
AS_VECTORIZE void rows_mapped_8x16(const RowsBlock& p) { rows_macro<8, 16, true>(p); }

// The 16x16 tile above reads its 16 rows through 16 row pointers, more than the general
// registers hold: the pointers spill and every broadcast costs a second load (16-channel 3x3
// weight gradient at 28x28: 69% of the measured FMA peak, against 92% for the 8x32 tile of
// wider layers). When the rows are the 3x3 taps of whole channels of a padded layout (row r =
// 9c + 3i + j reads from off[9c] + i * pitch + j), a tile of CH channels (9 CH rows) needs only
// CH channel pointers: each tap is a fixed step from its channel's. The same products are
// summed in the same order as rows_macro's (samples, depth blocks, k), so the bits are equal.
template <int CH>
__attribute__((always_inline)) inline void rows_taps3x3_macro(const RowsBlock& p) {
  constexpr int MR = 9 * CH, NR = 16;
  const int64_t W = p.tap_pitch;
  const int nr = int(std::min<int64_t>(NR, p.N));
  for (int64_t i = p.i0; i < p.i1; i += MR) {
    const int chs = int(std::min<int64_t>(CH, (p.i1 - i) / 9));
    float acc[MR][NR];
    rows_tile<MR, NR, true>(p, 0, 1, [&](int64_t n) {
      struct Taps {
        const float* base[CH];
        int64_t W;
        float operator()(int r, int64_t e) const { return base[r / 9][e + (r % 9) / 3 * W + r % 3]; }
      } taps;
      for (int c = 0; c < CH; ++c) taps.base[c] = p.xps[n] + p.off[i + 9 * std::min(c, chs - 1)];
      taps.W = W;
      return taps;
    }, acc);
    store_tile<MR, NR>(acc, p.C + i * p.ldc, p.ldc, 9 * chs, nr, p.first);
  }
}
AS_VECTORIZE void rows_taps3x3_2ch(const RowsBlock& p) { rows_taps3x3_macro<2>(p); }

// ---- pixel rows: output pixels against output channels, the input read in place ------------
// The tile is MR consecutive output pixels x NR output channels. Per depth step k: NR/16 vector
// loads of the packed weight, MR broadcasts of xq[off[k] + m] (consecutive floats of the padded
// input), MR * NR/16 FMAs. The tile is written transposed, straight into the NCHW output.
struct PixelBlock {
  const float* xq;
  const int64_t* off;
  int64_t K;
  const float* Wp;  // gemm_rows_pack(W, K, N, K): depth blocks of slivers
  int64_t N;
  const float* bias;
  float* y;
  int64_t ystride;
};

template <int MR, int NR>
__attribute__((always_inline)) inline void pixel_body(const PixelBlock& p) {
  const int64_t slivers = (p.N + NR - 1) / NR;
  for (int64_t s = 0; s < slivers; ++s) {
    const int nr = int(std::min<int64_t>(NR, p.N - s * NR));
    float acc[MR][NR];
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma omp simd
      for (int j = 0; j < NR; ++j) acc[i][j] = 0.0f;
    for (int64_t pc = 0; pc < p.K; pc += KC) {
      const int64_t kc = std::min(KC, p.K - pc);
      const float* __restrict b = p.Wp + slivers * NR * pc + s * kc * NR;
      const int64_t* __restrict off = p.off + pc;
      for (int64_t k = 0; k < kc; ++k) {
        const float* __restrict bk = b + k * NR;
        const float* __restrict xk = p.xq + off[k];
#pragma GCC unroll 16
        for (int i = 0; i < MR; ++i) {
          const float av = xk[i];
#pragma omp simd
          for (int j = 0; j < NR; ++j) acc[i][j] += av * bk[j];
        }
      }
    }
    for (int j = 0; j < nr; ++j) {
      const int64_t n = s * NR + j;
      const float bn = p.bias ? p.bias[n] : 0.0f;
      float* __restrict yn = p.y + n * p.ystride;
#pragma GCC unroll 8
      for (int i = 0; i < MR; ++i) yn[i] = acc[i][j] + bn;
    }
  }
}

AS_VECTORIZE void pixel_8x32(const PixelBlock& p) { pixel_body<8, 32>(p); }
AS_VECTORIZE void pixel_7x32(const PixelBlock& p) { pixel_body<7, 32>(p); }
AS_VECTORIZE void pixel_6x32(const PixelBlock& p) { pixel_body<6, 32>(p); }
AS_VECTORIZE void pixel_5x32(const PixelBlock& p) { pixel_body<5, 32>(p); }
AS_VECTORIZE void pixel_4x32(const PixelBlock& p) { pixel_body<4, 32>(p); }
AS_VECTORIZE void pixel_3x32(const PixelBlock& p) { pixel_body<3, 32>(p); }
AS_VECTORIZE void pixel_2x32(const PixelBlock& p) { pixel_body<2, 32>(p); }
AS_VECTORIZE void pixel_1x32(const PixelBlock& p) { pixel_body<1, 32>(p); }

// ---- backend choice --------------------------------------------------------------------------
// The own kernel by default (its bits do not depend on the thread count, and on convolution
// shapes it is the faster one); ADASHIFT_GEMM=openblas picks BLAS when compiled in.
std::atomic<int>& backend_state() {
  static std::atomic<int> s{[] {
#ifdef ADASHIFT_WITH_BLAS
    const char* e = std::getenv("ADASHIFT_GEMM");
    if (e && (std::strcmp(e, "openblas") == 0 || std::strcmp(e, "blas") == 0))
      return int(GemmBackend::Blas);
#endif
    return int(GemmBackend::Own);
  }()};
  return s;
}

}  // namespace

void gemm_reference_kernel(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K,
                           float alpha, const float* A, int64_t lda, const float* B, int64_t ldb,
                           float beta, float* C, int64_t ldc) {
  gemm_own(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, true);
}

void gemm_serial(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                 const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
                 int64_t ldc) {
  gemm_own(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, false);
}

void gemm_small_serial(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                       const float* A, int64_t lda, const float* B, int64_t ldb, float beta,
                       float* C, int64_t ldc) {
  const Kernel& kern = kernel();
  if (M <= 0 || N <= 0) return;
  if (K <= 0 || alpha == 0.0f || M > mc_rows(kern.MR) || N > kNC) {
    gemm_serial(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  // The driver's loops for one row block and one column panel, with A read in place: the
  // products, their order and the stores are the packed kernel's.
  const int NR = kern.NR;
  // The tile height that computes fewer padding rows, and with 32-wide slivers a last sliver of
  // 16 columns when no more are left (every element's sum is the same chain of products in k
  // order whatever the tile: the same bits).
  const bool seven = NR == 32 && (M + 6) / 7 * 7 < (M + 7) / 8 * 8;
  void (*run_inplace)(const Block&) = seven ? macro_inplace_7x32 : kern.run_inplace;
  const bool narrow_tail = NR == 32 && (N % 32 != 0) && (N % 32) <= 16;
  const int64_t slivers = narrow_tail ? N / 32 : (N + NR - 1) / NR;  // of width NR
  const int64_t j_tail = slivers * NR, n_tail = N - j_tail;
  float* Bp = b_buffer().get(size_t((slivers * NR + (narrow_tail ? 16 : 0)) * std::min(KC, K)));
  const int64_t rs = trans_a ? 1 : lda, ks = trans_a ? lda : 1;
  for (int64_t pc = 0; pc < K; pc += KC) {
    const int64_t kc = std::min(KC, K - pc);
    Block blk{nullptr, Bp, M, N, kc, 0, slivers, C, ldc, alpha, beta, pc == 0};
    blk.A = A + pc * ks;
    blk.rs = rs;
    blk.ks = ks;
    if (slivers > 0) {
      pack_b(trans_b, B, ldb, pc, kc, 0, N, NR, 0, slivers, Bp);
      run_inplace(blk);
    }
    if (narrow_tail) {
      float* Bt = Bp + slivers * NR * kc;
      pack_b(trans_b, B, ldb, pc, kc, j_tail, n_tail, 16, 0, 1, Bt);
      Block tail = blk;
      tail.Bp = Bt;
      tail.nc = n_tail;
      tail.s0 = 0;
      tail.s1 = 1;
      tail.C = C + j_tail;
      (seven ? macro_inplace_7x16 : macro_inplace_8x16)(tail);
    }
  }
}

void gemm_source_b(bool trans_a, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                   int64_t lda, const GemmBSource& B, float beta, float* C, int64_t ldc,
                   bool parallel) {
  gemm_driver(M, N, K, alpha, PackAOnTheFly{trans_a, A, lda},
              [&](int64_t p0, int64_t kc, int64_t j0, int64_t nc, int NR, int64_t s0, int64_t s1,
                  float* out) { B.pack(p0, kc, j0, nc, NR, s0, s1, out); },
              beta, C, ldc, parallel);
}

GemmPackedA::GemmPackedA(bool trans_a, int64_t M, int64_t K, const float* A, int64_t lda)
    : M_(M), K_(K) {
  const int MR = kernel().MR;
  const int64_t MC = mc_rows(MR);
  const int64_t m_blocks = (M + MC - 1) / MC, k_blocks = (K + KC - 1) / KC;
  offsets_.resize(size_t(std::max<int64_t>(m_blocks * k_blocks, 1)));
  size_t total = 0;
  for (int64_t kb = 0; kb < k_blocks; ++kb)
    for (int64_t mb = 0; mb < m_blocks; ++mb) {
      offsets_[size_t(kb * m_blocks + mb)] = total;
      const int64_t mc = std::min(MC, M - mb * MC), kc = std::min(KC, K - kb * KC);
      total += size_t((mc + MR - 1) / MR * MR * kc);
    }
  data_.resize(total + 16);
  uintptr_t p = reinterpret_cast<uintptr_t>(data_.data());
  base_ = reinterpret_cast<float*>((p + 63) & ~uintptr_t(63)) - data_.data();
  for (int64_t kb = 0; kb < k_blocks; ++kb)
    for (int64_t mb = 0; mb < m_blocks; ++mb) {
      const int64_t mc = std::min(MC, M - mb * MC), kc = std::min(KC, K - kb * KC);
      pack_a(trans_a, A, lda, mb * MC, mc, kb * KC, kc, MR,
             data_.data() + base_ + offsets_[size_t(kb * m_blocks + mb)]);
    }
  m_blocks_ = m_blocks;
}

const float* GemmPackedA::block(int64_t ic, int64_t pc) const {
  const int64_t MC = mc_rows(kernel().MR);
  return data_.data() + base_ + offsets_[size_t((pc / KC) * m_blocks_ + ic / MC)];
}

void gemm_packed_a(const GemmPackedA& A, int64_t N, float alpha, const GemmBSource& B,
                   float beta, float* C, int64_t ldc, bool parallel) {
  gemm_driver(A.rows(), N, A.depth(), alpha,
              [&](int64_t ic, int64_t, int64_t pc, int64_t, float*) { return A.block(ic, pc); },
              [&](int64_t p0, int64_t kc, int64_t j0, int64_t nc, int NR, int64_t s0, int64_t s1,
                  float* out) { B.pack(p0, kc, j0, nc, NR, s0, s1, out); },
              beta, C, ldc, parallel);
}

void gemm_packed_a_windows(const GemmPackedA& A, int64_t N, const float* xp, const int64_t* off,
                           int64_t q_base, float* C, int64_t ldc) {
  const int64_t M = A.rows(), K = A.depth();
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    scale_c(M, N, 0.0f, C, ldc);
    return;
  }
  const Kernel& kern = kernel();
  const int64_t MC = mc_rows(kern.MR);
  void (*run)(const DirectBlock&) = kern.NR == 32 ? direct_8x48
                                    : kern.MR == 6 ? direct_6x16
                                                   : direct_4x16;
  // Columns in panels that keep a sliver's rows of xp in L1 across the row blocks.
  for (int64_t pc = 0; pc < K; pc += KC) {
    const int64_t kc = std::min(KC, K - pc);
    for (int64_t ic = 0; ic < M; ic += MC) {
      const int64_t mc = std::min(MC, M - ic);
      run(DirectBlock{A.block(ic, pc), xp, off + pc, q_base, mc, N, kc, C + ic * ldc, ldc,
                      pc == 0});
    }
  }
}

bool gemm_pixel_rows_available() { return kernel().NR == 32; }

void gemm_pixel_rows(const float* xq, const int64_t* off, int64_t K, const float* Wp, int64_t N,
                     int width, const float* bias, float* y, int64_t ystride) {
  static void (*const run[9])(const PixelBlock&) = {nullptr,    pixel_1x32, pixel_2x32,
                                                    pixel_3x32, pixel_4x32, pixel_5x32,
                                                    pixel_6x32, pixel_7x32, pixel_8x32};
  AS_CHECK(gemm_pixel_rows_available() && width >= 1 && width <= 8, Arg,
           "gemm_pixel_rows: needs the AVX-512 tile and 1 <= width <= 8, got width ", width);
  run[width](PixelBlock{xq, off, K, Wp, N, bias, y, ystride});
}

int gemm_rows_sliver(int64_t N) { return kernel().NR == 32 && N <= 16 ? 16 : kernel().NR; }

int64_t gemm_rows_packed_size(int64_t N, int64_t K, int NR) {
  return (N + NR - 1) / NR * NR * K;
}

void gemm_rows_pack(const float* Bt, int64_t ldbt, int64_t N, int64_t K, float* out, int NR) {
  const int64_t slivers = (N + NR - 1) / NR;
  for (int64_t pc = 0; pc < K; pc += KC) {
    const int64_t kc = std::min(KC, K - pc);
    pack_b(true, Bt, ldbt, pc, kc, 0, N, NR, 0, slivers, out + slivers * NR * pc);
  }
}

void gemm_rows_batched(int64_t i0, int64_t i1, int64_t N, int64_t K, const int64_t* off,
                       const float* const* xps, int64_t samples, const float* Bp, bool accumulate,
                       float* C, int64_t ldc, const int32_t* kmap, int64_t tap_pitch) {
  if (i1 <= i0 || N <= 0) return;
  if (K <= 0 || samples <= 0) {
    if (!accumulate) scale_c(i1 - i0, N, 0.0f, C + i0 * ldc, ldc);
    return;
  }
  const Kernel& kern = kernel();
  void (*run)(const RowsBlock&) =
      kern.NR == 32 && gemm_rows_sliver(N) == 16 ? (kmap ? rows_mapped_16x16 : rows_16x16)
      : kmap ? (kern.NR == 32 ? rows_mapped_8x32 : kern.MR == 6 ? rows_mapped_6x16 : rows_mapped_4x16)
             : (kern.NR == 32 ? rows_8x32 : kern.MR == 6 ? rows_6x16 : rows_4x16);
  RowsBlock blk{off, xps, samples, i0, i1, K, Bp, N, C, ldc, !accumulate, kmap, tap_pitch};
  if (tap_pitch > 0 && kern.NR == 32 && gemm_rows_sliver(N) == 16 && kmap && i0 % 9 == 0 &&
      (i1 - i0) % 9 == 0 && loops::avx512_paths()) {
    rows_taps3x3_2ch(blk);
    return;
  }
  if (run == rows_16x16 || run == rows_mapped_16x16) {
    // The last 8 or fewer rows of the range by an 8-row tile (a 16-row tile would compute 16).
    // Each row is computed whole by one tile either way: the same bits.
    const int64_t tail = (i1 - i0) % 16;
    if (tail > 0 && tail <= 8) {
      RowsBlock last = blk;
      last.i0 = blk.i1 = i1 - tail;
      if (blk.i1 > blk.i0) run(blk);
      (kmap ? rows_mapped_8x16 : rows_8x16)(last);
      return;
    }
  }
  run(blk);
}

void GemmMatrixB::pack(int64_t p0, int64_t kc, int64_t j0, int64_t nc, int NR, int64_t s0,
                       int64_t s1, float* out) const {
  pack_b(trans, B, ldb, p0, kc, j0, nc, NR, s0, s1, out);
}

bool gemm_blas(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
               const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
               int64_t ldc) {
#ifdef ADASHIFT_WITH_BLAS
  constexpr int64_t kMax = std::numeric_limits<int>::max();
  if (M > kMax || N > kMax || K > kMax || lda > kMax || ldb > kMax || ldc > kMax) return false;
  if (M <= 0 || N <= 0) return true;
#ifdef ADASHIFT_BLAS_OPENBLAS
  // The BLAS runs its own threads while the pool's workers sleep: give it the pool's count.
  static std::atomic<int> blas_threads{0};
  const int t = num_threads();
  if (blas_threads.exchange(t) != t) openblas_set_num_threads(t);
#endif
  // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands.
  const char transa = trans_b ? 'T' : 'N', transb = trans_a ? 'T' : 'N';
  const int m = int(N), n = int(M), k = int(K);
  // BLAS wants leading dimensions >= 1 even for empty operands.
  const int la = int(std::max<int64_t>(ldb, 1)), lb = int(std::max<int64_t>(lda, 1)),
            lc = int(std::max<int64_t>(ldc, 1));
  sgemm_(&transa, &transb, &m, &n, &k, &alpha, B, &la, A, &lb, &beta, C, &lc, 1, 1);
  return true;
#else
  (void)trans_a; (void)trans_b; (void)M; (void)N; (void)K; (void)alpha; (void)A; (void)lda;
  (void)B; (void)ldb; (void)beta; (void)C; (void)ldc;
  return false;
#endif
}

void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
          const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
          int64_t ldc) {
  if (gemm_backend() == GemmBackend::Blas &&
      gemm_blas(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc))
    return;
  gemm_own(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, true);
}

bool gemm_blas_compiled() {
#ifdef ADASHIFT_WITH_BLAS
  return true;
#else
  return false;
#endif
}

GemmBackend gemm_backend() { return GemmBackend(backend_state().load(std::memory_order_relaxed)); }

const char* gemm_backend_name() {
  if (gemm_backend() == GemmBackend::Own) return "own";
#ifdef ADASHIFT_BLAS_OPENBLAS
  return "openblas";
#else
  return "blas";
#endif
}

void set_gemm_backend(const std::string& choice) {
  if (choice == "own") {
    backend_state().store(int(GemmBackend::Own));
    return;
  }
  if (choice == "openblas" || choice == "blas") {
    AS_CHECK(gemm_blas_compiled(), Arg, "gemm backend '", choice,
             "' is not available: this build has no BLAS (configure with ADASHIFT_BLAS=ON and "
             "OpenBLAS installed); use 'own'");
    backend_state().store(int(GemmBackend::Blas));
    return;
  }
  fail(ErrorCode::Arg, cat("gemm backend must be 'own' or 'openblas', got '", choice, "'"));
}

const char* gemm_kernel_name() { return kernel().name; }

namespace {
// The multiply-add loop of the peak measurement, one instantiation per instruction set (as the
// GEMM's micro-kernel, picked by the CPU at run time): CHAINS independent chains of LANES-wide
// vectors, as many as the register file holds with room for the two constants, and at least
// the 8 the FMA latency (4 cycles) on two pipes needs. The chains run from their state in `acc`
// and are written back, so every call does its work (a call whose inputs were all constant
// could otherwise be computed once, where the compiler sees through it).
template <int CHAINS, int LANES>
__attribute__((always_inline)) inline void fma_chains(int64_t rounds, float m, float a, float* acc) {
  float v[CHAINS][LANES];
  for (int j = 0; j < CHAINS; ++j)
    for (int l = 0; l < LANES; ++l) v[j][l] = acc[j * LANES + l];
  for (int64_t r = 0; r < rounds; ++r)
#pragma GCC unroll 16
    for (int j = 0; j < CHAINS; ++j)
#pragma omp simd
      for (int l = 0; l < LANES; ++l) v[j][l] = v[j][l] * m + a;
  for (int j = 0; j < CHAINS; ++j)
    for (int l = 0; l < LANES; ++l) acc[j * LANES + l] = v[j][l];
}
constexpr int kPeakState = 16 * 16;  // floats of chain state, enough for every variant
#if defined(__GNUC__) && defined(__x86_64__)
__attribute__((target("avx512f"))) void fma_chains_avx512(int64_t r, float m, float a, float* acc) {
  fma_chains<16, 16>(r, m, a, acc);  // 16 of 32 zmm
}
__attribute__((target("avx2,fma"))) void fma_chains_avx2(int64_t r, float m, float a, float* acc) {
  fma_chains<12, 8>(r, m, a, acc);  // 12 of 16 ymm
}
#endif
void fma_chains_base(int64_t r, float m, float a, float* acc) { fma_chains<8, 4>(r, m, a, acc); }

struct PeakLoop {
  void (*run)(int64_t, float, float, float*);
  double flops_per_round;
};
PeakLoop peak_loop() {
#if defined(__GNUC__) && defined(__x86_64__)
  const Kernel& k = kernel();  // the same choice as the GEMM's tile
  if (k.NR == 32) return {fma_chains_avx512, 2.0 * 16 * 16};
  if (k.MR == 6) return {fma_chains_avx2, 2.0 * 12 * 8};
#endif
  return {fma_chains_base, 2.0 * 8 * 4};
}
}  // namespace

double fma_peak_gflops(int64_t ms) {
  AS_CHECK(ms >= 1 && ms <= 10000, Arg, "fma_peak_gflops: ms must be in [1, 10000], got ", ms);
  constexpr int64_t kRounds = 1 << 12;
  const PeakLoop loop = peak_loop();
  // m < 1 and a small keep every chain bounded (no overflow, no denormals): each converges to
  // a / (1 - m) = 1.
  auto batch = [&](float* acc) { loop.run(kRounds, 0.999f, 1e-3f, acc); };
  using clock = std::chrono::steady_clock;
  auto seconds_since = [](clock::time_point t) { return std::chrono::duration<double>(clock::now() - t).count(); };
  // Calibrate on this thread (which also brings the clock up): batches per millisecond.
  std::vector<float> state(size_t(kPeakState), 0.5f);
  int64_t calib = 0;
  const auto c0 = clock::now();
  do {
    batch(state.data());
    ++calib;
  } while (seconds_since(c0) < 0.02);
  const int64_t per_thread = std::max<int64_t>(1, int64_t(double(calib) / (seconds_since(c0) * 1e3) * double(ms)));
  // Every thread the same fixed work at once, on its own state; the rate is all of it over the
  // wall time.
  const int threads = num_threads();
  std::vector<std::vector<float>> states(size_t(threads), std::vector<float>(size_t(kPeakState), 0.5f));
  const auto t0 = clock::now();
  parallel_for(threads, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i)
      for (int64_t b = 0; b < per_thread; ++b) batch(states[size_t(i)].data());
  });
  const double wall = seconds_since(t0);
  return double(threads) * double(per_thread) * double(kRounds) * loop.flops_per_round / wall / 1e9;
}

}  // namespace cpu
}  // namespace adashift

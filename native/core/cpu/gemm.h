// Single-precision GEMM for the CPU backend: C = alpha * op(A) op(B) + beta * C, row-major,
// with transposes and leading dimensions (elements between consecutive rows of the stored
// matrix). op(A) is M x K (A stored M x K, or K x M when trans_a), op(B) is K x N (B stored
// K x N, or N x K when trans_b), C is M x N. beta == 0 means C is not read (NaN there is
// overwritten); K == 0 or alpha == 0 gives C = beta * C.
//
// Two implementations, both always compiled and callable:
//   - the package's own: cache-blocked (KC x NC panels of B, MC x KC blocks of A), packed into
//     register-tile slivers, with a register-tiled micro-kernel compiled per instruction set
//     (AS_VECTORIZE); parallelised with parallel_for over blocks of C. Each element of C is
//     summed in an order that depends only on K (blocks of kGemmKC, then in order), never on the
//     thread count or on how C is split: the same bits for any number of threads.
//   - BLAS sgemm (OpenBLAS when CMake found it: ADASHIFT_WITH_BLAS), called through the Fortran
//     interface with the row-major transpose trick, from the calling thread only, with the BLAS's
//     own thread count set to num_threads() (never inside parallel_for: no oversubscription).
// gemm() uses the own kernel unless BLAS is picked at run time (environment
// ADASHIFT_GEMM=openblas at load, or set_gemm_backend("openblas")) in a build that has it. The
// own kernel is the default because its results do not depend on the thread count (OpenBLAS
// partitions its work by thread count and rounds differently for each) and because, through
// the implicit-operand entry points below, convolutions never build im2col matrices with it.
#pragma once
#include <cstdint>
#include <cstddef>
#include <string>
#include <vector>

namespace adashift {
namespace cpu {

constexpr int64_t kGemmKC = 256;  // depth of one packed panel: the summation block

// The selected backend. Call from outside
// parallel_for: it may run threads of its own (the pool's, or the BLAS library's).
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
          const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
          int64_t ldc);

// The package's own kernel, parallelised over blocks of C with the thread pool.
void gemm_reference_kernel(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K,
                           float alpha, const float* A, int64_t lda, const float* B, int64_t ldb,
                           float beta, float* C, int64_t ldc);

// The own kernel on the calling thread only: safe inside parallel_for tasks (bit-identical to
// gemm_reference_kernel).
void gemm_serial(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                 const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
                 int64_t ldc);
// gemm_serial for products small enough for one block of rows and one panel of columns (the
// per-sample attention of AdaShift-MA): A is read in place instead of packed, with the same
// products in the same order, so the bits equal gemm_serial's. Larger shapes go to gemm_serial.
void gemm_small_serial(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                       const float* A, int64_t lda, const float* B, int64_t ldb, float beta,
                       float* C, int64_t ldc);

// BLAS sgemm when compiled in (returns false and does nothing otherwise, or when a size does
// not fit the BLAS integer type).
bool gemm_blas(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
               const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
               int64_t ldc);

// ---- own-kernel variants for implicit operands (convolutions) --------------------------------
// A source of op(B) that packs itself (columns of an image that are never materialised):
// pack() fills the slivers [s0, s1) of a panel covering depth [p0, p0 + kc) and columns
// [j0, j0 + nc): sliver s lives at out + s * kc * NR as [k][NR], columns past nc are zero.
struct GemmBSource {
  virtual void pack(int64_t p0, int64_t kc, int64_t j0, int64_t nc, int NR, int64_t s0,
                    int64_t s1, float* out) const = 0;

 protected:
  ~GemmBSource() = default;
};
// C = alpha * op(A) B + beta * C with the own kernel and B from a source (parallel over blocks
// of C when `parallel`; the bits do not depend on it).
void gemm_source_b(bool trans_a, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                   int64_t lda, const GemmBSource& B, float beta, float* C, int64_t ldc,
                   bool parallel);

// op(B) stored as a matrix (the usual B of gemm()).
struct GemmMatrixB final : GemmBSource {
  bool trans;
  const float* B;
  int64_t ldb;
  GemmMatrixB(bool trans_b, const float* b, int64_t ld) : trans(trans_b), B(b), ldb(ld) {}
  void pack(int64_t p0, int64_t kc, int64_t j0, int64_t nc, int NR, int64_t s0, int64_t s1,
            float* out) const override;
};

// op(A) packed once for the own kernel, for many products with the same A (a convolution's
// weight across samples): saves re-packing it per product.
class GemmPackedA {
 public:
  GemmPackedA(bool trans_a, int64_t M, int64_t K, const float* A, int64_t lda);
  int64_t rows() const { return M_; }
  int64_t depth() const { return K_; }
  const float* block(int64_t ic, int64_t pc) const;  // the block at row ic, depth pc

 private:
  int64_t M_, K_, m_blocks_ = 0;
  std::vector<float> data_;
  std::ptrdiff_t base_ = 0;
  std::vector<size_t> offsets_;
};
// C = alpha * A B + beta * C with a prepacked A (bit-identical to the unpacked call).
void gemm_packed_a(const GemmPackedA& A, int64_t N, float alpha, const GemmBSource& B,
                   float beta, float* C, int64_t ldc, bool parallel);

// The widest column tile gemm_packed_a_windows runs (floats): it reads up to this far past
// column N - 1 of a row of X~.
constexpr int64_t kWindowsTileCols = 48;
// C[M, N] = A (prepacked, M x K) @ X~ with X~[k][q] = xp[off[k] + q_base + q], on the calling
// thread, reading X~ in place (no packing). It reads up to kWindowsTileCols floats past column
// N - 1 of every row of X~: those must be readable (their values only reach discarded
// accumulators). Bit-identical to gemm_packed_a with the same operands (each element's
// products are summed in the same order whatever the tile).
void gemm_packed_a_windows(const GemmPackedA& A, int64_t N, const float* xp, const int64_t* off,
                           int64_t q_base, float* C, int64_t ldc);

// Products whose left operand's rows are read in place, contiguous along the depth (the taps of
// a padded sample in a convolution's weight gradient), summed over samples:
//   C[i][n] (=, or += when accumulate) sum over samples s < samples, k < K of
//           xps[s][off[i] + k] * Bt_s[n][k]
// for rows i in [i0, i1) and n < N, on the calling thread. Bt_s [N, K] (row n contiguous along the
// depth) is packed beforehand by gemm_rows_pack into gemm_rows_packed_size(N, K) floats, the
// samples' packs back to back in Bp. Each element adds the samples in order, each sample's depth
// in blocks of kGemmKC in order, in registers, and is written once: splitting the rows across
// threads does not change any bit. Reads exactly K floats of each row; with kmap, depth k reads
// element kmap[k] of the row instead of element k (the exact output pixels of a convolution
// whose rows hold padding columns between them).
// The sliver width NR to pack Bt with for gemm_rows_batched with N columns (16 for at most 16
// columns where the AVX-512 tile is, else the kernel's).
int gemm_rows_sliver(int64_t N);
int64_t gemm_rows_packed_size(int64_t N, int64_t K, int NR);
void gemm_rows_pack(const float* Bt, int64_t ldbt, int64_t N, int64_t K, float* out, int NR);
// tap_pitch > 0 declares the rows to be the 3x3 taps of whole channels of a padded layout with
// that row pitch (off[9c + 3i + j] = off[9c] + i * tap_pitch + j; [i0, i1) covers whole
// channels): a register tile that needs fewer row pointers, with the same bits.
void gemm_rows_batched(int64_t i0, int64_t i1, int64_t N, int64_t K, const int64_t* off,
                       const float* const* xps, int64_t samples, const float* Bp, bool accumulate,
                       float* C, int64_t ldc, const int32_t* kmap = nullptr,
                       int64_t tap_pitch = 0);

// Convolution outputs by pixel runs ("pixel rows"): for a run of `width` consecutive output
// pixels of one output row and every output channel n < N,
//   y[n * ystride + m] = (bias ? bias[n] : 0) + sum over k < K of xq[off[k] + m] * W[n][k]
// for m < width, on the calling thread, with W [N, K] packed beforehand by gemm_rows_pack(W, K,
// N, K, Wp, 32) (W^T's slivers). The register tile holds the run's pixels against a sliver of
// output channels, so no column is computed for padding and the input is read in place (no
// packing per sample). Each output sums its K products in order (depth blocks of kGemmKC, in
// registers): any split of the runs across threads gives the same bits. Only with the AVX-512
// tile (gemm_pixel_rows_available()); width in [1, 8]; Wp packed with NR = 32.
bool gemm_pixel_rows_available();
void gemm_pixel_rows(const float* xq, const int64_t* off, int64_t K, const float* Wp, int64_t N,
                     int width, const float* bias, float* y, int64_t ystride);

enum class GemmBackend : int { Own = 0, Blas = 1 };
bool gemm_blas_compiled();
// What gemm() uses now.
GemmBackend gemm_backend();
// "openblas" (or "blas" for another BLAS) or "own".
const char* gemm_backend_name();
// "own" or "openblas"/"blas" (an Arg error when no BLAS is compiled in). Process-wide; takes
// effect for the next call.
void set_gemm_backend(const std::string& choice);
// The register tile of the own kernel on this CPU ("8x32 avx512" ...), for benchmarks.
const char* gemm_kernel_name();
// This CPU's multiply-add ceiling as measured, not as specified: every pool thread runs
// independent FMA chains on registers only (no memory traffic; the vector width the GEMM's
// micro-kernel uses on this CPU) for about `ms` milliseconds; returns the total rate in GFLOP/s
// (a multiply-add counts 2). The reference that convolution and GEMM rates are read against.
// Takes about ms + 20 milliseconds (a calibration first), during which the pool does nothing else.
double fma_peak_gflops(int64_t ms);

}  // namespace cpu
}  // namespace adashift

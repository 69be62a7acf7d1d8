// The CPU's hot inner loops, one function per loop, compiled for several instruction sets
// (AVX-512, AVX2+FMA, baseline x86-64) and picked at load time by the CPU's features
// (GCC target_clones). Each loop runs over a contiguous run of floats, so the compiler
// vectorises it; reductions use `omp simd` (a fixed vector order per machine: the same bits
// every run). Elsewhere this compiles to plain functions.
#pragma once
#include <cstdint>
#include "../ops/elementwise.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && !defined(ADASHIFT_NO_CLONES)
#define AS_VECTORIZE __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define AS_VECTORIZE
#endif

namespace adashift {
namespace cpu {
namespace loops {

// Whether the specialised AVX-512 paths run: the CPU has AVX-512 and ADASHIFT_CPU_GENERIC is
// not "1" (which turns them off so tests can compare; they give the same bits).
bool avx512_paths();
float sum(const float* x, int64_t n);
// Asks the CPU to bring the cache lines of x[0..n) towards the core (a hint: no fault, no wait).
// A loop that will read a run soon after the current one issues this while it computes, so the
// read streams from memory under the arithmetic instead of in a pass of its own.
inline void prefetch(const float* x, int64_t n) {
#if defined(__GNUC__)
  const char* p = reinterpret_cast<const char*>(x);
  for (int64_t b = 0; b < n * int64_t(sizeof(float)); b += 64) __builtin_prefetch(p + b, 0, 2);
#else
  (void)x;
  (void)n;
#endif
}
// y = x * sigmoid(x + s)
void gate_forward(const float* x, float s, float* y, int64_t n);
// sum of dy * x * g * (1 - g)
float gate_shift_grad(const float* x, const float* dy, float s, int64_t n);
// dx = dy * (g + x g (1 - g)) + add
void gate_input_grad(const float* x, const float* dy, float s, float add, float* dx, int64_t n);
// Both gate gradients in one pass: writes the direct input gradient dy (g + x g (1 - g)) to dx
// and returns the shift gradient, the sum of dy x g (1 - g)
float gate_grads(const float* x, const float* dy, float s, float* dx, int64_t n);
// x[i] += v
void add_scalar(float* x, float v, int64_t n);
// ---- AdaShift-B's pipelined forward (cpu/adashift_b.cc) ----------------------------------------
// Sums in 16 lanes (element i into lane i % 16), the lanes then added in a fixed tree: written
// out in the source, so both loops below sum a run in the same order on every machine, and a
// sum taken inside another sample's pass has the bits of one taken in a pass of its own.
float lane_sum(const float* x, int64_t n);
// y = x * sigmoid(x + s), and returns lane_sum(next, n): the pooling of the next sample's plane
// read while this one is gated (the gate is compute-bound; the extra stream rides along).
float gate_forward_sum(const float* x, float s, float* y, const float* next, int64_t n);
// Per-element shift s[i] (region bands of AdaShift-MA, the shift laid out per pixel)
void gate_forward_v(const float* x, const float* s, float* y, int64_t n);
// out[i] = dy * x * g * (1 - g)
void gate_shift_grad_v(const float* x, const float* dy, const float* s, float* out, int64_t n);
// dx = dy * (g + x g (1 - g)) + add[i]
void gate_input_grad_v(const float* x, const float* dy, const float* s, const float* add, float* dx, int64_t n);
// Both gate gradients with a per-element shift: dx = dy (g + x g (1 - g)), ds = dy x g (1 - g)
void gate_grads_v(const float* x, const float* dy, const float* s, float* dx, float* ds, int64_t n);
// A band of `rows` rows of width W whose pixels share the row pattern of shifts srow [W]: the
// shift gradient's column sums over the band into cols [W] (cols[w] = the first row's term, then
// each later row's added in order: band_column_sums of the per-pixel terms, without storing
// them), and with dx given the direct input gradient of every pixel.
void gate_grads_band(const float* x, const float* dy, const float* srow, float* dx, float* cols, int rows, int64_t W);
// The gate over a band of `rows` rows of width W sharing the row pattern of shifts srow [W].
void gate_forward_band(const float* x, const float* srow, float* y, int rows, int64_t W);
// x[i] += a[i]
void add_v(float* x, const float* a, int64_t n);
// Column sums of each band of rows of a [H, W] plane: out[b * W + w] = sum over h in
// [row0[b], row0[b + 1]) of x[h * W + w], for b < bands.
void band_column_sums(const float* x, int64_t W, const int* row0, int bands, float* out);
// Cell sums of rows of column sums: out[b * Pw + q] = cols[b * W + w] added over cell q's
// columns w in [col0[q], col0[q + 1]) in order, starting from 0, for b < bands.
void cells_from_columns(const float* cols, int64_t W, int bands, const int* col0, int Pw, float* out);
// band_column_sums then cells_from_columns, with the bits of the two (cols: scratch of bands * W
// floats, written only where the rows are wider than the register path takes).
void band_cell_sums(const float* x, int64_t W, const int* row0, int bands, const int* col0, int Pw,
                    float* cols, float* out);
// Lays the cell values of a [H, W] plane out per pixel: map[h * W + w] = vals[r * Pw + cell of w]
// for h in cell row r ([row0[r], row0[r + 1])), r < Ph. flat_cell[i] is the cell column of
// pixel column i % W, for i up to the tallest cell row's pixel count (a cell row is a contiguous
// run of the plane, so one index pattern covers it).
void expand_cells(const float* vals, const int* row0, const int* flat_cell, int Ph, int Pw,
                  int64_t W, float* map);
// dst[r * ldd + k] = src[r * lds + k * step] for r < rows, k < n: a block of short rows (a
// plane into its padded copy; step 2: a stride-2 phase of it), through vector registers with a
// masked tail where the CPU has AVX-512 (for steps 1 and 2: a memcpy per row of 7 to 28 floats
// costs more in the call than in the copy). Reads no element of a row past its last one.
void copy_rows(const float* src, int64_t lds, int64_t step, float* dst, int64_t ldd, int64_t rows, int64_t n);
// dst[r * ldd + k] = src[r * lds + k] + add for r < rows, k < n (a GEMM tile's rows placed in
// the output with the bias), likewise by vector moves with a masked tail where the CPU has
// AVX-512 (rows of 7 to 28 outputs are mostly remainder for a compiled loop).
void add_rows(const float* src, int64_t lds, float add, float* dst, int64_t ldd, int64_t rows, int64_t n);
// dst[k * ldd + r] = src[r * lds + k] for r < rows, k < cols (8 x 8 blocks through registers
// where the CPU has AVX2).
void transpose(const float* src, int64_t lds, int64_t rows, int64_t cols, float* dst, int64_t ldd);
// Softmax over rows of n (in place allowed): y = exp(x - max) / sum.
void softmax_rows(const float* x, int64_t rows, int64_t n, float* y);
// Softmax backward over rows of n: dx = y (dy - sum(y dy)).
void softmax_backward_rows(const float* y, const float* dy, int64_t rows, int64_t n, float* dx);
// LayerNorm over rows of C: y = (x - mean) * rstd * w + b; statistics in double.
void layernorm_rows(const float* x, const float* w, const float* b, float eps, int64_t rows,
                    int64_t C, float* y, float* mean, float* rstd);
// LayerNorm statistics (as layernorm_rows computes them) of T tokens of C channels stored
// channel-major: token t's values are x[c * T + t], c < C.
void col_moments(const float* x, int64_t C, int64_t T, float eps, float* mean, float* rstd);
// Three affine maps of the same normalised rows of C: with xhat = (x - mean) * rstd per row
// (stored when xhat is not null), y[i] = xhat * w[i] + b[i], i < 3.
void norm_affine3_rows(const float* x, const float* mean, const float* rstd, int64_t rows,
                       int64_t C, const float* const* w, const float* const* b, float* const* y,
                       float* xhat);
// The backward of three LayerNorms of the same input (shared statistics): with G = sum_i dy[i] w[i],
// dx = rstd * (G - mean(G) - xhat * mean(G xhat)) (the sum of the three input gradients, since
// each is linear in its dy), and acc[2i] += dy[i] xhat, acc[2i + 1] += dy[i] (column sums over
// the rows in float: meant for a few dozen rows per call). dx must not overlap dy.
void layernorm3_backward_rows(const float* const* dy, const float* xhat, const float* rstd,
                              const float* const* w, int64_t rows, int64_t C, float* dx,
                              float* const* acc);
// LayerNorm backward over rows of C: dx, and dw/db accumulated (+=) in double into acc_w/acc_b.
// dx must not overlap dy.
void layernorm_backward_rows(const float* dy, const float* x, const float* mean, const float* rstd,
                             const float* w, int64_t rows, int64_t C, float* dx, double* acc_w,
                             double* acc_b);
void act_forward(Act a, const float* x, float* y, int64_t n);
void act_backward(Act a, const float* x, const float* dy, float* dx, int64_t n);

}  // namespace loops
}  // namespace cpu
}  // namespace adashift

#include "loops.h"
#include <algorithm>
#include <cstring>
#include <utility>
#include "../math.h"

// Hand-written AVX-512 paths (picked at run time) where the compiler cannot see the structure.
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__) && !defined(ADASHIFT_NO_CLONES)
#define AS_HAVE_AVX512_PATHS 1
#include <immintrin.h>
#include <cstdlib>
#include <string>
#else
#define AS_HAVE_AVX512_PATHS 0
#endif

namespace adashift {
namespace cpu {
namespace loops {

AS_VECTORIZE float sum(const float* x, int64_t n) {
  float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) acc += x[i];
  return acc;
}

AS_VECTORIZE void gate_forward(const float* __restrict x, float s, float* __restrict y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = math::gate(x[i], s);
}

AS_VECTORIZE float gate_shift_grad(const float* __restrict x, const float* __restrict dy, float s, int64_t n) {
  float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) acc += math::gate_grad(x[i], s, dy[i]).ds;
  return acc;
}

AS_VECTORIZE void gate_input_grad(const float* __restrict x, const float* __restrict dy, float s, float add,
                                  float* __restrict dx, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dx[i] = math::gate_grad(x[i], s, dy[i]).dx + add;
}

AS_VECTORIZE float gate_grads(const float* __restrict x, const float* __restrict dy, float s,
                              float* __restrict dx, int64_t n) {
  float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) {
    const math::GateGrad gg = math::gate_grad(x[i], s, dy[i]);
    dx[i] = gg.dx;
    acc += gg.ds;
  }
  return acc;
}

AS_VECTORIZE void add_scalar(float* __restrict x, float v, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] += v;
}

namespace {
constexpr int kLanes = 16;
__attribute__((always_inline)) inline float add_lanes(const float* a) {
  float h[8];
  for (int l = 0; l < 8; ++l) h[l] = a[l] + a[l + 8];
  for (int l = 0; l < 4; ++l) h[l] += h[l + 4];
  return (h[0] + h[2]) + (h[1] + h[3]);
}
// Runs body(i, lane) for i < n with lane = i % kLanes, whole rows of lanes vectorised.
template <typename Body>
__attribute__((always_inline)) inline void for_lanes(int64_t n, Body body) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) body(i + l, l);
  }
  for (int l = 0; i + l < n; ++l) body(i + l, l);
}
}  // namespace

AS_VECTORIZE float lane_sum(const float* __restrict x, int64_t n) {
  float acc[kLanes] = {};
  for_lanes(n, [&](int64_t i, int l) { acc[l] += x[i]; });
  return add_lanes(acc);
}

AS_VECTORIZE float gate_forward_sum(const float* __restrict x, float s, float* __restrict y,
                                    const float* __restrict next, int64_t n) {
  float acc[kLanes] = {};
  for_lanes(n, [&](int64_t i, int l) {
    y[i] = math::gate(x[i], s);
    acc[l] += next[i];
  });
  return add_lanes(acc);
}

AS_VECTORIZE void gate_forward_v(const float* __restrict x, const float* __restrict s, float* __restrict y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = math::gate(x[i], s[i]);
}

AS_VECTORIZE void gate_shift_grad_v(const float* __restrict x, const float* __restrict dy, const float* __restrict s,
                                    float* __restrict out, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = math::gate_grad(x[i], s[i], dy[i]).ds;
}

AS_VECTORIZE void gate_input_grad_v(const float* __restrict x, const float* __restrict dy, const float* __restrict s,
                                    const float* __restrict add, float* __restrict dx, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dx[i] = math::gate_grad(x[i], s[i], dy[i]).dx + add[i];
}

AS_VECTORIZE void gate_grads_v(const float* __restrict x, const float* __restrict dy, const float* __restrict s,
                               float* __restrict dx, float* __restrict ds, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const math::GateGrad gg = math::gate_grad(x[i], s[i], dy[i]);
    dx[i] = gg.dx;
    ds[i] = gg.ds;
  }
}

// One row of gate_grads_band: the direct gradient into o (with DX), the shift gradient's terms
// into cols (= on the band's first row, += after).
template <bool DX, bool FIRST>
__attribute__((always_inline)) inline void gate_grads_band_row(const float* __restrict xr, const float* __restrict dr,
                                                               const float* __restrict srow, float* __restrict o,
                                                               float* __restrict cols, int64_t W) {
#pragma omp simd
  for (int64_t w = 0; w < W; ++w) {
    const math::GateGrad gg = math::gate_grad(xr[w], srow[w], dr[w]);
    if (DX) o[w] = gg.dx;
    if (FIRST) cols[w] = gg.ds;
    else cols[w] += gg.ds;
  }
}

AS_VECTORIZE void gate_grads_band(const float* __restrict x, const float* __restrict dy, const float* __restrict srow,
                                  float* __restrict dx, float* __restrict cols, int rows, int64_t W) {
  for (int h = 0; h < rows; ++h) {
    const int64_t r = int64_t(h) * W;
    if (dx) {
      if (h == 0) gate_grads_band_row<true, true>(x + r, dy + r, srow, dx + r, cols, W);
      else gate_grads_band_row<true, false>(x + r, dy + r, srow, dx + r, cols, W);
    } else {
      if (h == 0) gate_grads_band_row<false, true>(x + r, dy + r, srow, nullptr, cols, W);
      else gate_grads_band_row<false, false>(x + r, dy + r, srow, nullptr, cols, W);
    }
  }
}

AS_VECTORIZE void gate_forward_band(const float* __restrict x, const float* __restrict srow, float* __restrict y,
                                    int rows, int64_t W) {
  for (int h = 0; h < rows; ++h) {
    const float* __restrict xr = x + int64_t(h) * W;
    float* __restrict o = y + int64_t(h) * W;
#pragma omp simd
    for (int64_t w = 0; w < W; ++w) o[w] = math::gate(xr[w], srow[w]);
  }
}

AS_VECTORIZE void add_v(float* __restrict x, const float* __restrict a, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] += a[i];
}

AS_VECTORIZE static void expand_cells_generic(const float* __restrict vals, const int* __restrict row0,
                                              const int* __restrict flat_cell, int Ph, int Pw, int64_t W,
                                              float* __restrict map) {
  for (int r = 0; r < Ph; ++r) {
    float* __restrict out = map + int64_t(row0[r]) * W;
    const float* __restrict v = vals + int64_t(r) * Pw;
    const int64_t n = int64_t(row0[r + 1] - row0[r]) * W;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) out[i] = v[flat_cell[i]];
  }
}

AS_VECTORIZE static void band_column_sums_generic(const float* __restrict x, int64_t W, const int* row0,
                                                  int bands, float* __restrict out) {
  for (int b = 0; b < bands; ++b) {
    float* __restrict acc = out + int64_t(b) * W;
    const float* first = x + int64_t(row0[b]) * W;
#pragma omp simd
    for (int64_t w = 0; w < W; ++w) acc[w] = first[w];
    for (int h = row0[b] + 1; h < row0[b + 1]; ++h) {
      const float* row = x + int64_t(h) * W;
#pragma omp simd
      for (int64_t w = 0; w < W; ++w) acc[w] += row[w];
    }
  }
}

#if AS_HAVE_AVX512_PATHS
// AVX-512 forms of the two grid helpers. A cell row's values (at most 16) sit in one register,
// so laying them out per pixel is one permute per 16 pixels (no gather); column sums use masked
// loads for the row's tail, so a short row (W = 28) costs two vectors, not a scalar epilogue.
// Both give the same bits as the generic forms (same additions in the same order).
__attribute__((target("avx512f"))) static void expand_cells_avx512(const float* vals, const int* row0,
                                                                  const int* flat_cell, int Ph, int Pw,
                                                                  int64_t W, float* map) {
  const __mmask16 vmask = __mmask16((1u << Pw) - 1u);
  for (int r = 0; r < Ph; ++r) {
    float* out = map + int64_t(row0[r]) * W;
    const __m512 v = _mm512_maskz_loadu_ps(vmask, vals + int64_t(r) * Pw);
    const int64_t n = int64_t(row0[r + 1] - row0[r]) * W;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
      _mm512_storeu_ps(out + i, _mm512_mask_permutexvar_ps(v, __mmask16(0xFFFF), _mm512_loadu_si512(flat_cell + i), v));
    if (i < n) {
      const __mmask16 m = __mmask16((1u << (n - i)) - 1u);
      _mm512_mask_storeu_ps(out + i, m, _mm512_mask_permutexvar_ps(v, m, _mm512_maskz_loadu_epi32(m, flat_cell + i), v));
    }
  }
}

// Row by row, with the band's NV column vectors held in registers: the plane is read once, in
// address order (a column-by-column walk jumps a row's stride per load and defeats the
// prefetchers on planes that do not fit the cache).
template <int NV>
__attribute__((target("avx512f"))) static void band_column_sums_rows(const float* x, int64_t W, const int* row0,
                                                                    int bands, float* out) {
  const __mmask16 tail = W % 16 == 0 ? __mmask16(0xFFFF) : __mmask16((1u << (W % 16)) - 1u);
  for (int b = 0; b < bands; ++b) {
    __m512 acc[NV];
    const float* r = x + int64_t(row0[b]) * W;
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) acc[v] = _mm512_maskz_loadu_ps(v == NV - 1 ? tail : __mmask16(0xFFFF), r + 16 * v);
    for (int h = row0[b] + 1; h < row0[b + 1]; ++h) {
      r = x + int64_t(h) * W;
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v)
        acc[v] = _mm512_add_ps(acc[v], _mm512_maskz_loadu_ps(v == NV - 1 ? tail : __mmask16(0xFFFF), r + 16 * v));
    }
    float* o = out + int64_t(b) * W;
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) _mm512_mask_storeu_ps(o + 16 * v, v == NV - 1 ? tail : __mmask16(0xFFFF), acc[v]);
  }
}

// Cell sums of bands straight from their rows (rows of up to 64 values): each band's column sums
// in NV registers as above, then each cell's columns added in order, one permute per column
// offset j (lane q of offset j takes column col0[q] + j, masked off past the cell's end or
// outside the register pair read). Same bits as band_column_sums then cells_from_columns: each
// cell is 0 + its first column + the next ... in column order. row0 null: one row per band.
template <int NV>
__attribute__((target("avx512f"))) static void band_cell_sums_rows(const float* x, int64_t W, const int* row0,
                                                                  int bands, const int* col0, int Pw,
                                                                  float* out) {
  static_assert(NV >= 1 && NV <= 4, "rows of up to 64 values");
  constexpr int kPairs = (NV + 1) / 2;
  const __mmask16 tail = W % 16 == 0 ? __mmask16(0xFFFF) : __mmask16((1u << (W % 16)) - 1u);
  const __mmask16 cells = __mmask16((1u << Pw) - 1u);
  const __m512i first = _mm512_maskz_loadu_epi32(cells, col0), end = _mm512_maskz_loadu_epi32(cells, col0 + 1);
  int widest = 0;
  for (int q = 0; q < Pw; ++q) widest = std::max(widest, col0[q + 1] - col0[q]);
  __m512i idx[64];
  __mmask16 take[64][kPairs];
  for (int j = 0; j < widest; ++j) {
    const __m512i col = _mm512_add_epi32(first, _mm512_set1_epi32(j));
    const __mmask16 in_cell = _mm512_mask_cmplt_epi32_mask(cells, col, end);
    idx[j] = col;  // permutes read the low 4 (one register) or 5 (a pair) bits
    for (int p = 0; p < kPairs; ++p)
      take[j][p] = _mm512_mask_cmpge_epi32_mask(in_cell, col, _mm512_set1_epi32(32 * p)) &
                   _mm512_cmplt_epi32_mask(col, _mm512_set1_epi32(32 * p + 32));
  }
  for (int b = 0; b < bands; ++b) {
    __m512 acc[2 * kPairs];
    const int h0 = row0 ? row0[b] : b, h1 = row0 ? row0[b + 1] : b + 1;
    const float* r = x + int64_t(h0) * W;
#pragma GCC unroll 4
    for (int v = 0; v < 2 * kPairs; ++v)
      acc[v] = v < NV ? _mm512_maskz_loadu_ps(v == NV - 1 ? tail : __mmask16(0xFFFF), r + 16 * v) : _mm512_setzero_ps();
    for (int h = h0 + 1; h < h1; ++h) {
      r = x + int64_t(h) * W;
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v)
        acc[v] = _mm512_add_ps(acc[v], _mm512_maskz_loadu_ps(v == NV - 1 ? tail : __mmask16(0xFFFF), r + 16 * v));
    }
    __m512 sum = _mm512_setzero_ps();
    for (int j = 0; j < widest; ++j)
#pragma GCC unroll 2
      for (int p = 0; p < kPairs; ++p)
        sum = _mm512_mask_add_ps(sum, take[j][p], sum,
                                 NV == 1 ? _mm512_mask_permutexvar_ps(acc[0], __mmask16(0xFFFF), idx[j], acc[0])
                                         : _mm512_permutex2var_ps(acc[2 * p], idx[j], acc[2 * p + 1]));
    _mm512_mask_storeu_ps(out + int64_t(b) * Pw, cells, sum);
  }
}

using BandCellSums = void (*)(const float*, int64_t, const int*, int, const int*, int, float*);
static BandCellSums band_cell_sums_for(int64_t W) {
  if (W <= 16) return &band_cell_sums_rows<1>;
  if (W <= 32) return &band_cell_sums_rows<2>;
  if (W <= 48) return &band_cell_sums_rows<3>;
  if (W <= 64) return &band_cell_sums_rows<4>;
  return nullptr;
}

using BandSums = void (*)(const float*, int64_t, const int*, int, float*);
template <int... NV>
static BandSums band_sums_for(int64_t W, std::integer_sequence<int, NV...>) {
  BandSums f = nullptr;
  ((W > 16 * (NV - 1) && W <= 16 * NV ? (f = &band_column_sums_rows<NV>, 0) : 0), ...);
  return f;
}

#endif

// ADASHIFT_CPU_GENERIC=1 turns these paths off (the tests compare the two).
bool avx512_paths() {
#if AS_HAVE_AVX512_PATHS
  static const bool yes = __builtin_cpu_supports("avx512f") && !(std::getenv("ADASHIFT_CPU_GENERIC") &&
                                                                  std::string(std::getenv("ADASHIFT_CPU_GENERIC")) == "1");
  return yes;
#else
  return false;
#endif
}

void expand_cells(const float* vals, const int* row0, const int* flat_cell, int Ph, int Pw, int64_t W, float* map) {
#if AS_HAVE_AVX512_PATHS
  if (Pw <= 16 && avx512_paths()) return expand_cells_avx512(vals, row0, flat_cell, Ph, Pw, W, map);
#endif
  expand_cells_generic(vals, row0, flat_cell, Ph, Pw, W, map);
}

void band_column_sums(const float* x, int64_t W, const int* row0, int bands, float* out) {
#if AS_HAVE_AVX512_PATHS
  // Rows of up to 256 values (16 registers); wider ones take the generic loop, which is
  // row by row too.
  if (avx512_paths())
    if (BandSums f = band_sums_for(W, std::integer_sequence<int, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16>{})) return f(x, W, row0, bands, out);
#endif
  band_column_sums_generic(x, W, row0, bands, out);
}

AS_VECTORIZE static void cells_from_columns_generic(const float* cols, int64_t W, int bands, const int* col0,
                                                    int Pw, float* out) {
  for (int b = 0; b < bands; ++b)
    for (int q = 0; q < Pw; ++q) {
      const float* c = cols + int64_t(b) * W;
      float acc = 0.0f;
      for (int w = col0[q]; w < col0[q + 1]; ++w) acc += c[w];
      out[int64_t(b) * Pw + q] = acc;
    }
}

void cells_from_columns(const float* cols, int64_t W, int bands, const int* col0, int Pw, float* out) {
#if AS_HAVE_AVX512_PATHS
  if (Pw <= 16 && avx512_paths())
    if (BandCellSums f = band_cell_sums_for(W)) return f(cols, W, nullptr, bands, col0, Pw, out);
#endif
  cells_from_columns_generic(cols, W, bands, col0, Pw, out);
}

void band_cell_sums(const float* x, int64_t W, const int* row0, int bands, const int* col0, int Pw,
                    float* cols, float* out) {
#if AS_HAVE_AVX512_PATHS
  if (Pw <= 16 && avx512_paths())
    if (BandCellSums f = band_cell_sums_for(W)) return f(x, W, row0, bands, col0, Pw, out);
#endif
  band_column_sums(x, W, row0, bands, cols);
  cells_from_columns_generic(cols, W, bands, col0, Pw, out);
}

// ---- row copies ---------------------------------------------------------------------------------
#if AS_HAVE_AVX512_PATHS
__attribute__((target("avx512f"))) static void copy_rows_avx512(const float* src, int64_t lds, float* dst,
                                                               int64_t ldd, int64_t rows, int64_t n) {
  const int64_t full = n / 16;
  const __mmask16 tail = __mmask16((1u << (n % 16)) - 1u);
  for (int64_t r = 0; r < rows; ++r) {
    const float* s = src + r * lds;
    float* d = dst + r * ldd;
    for (int64_t i = 0; i < full; ++i) _mm512_storeu_ps(d + 16 * i, _mm512_loadu_ps(s + 16 * i));
    if (tail) _mm512_mask_storeu_ps(d + 16 * full, tail, _mm512_maskz_loadu_ps(tail, s + 16 * full));
  }
}

// Every second element: 16 outputs from two loads of 16 through one two-register permute; the
// last chunk's loads are masked to the elements it takes (nothing read past src's row).
__attribute__((target("avx512f"))) static void copy_rows_step2_avx512(const float* src, int64_t lds, float* dst,
                                                                     int64_t ldd, int64_t rows, int64_t n) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const int64_t full = n / 16, m = n % 16;
  // the tail takes elements 0, 2, ..., 2m - 2 of its 32: the first 2m - 1 (of the low 16 at most)
  const int lo_count = m ? int(std::min<int64_t>(16, 2 * m - 1)) : 0;
  const int hi_count = m ? int(std::max<int64_t>(0, 2 * m - 1 - 16)) : 0;
  const __mmask16 tail = __mmask16((1u << m) - 1u);
  const __mmask16 lo_mask = __mmask16((1u << lo_count) - 1u), hi_mask = __mmask16((1u << hi_count) - 1u);
  for (int64_t r = 0; r < rows; ++r) {
    const float* s = src + r * lds;
    float* d = dst + r * ldd;
    for (int64_t i = 0; i < full; ++i) {
      // the last full chunk's element 31 lies one past its last use: masked off
      const __mmask16 hm = i + 1 == full && m == 0 ? __mmask16(0x7FFF) : __mmask16(0xFFFF);
      const __m512 lo = _mm512_loadu_ps(s + 32 * i), hi = _mm512_maskz_loadu_ps(hm, s + 32 * i + 16);
      _mm512_storeu_ps(d + 16 * i, _mm512_permutex2var_ps(lo, even, hi));
    }
    if (m) {
      const __m512 lo = _mm512_maskz_loadu_ps(lo_mask, s + 32 * full);
      const __m512 hi = _mm512_maskz_loadu_ps(hi_mask, s + 32 * full + 16);
      _mm512_mask_storeu_ps(d + 16 * full, tail, _mm512_permutex2var_ps(lo, even, hi));
    }
  }
}

__attribute__((target("avx512f"))) static void add_rows_avx512(const float* src, int64_t lds, float add, float* dst,
                                                              int64_t ldd, int64_t rows, int64_t n) {
  const int64_t full = n / 16;
  const __mmask16 tail = __mmask16((1u << (n % 16)) - 1u);
  const __m512 a = _mm512_set1_ps(add);
  for (int64_t r = 0; r < rows; ++r) {
    const float* s = src + r * lds;
    float* d = dst + r * ldd;
    for (int64_t i = 0; i < full; ++i) _mm512_storeu_ps(d + 16 * i, _mm512_add_ps(_mm512_loadu_ps(s + 16 * i), a));
    if (tail) _mm512_mask_storeu_ps(d + 16 * full, tail, _mm512_add_ps(_mm512_maskz_loadu_ps(tail, s + 16 * full), a));
  }
}
#endif

AS_VECTORIZE static void add_rows_generic(const float* __restrict src, int64_t lds, float add, float* __restrict dst,
                                          int64_t ldd, int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* __restrict s = src + r * lds;
    float* __restrict d = dst + r * ldd;
#pragma omp simd
    for (int64_t k = 0; k < n; ++k) d[k] = s[k] + add;
  }
}

void add_rows(const float* src, int64_t lds, float add, float* dst, int64_t ldd, int64_t rows, int64_t n) {
  if (rows <= 0 || n <= 0) return;
#if AS_HAVE_AVX512_PATHS
  if (avx512_paths()) return add_rows_avx512(src, lds, add, dst, ldd, rows, n);
#endif
  add_rows_generic(src, lds, add, dst, ldd, rows, n);
}

void copy_rows(const float* src, int64_t lds, int64_t step, float* dst, int64_t ldd, int64_t rows, int64_t n) {
  if (rows <= 0 || n <= 0) return;
#if AS_HAVE_AVX512_PATHS
  if (step == 1 && avx512_paths()) return copy_rows_avx512(src, lds, dst, ldd, rows, n);
  if (step == 2 && avx512_paths()) return copy_rows_step2_avx512(src, lds, dst, ldd, rows, n);
#endif
  for (int64_t r = 0; r < rows; ++r) {
    if (step == 1) {
      std::memcpy(dst + r * ldd, src + r * lds, size_t(n) * sizeof(float));
    } else {
      for (int64_t k = 0; k < n; ++k) dst[r * ldd + k] = src[r * lds + k * step];
    }
  }
}

// ---- transposes ---------------------------------------------------------------------------------
#if AS_HAVE_AVX512_PATHS
// dst[c * ldd + r] = src[r * lds + c] for an 8 x 8 block, through eight AVX registers.
__attribute__((target("avx2"))) static void transpose8x8(const float* src, int64_t lds, float* dst,
                                                        int64_t ldd) {
  __m256 r0 = _mm256_loadu_ps(src + 0 * lds), r1 = _mm256_loadu_ps(src + 1 * lds);
  __m256 r2 = _mm256_loadu_ps(src + 2 * lds), r3 = _mm256_loadu_ps(src + 3 * lds);
  __m256 r4 = _mm256_loadu_ps(src + 4 * lds), r5 = _mm256_loadu_ps(src + 5 * lds);
  __m256 r6 = _mm256_loadu_ps(src + 6 * lds), r7 = _mm256_loadu_ps(src + 7 * lds);
  __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
  __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
  __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
  __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
  __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  _mm256_storeu_ps(dst + 0 * ldd, _mm256_permute2f128_ps(u0, u4, 0x20));
  _mm256_storeu_ps(dst + 1 * ldd, _mm256_permute2f128_ps(u1, u5, 0x20));
  _mm256_storeu_ps(dst + 2 * ldd, _mm256_permute2f128_ps(u2, u6, 0x20));
  _mm256_storeu_ps(dst + 3 * ldd, _mm256_permute2f128_ps(u3, u7, 0x20));
  _mm256_storeu_ps(dst + 4 * ldd, _mm256_permute2f128_ps(u0, u4, 0x31));
  _mm256_storeu_ps(dst + 5 * ldd, _mm256_permute2f128_ps(u1, u5, 0x31));
  _mm256_storeu_ps(dst + 6 * ldd, _mm256_permute2f128_ps(u2, u6, 0x31));
  _mm256_storeu_ps(dst + 7 * ldd, _mm256_permute2f128_ps(u3, u7, 0x31));
}

static bool has_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2");
  return yes;
}
#endif

void transpose(const float* src, int64_t lds, int64_t rows, int64_t cols, float* dst, int64_t ldd) {
  int64_t r0 = 0;
#if AS_HAVE_AVX512_PATHS
  if (has_avx2()) {
    for (; r0 + 8 <= rows; r0 += 8) {
      int64_t k = 0;
      for (; k + 8 <= cols; k += 8) transpose8x8(src + r0 * lds + k, lds, dst + k * ldd + r0, ldd);
      for (; k < cols; ++k)
        for (int64_t r = r0; r < r0 + 8; ++r) dst[k * ldd + r] = src[r * lds + k];
    }
  }
#endif
  for (int64_t r = r0; r < rows; ++r)
    for (int64_t k = 0; k < cols; ++k) dst[k * ldd + r] = src[r * lds + k];
}

AS_VECTORIZE void softmax_rows(const float* x, int64_t rows, int64_t n, float* y) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * n;
    float* yr = y + r * n;
    float mx = xr[0];
#pragma omp simd reduction(max : mx)
    for (int64_t j = 1; j < n; ++j) mx = mx > xr[j] ? mx : xr[j];
    // The terms are positive and at most 1 (one of them exactly 1), so a float sum loses
    // nothing that matters here (relative error below n * 2^-24).
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < n; ++j) {
      const float e = math::vexp(xr[j] - mx);
      yr[j] = e;
      s += e;
    }
    const float inv = 1.0f / s;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) yr[j] *= inv;
  }
}

AS_VECTORIZE void softmax_backward_rows(const float* y, const float* dy, int64_t rows, int64_t n, float* dx) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* yr = y + r * n;
    const float* dyr = dy + r * n;
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < n; ++j) s += double(yr[j]) * double(dyr[j]);
    const float sf = float(s);
    float* dxr = dx + r * n;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) dxr[j] = yr[j] * (dyr[j] - sf);
  }
}

// LayerNorm moments (the mean and the mean squared deviation, both passes in double) of R rows
// at once. The rows of the context networks are 16 to 64 channels, a few vectors: one row's
// sums are a short chain of dependent adds and a horizontal reduction, so its time is their
// latency; R rows in one loop keep R independent chains in flight. Each row's sums are the ones
// a loop over that row alone adds (the same lanes, the same order).
template <int R>
__attribute__((always_inline)) inline void rows_moments(const float* __restrict x, int64_t C, double* mu,
                                                        double* var) {
  static_assert(R == 1 || R == 4, "one or four rows");
  const float* __restrict x0 = x;
  const float* __restrict x1 = x + (R > 1 ? C : 0);
  const float* __restrict x2 = x + (R > 1 ? 2 * C : 0);
  const float* __restrict x3 = x + (R > 1 ? 3 * C : 0);
  double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
  for (int64_t j = 0; j < C; ++j) {
    s0 += double(x0[j]);
    if (R > 1) {
      s1 += double(x1[j]);
      s2 += double(x2[j]);
      s3 += double(x3[j]);
    }
  }
  const double m0 = s0 / double(C), m1 = s1 / double(C), m2 = s2 / double(C), m3 = s3 / double(C);
  double v0 = 0.0, v1 = 0.0, v2 = 0.0, v3 = 0.0;
#pragma omp simd reduction(+ : v0, v1, v2, v3)
  for (int64_t j = 0; j < C; ++j) {
    const double d0 = double(x0[j]) - m0;
    v0 += d0 * d0;
    if (R > 1) {
      const double d1 = double(x1[j]) - m1, d2 = double(x2[j]) - m2, d3 = double(x3[j]) - m3;
      v1 += d1 * d1;
      v2 += d2 * d2;
      v3 += d3 * d3;
    }
  }
  const double m[4] = {m0, m1, m2, m3}, v[4] = {v0, v1, v2, v3};
  for (int i = 0; i < R; ++i) {
    mu[i] = m[i];
    var[i] = v[i] / double(C);
  }
}

// Per row: the statistics, and into y (x - m) * rs * w + b.
// Rows go in blocks: the moments of a block's rows first (four rows at a time), then their
// 1 / sqrt(var + eps) as one vector operation. Row by row, each row waited for its own sums,
// square root and division; the values are the same (the sums as above, both correctly rounded).
AS_VECTORIZE static void norm_rows(const float* __restrict x, const float* __restrict w, const float* __restrict b,
                                   float eps, int64_t rows, int64_t C, float* __restrict y,
                                   float* __restrict mean, float* __restrict rstd) {
  constexpr int64_t kBlock = 16;
  for (int64_t r0 = 0; r0 < rows; r0 += kBlock) {
    const int64_t nb = std::min(kBlock, rows - r0);
    double mu[kBlock], var[kBlock];
    int64_t q = 0;  // four rows at a time, then one
    for (; q + 4 <= nb; q += 4) rows_moments<4>(x + (r0 + q) * C, C, mu + q, var + q);
    for (; q < nb; ++q) rows_moments<1>(x + (r0 + q) * C, C, mu + q, var + q);
#pragma omp simd
    for (int64_t i = 0; i < nb; ++i) {
      rstd[r0 + i] = float(1.0 / __builtin_sqrt(var[i] + double(eps)));
      mean[r0 + i] = float(mu[i]);
    }
    for (int64_t r = r0; r < r0 + nb; ++r) {
      const float* xr = x + r * C;
      const float m = mean[r], rs = rstd[r];
      float* yr = y + r * C;
#pragma omp simd
      for (int64_t j = 0; j < C; ++j) yr[j] = (xr[j] - m) * rs * w[j] + b[j];
    }
  }
}

void layernorm_rows(const float* x, const float* w, const float* b, float eps, int64_t rows, int64_t C,
                    float* y, float* mean, float* rstd) {
  norm_rows(x, w, b, eps, rows, C, y, mean, rstd);
}

// The statistics of T tokens held channel-major: token t's C values are x[c * T + t]. The sums run
// down the channels with the tokens in the vector lanes (no horizontal reduction per token),
// in double like row_moments, chunk by chunk of kLanes tokens.
AS_VECTORIZE void col_moments(const float* __restrict x, int64_t C, int64_t T, float eps,
                              float* __restrict mean, float* __restrict rstd) {
  constexpr int64_t kLanes = 64;
  for (int64_t t0 = 0; t0 < T; t0 += kLanes) {
    const int64_t nt = std::min(kLanes, T - t0);
    const float* xc = x + t0;
    double mu[kLanes], v[kLanes];
#pragma omp simd
    for (int64_t t = 0; t < nt; ++t) mu[t] = 0.0;
    for (int64_t c = 0; c < C; ++c) {
#pragma omp simd
      for (int64_t t = 0; t < nt; ++t) mu[t] += double(xc[c * T + t]);
    }
#pragma omp simd
    for (int64_t t = 0; t < nt; ++t) {
      mu[t] /= double(C);
      v[t] = 0.0;
    }
    for (int64_t c = 0; c < C; ++c) {
#pragma omp simd
      for (int64_t t = 0; t < nt; ++t) {
        const double d = double(xc[c * T + t]) - mu[t];
        v[t] += d * d;
      }
    }
#pragma omp simd
    for (int64_t t = 0; t < nt; ++t) {
      rstd[t0 + t] = float(1.0 / __builtin_sqrt(v[t] / double(C) + double(eps)));
      mean[t0 + t] = float(mu[t]);
    }
  }
}

AS_VECTORIZE void norm_affine3_rows(const float* __restrict x, const float* __restrict mean,
                                    const float* __restrict rstd, int64_t rows, int64_t C,
                                    const float* const* w, const float* const* b, float* const* y,
                                    float* __restrict xhat) {
  const float *__restrict w0 = w[0], *__restrict w1 = w[1], *__restrict w2 = w[2];
  const float *__restrict b0 = b[0], *__restrict b1 = b[1], *__restrict b2 = b[2];
  for (int64_t r = 0; r < rows; ++r) {
    const float* __restrict xr = x + r * C;
    const float m = mean[r], rs = rstd[r];
    float *__restrict y0 = y[0] + r * C, *__restrict y1 = y[1] + r * C, *__restrict y2 = y[2] + r * C;
    float* __restrict hr = xhat ? xhat + r * C : nullptr;
#pragma omp simd
    for (int64_t j = 0; j < C; ++j) {
      const float h = (xr[j] - m) * rs;
      if (hr) hr[j] = h;  // a loop-invariant test
      y0[j] = h * w0[j] + b0[j];
      y1[j] = h * w1[j] + b1[j];
      y2[j] = h * w2[j] + b2[j];
    }
  }
}

// Both LayerNorm backward loops below go over a block of rows twice: first each row's two sums
// (of g and of g xhat, in double, four rows at a time as in rows_moments), with g stored in dx,
// then dx from g and the parameter gradients. (Row by row, each row waited on its own sums.)
// The general LayerNorm's parameter gradients sum in double (any number of rows; the CUDA
// kernel sums in double too, and the two agree to that precision); the q/k/v backward of
// AdaShift-MA sums one sample's tokens (49 with the default grid) in float, which halved that
// loop's time: six accumulators per channel converted every element to double.
// Not contracted into FMAs (the x86-64-v3/v4 clones would fuse g - ma - xhat * mb, and the
// products of g): the values do not depend on the host's instruction set, and g = dy w is
// rounded before the subtraction, as the CUDA kernel's __fmul_rn does, so that when a row's
// variance is ~0 (C == 1: rstd ~ 1/sqrt(eps)) g and its mean cancel exactly instead of leaving
// the product's rounding error times rstd.
#if defined(__GNUC__) && !defined(__clang__)
#define AS_NO_CONTRACT __attribute__((optimize("fp-contract=off")))
#else
#define AS_NO_CONTRACT
#endif
constexpr int64_t kNormBackBlock = 16;

// Pass one for the R rows (1 or 4) from row r on: dx[row] = g(row, j), and the rows' means of
// g and of g * xhat(row, j) into ma, mb.
template <int R, class G, class H>
AS_NO_CONTRACT __attribute__((always_inline)) inline void norm_back_sums(int64_t r, int64_t C, G g, H xhat,
                                                                        float* __restrict dx, float* ma, float* mb) {
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
  static_assert(R == 1 || R == 4, "one or four rows");
  double sa0 = 0.0, sa1 = 0.0, sa2 = 0.0, sa3 = 0.0, sb0 = 0.0, sb1 = 0.0, sb2 = 0.0, sb3 = 0.0;
  float* __restrict d0 = dx + r * C;
#pragma omp simd reduction(+ : sa0, sa1, sa2, sa3, sb0, sb1, sb2, sb3)
  for (int64_t j = 0; j < C; ++j) {
    const float g0 = g(r, j);
    d0[j] = g0;
    sa0 += double(g0);
    sb0 += double(g0) * double(xhat(r, j));
    if (R > 1) {
      const float g1 = g(r + 1, j), g2 = g(r + 2, j), g3 = g(r + 3, j);
      d0[C + j] = g1;
      d0[2 * C + j] = g2;
      d0[3 * C + j] = g3;
      sa1 += double(g1);
      sa2 += double(g2);
      sa3 += double(g3);
      sb1 += double(g1) * double(xhat(r + 1, j));
      sb2 += double(g2) * double(xhat(r + 2, j));
      sb3 += double(g3) * double(xhat(r + 3, j));
    }
  }
  const double sa[4] = {sa0, sa1, sa2, sa3}, sb[4] = {sb0, sb1, sb2, sb3};
  for (int q = 0; q < R; ++q) {
    ma[q] = float(sa[q] / double(C));
    mb[q] = float(sb[q] / double(C));
  }
}

// Both passes over rows [0, rows) in blocks: pass one as above, then per row
// apply(row, j, rstd * (g - mean(g) - xhat * mean(g xhat))) for each column.
template <class G, class H, class Apply>
AS_NO_CONTRACT __attribute__((always_inline)) inline void norm_back_rows(int64_t rows, int64_t C, const float* __restrict rstd,
                                                                        G g, H xhat, float* __restrict dx, Apply apply) {
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
  for (int64_t r0 = 0; r0 < rows; r0 += kNormBackBlock) {
    const int64_t nb = std::min(kNormBackBlock, rows - r0);
    float ma[kNormBackBlock], mb[kNormBackBlock];
    int64_t i = 0;
    for (; i + 4 <= nb; i += 4) norm_back_sums<4>(r0 + i, C, g, xhat, dx, ma + i, mb + i);
    for (; i < nb; ++i) norm_back_sums<1>(r0 + i, C, g, xhat, dx, ma + i, mb + i);
    for (int64_t r = r0; r < r0 + nb; ++r) {
      const float m_a = ma[r - r0], m_b = mb[r - r0], rs = rstd[r];
      float* __restrict dxr = dx + r * C;
#pragma omp simd
      for (int64_t j = 0; j < C; ++j) {
        const float h = xhat(r, j);
        apply(r, j, h, rs * (dxr[j] - m_a - h * m_b));
      }
    }
  }
}

AS_NO_CONTRACT AS_VECTORIZE void layernorm3_backward_rows(const float* const* dy, const float* __restrict xhat,
                                                          const float* __restrict rstd, const float* const* w,
                                                          int64_t rows, int64_t C, float* __restrict dx,
                                                          float* const* acc) {
  const float *__restrict w0 = w[0], *__restrict w1 = w[1], *__restrict w2 = w[2];
  const float *__restrict y0 = dy[0], *__restrict y1 = dy[1], *__restrict y2 = dy[2];
  float *__restrict a0 = acc[0], *__restrict a1 = acc[1], *__restrict a2 = acc[2];
  float *__restrict a3 = acc[3], *__restrict a4 = acc[4], *__restrict a5 = acc[5];
  norm_back_rows(
      rows, C, rstd,
      [&](int64_t r, int64_t j) { return y0[r * C + j] * w0[j] + y1[r * C + j] * w1[j] + y2[r * C + j] * w2[j]; },
      [&](int64_t r, int64_t j) { return xhat[r * C + j]; }, dx,
      [&](int64_t r, int64_t j, float h, float v) {
        dx[r * C + j] = v;
        a0[j] += y0[r * C + j] * h;
        a1[j] += y0[r * C + j];
        a2[j] += y1[r * C + j] * h;
        a3[j] += y1[r * C + j];
        a4[j] += y2[r * C + j] * h;
        a5[j] += y2[r * C + j];
      });
}

// dx = rstd * (dy w - mean(dy w) - xhat * mean(dy w xhat)); dw += dy xhat, db += dy
AS_NO_CONTRACT AS_VECTORIZE void layernorm_backward_rows(const float* __restrict dy, const float* __restrict x,
                                                         const float* __restrict mean, const float* __restrict rstd,
                                                         const float* __restrict w, int64_t rows, int64_t C,
                                                         float* __restrict dx, double* __restrict acc_w,
                                                         double* __restrict acc_b) {
  norm_back_rows(
      rows, C, rstd, [&](int64_t r, int64_t j) { return dy[r * C + j] * w[j]; },
      [&](int64_t r, int64_t j) { return (x[r * C + j] - mean[r]) * rstd[r]; }, dx,
      [&](int64_t r, int64_t j, float h, float v) {
        dx[r * C + j] = v;
        acc_w[j] += double(dy[r * C + j]) * double(h);
        acc_b[j] += double(dy[r * C + j]);
      });
}

#define AS_MAP1(name, f)                                                                  \
  AS_VECTORIZE static void name(const float* __restrict x, float* __restrict y, int64_t n) { \
    _Pragma("omp simd") for (int64_t i = 0; i < n; ++i) y[i] = f(x[i]);                     \
  }
#define AS_MAP2(name, f)                                                                  \
  AS_VECTORIZE static void name(const float* __restrict x, const float* __restrict dy,    \
                                float* __restrict dx, int64_t n) {                        \
    _Pragma("omp simd") for (int64_t i = 0; i < n; ++i) dx[i] = f(x[i], dy[i]);           \
  }
AS_MAP1(relu_fwd, math::relu)
AS_MAP1(gelu_fwd, math::gelu)
AS_MAP1(gelu_tanh_fwd, math::gelu_tanh)
AS_MAP1(silu_fwd, math::silu)
AS_MAP2(relu_bwd, math::relu_grad)
AS_MAP2(gelu_bwd, math::gelu_grad)
AS_MAP2(gelu_tanh_bwd, math::gelu_tanh_grad)
AS_MAP2(silu_bwd, math::silu_grad)

void act_forward(Act a, const float* x, float* y, int64_t n) {
  switch (a) {
    case Act::ReLU: relu_fwd(x, y, n); break;
    case Act::GELU: gelu_fwd(x, y, n); break;
    case Act::GELUTanh: gelu_tanh_fwd(x, y, n); break;
    case Act::SiLU: silu_fwd(x, y, n); break;
  }
}

void act_backward(Act a, const float* x, const float* dy, float* dx, int64_t n) {
  switch (a) {
    case Act::ReLU: relu_bwd(x, dy, dx, n); break;
    case Act::GELU: gelu_bwd(x, dy, dx, n); break;
    case Act::GELUTanh: gelu_tanh_bwd(x, dy, dx, n); break;
    case Act::SiLU: silu_bwd(x, dy, dx, n); break;
  }
}

}  // namespace loops
}  // namespace cpu
}  // namespace adashift

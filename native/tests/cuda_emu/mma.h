// CPU emulation of the part of CUDA's warp matrix API (<mma.h>, nvcuda::wmma) that the kernels
// use: the TF32 16x16x8 shape, fragments of matrix_a / matrix_b (row or column major) and a float
// accumulator; fill_fragment, load_matrix_sync, mma_sync, store_matrix_sync, __float_to_tf32.
//
// The GPU spreads a fragment's elements over the warp's lanes in a layout the API leaves
// unspecified; a kernel may load, multiply, store and apply one operation to every element,
// nothing that depends on where an element sits. The emulation uses a layout of its own that no
// GPU uses, so a kernel that leans on a position gets wrong numbers here:
//   - matrix_a and matrix_b fragments hold the whole 16x8 (8x16) tile in every lane;
//   - an accumulator holds 8 elements per lane, element t of lane l being entry l + 32 t of the
//     16x16 tile in row-major order; mma_sync computes each lane's own entries.
// Each load, multiply and store is a warp-wide barrier with the shuffles' checks (every lane of a
// full warp at the same call: a divergent or partial warp stops the run), and the documented
// preconditions are checked: pointers 256-bit aligned, ldm a multiple of 4 floats, and TF32
// operands already rounded by __float_to_tf32 (low 13 bits of the float clear).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include "cuda_runtime.h"

namespace nvcuda {
namespace wmma {

struct row_major {};
struct col_major {};
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
namespace precision {
struct tf32 {};
}  // namespace precision
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
class fragment;

template <typename Layout>
class fragment<matrix_a, 16, 16, 8, precision::tf32, Layout> {
 public:
  enum { num_elements = 16 * 8 };  // (m, k) at m * 8 + k
  float x[num_elements];
};
template <typename Layout>
class fragment<matrix_b, 16, 16, 8, precision::tf32, Layout> {
 public:
  enum { num_elements = 8 * 16 };  // (k, n) at k * 16 + n
  float x[num_elements];
};
template <>
class fragment<accumulator, 16, 16, 8, float, void> {
 public:
  enum { num_elements = 8 };
  float x[num_elements];
};

// Round to nearest, ties away from zero, to the 10-bit mantissa (cvt.rna.tf32.f32); the result is
// a float whose low 13 bits are zero. Infinities and NaN pass through.
inline float __float_to_tf32(float in) {
  uint32_t b;
  std::memcpy(&b, &in, 4);
  if ((b & 0x7f800000u) != 0x7f800000u) b = (b + 0x1000u) & 0xffffe000u;
  float r;
  std::memcpy(&r, &b, 4);
  return r;
}

namespace emu_detail {

inline unsigned lane() {
  const uint3 t = ::emu::t_thread_idx;
  const dim3 b = ::emu::g_block_dim;
  return (t.x + b.x * (t.y + b.y * t.z)) & 31u;
}
// Every lane of a full warp must reach the same call: the shuffle machinery checks it (and
// stops a warp of fewer than 32 lanes).
inline void warp_collective(const char* file, int line) {
  ::emu::shfl_xor(0xffffffffu, 0, 0, file, line);
}
inline void check_ptr(const void* p, unsigned ldm, const char* what, const char* file, int line) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0)
    ::emu::fail_in_kernel("%s at %s:%d: pointer %p is not 256-bit (32-byte) aligned", what, file,
                          line, p);
  if (ldm % 4 != 0)
    ::emu::fail_in_kernel("%s at %s:%d: ldm %u is not a multiple of 4 floats", what, file, line,
                          ldm);
}
inline void check_tf32(float v, const char* which, const char* file, int line) {
  uint32_t b;
  std::memcpy(&b, &v, 4);
  if ((b & 0x7f800000u) != 0x7f800000u && (b & 0x1fffu) != 0)
    ::emu::fail_in_kernel("mma_sync at %s:%d: a %s element (%.9g) is not a TF32 value; round "
                          "operands with __float_to_tf32 first",
                          file, line, which, double(v));
}

}  // namespace emu_detail

template <typename Use, int M, int N, int K, typename T, typename Layout>
inline void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, float v) {
  for (int i = 0; i < fragment<Use, M, N, K, T, Layout>::num_elements; ++i) f.x[i] = v;
}

// matrix_a is a 16 x 8 tile (m, k), matrix_b an 8 x 16 tile (k, n); either may be stored row- or
// column-major.
template <typename Use, typename Layout>
inline void load_matrix_sync(fragment<Use, 16, 16, 8, precision::tf32, Layout>& f, const float* p,
                             unsigned ldm, const char* file = __builtin_FILE(),
                             int line = __builtin_LINE()) {
  emu_detail::warp_collective(file, line);
  emu_detail::check_ptr(p, ldm, "load_matrix_sync", file, line);
  constexpr bool row = std::is_same<Layout, row_major>::value;
  constexpr unsigned rows = std::is_same<Use, matrix_a>::value ? 16 : 8, cols = 128 / rows;
  for (unsigned r = 0; r < rows; ++r)
    for (unsigned c = 0; c < cols; ++c) f.x[r * cols + c] = row ? p[r * ldm + c] : p[c * ldm + r];
}

// d = a b + c. Products of TF32 values are exact in float; the sum is taken in k order.
template <typename LA, typename LB>
inline void mma_sync(fragment<accumulator, 16, 16, 8, float>& d,
                     const fragment<matrix_a, 16, 16, 8, precision::tf32, LA>& a,
                     const fragment<matrix_b, 16, 16, 8, precision::tf32, LB>& b,
                     const fragment<accumulator, 16, 16, 8, float>& c,
                     const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  emu_detail::warp_collective(file, line);
  for (int i = 0; i < 128; ++i) {
    emu_detail::check_tf32(a.x[i], "matrix_a", file, line);
    emu_detail::check_tf32(b.x[i], "matrix_b", file, line);
  }
  const unsigned l = emu_detail::lane();
  float out[8];
  for (int t = 0; t < 8; ++t) {
    const unsigned pos = l + 32u * unsigned(t), r = pos / 16, col = pos % 16;
    float s = c.x[t];
    for (int k = 0; k < 8; ++k) s = std::fmaf(a.x[r * 8 + k], b.x[k * 16 + col], s);
    out[t] = s;
  }
  for (int t = 0; t < 8; ++t) d.x[t] = out[t];
}

inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 8, float>& f,
                              unsigned ldm, layout_t layout, const char* file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
  emu_detail::warp_collective(file, line);
  emu_detail::check_ptr(p, ldm, "store_matrix_sync", file, line);
  const unsigned l = emu_detail::lane();
  for (int t = 0; t < 8; ++t) {
    const unsigned pos = l + 32u * unsigned(t), r = pos / 16, col = pos % 16;
    p[layout == mem_row_major ? r * ldm + col : col * ldm + r] = f.x[t];
  }
}

}  // namespace wmma
}  // namespace nvcuda

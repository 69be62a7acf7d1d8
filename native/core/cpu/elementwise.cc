// CPU element-wise kernels: contiguous loops over chunks from the thread pool, written so the
// compiler vectorises them (no aliasing across a chunk, no branches in the hot loop).
#include "../ops/elementwise.h"
#include "../math.h"
#include "loops.h"
#include "reduce.h"

namespace adashift {
namespace cpu {

constexpr int64_t kGrain = 1 << 15;  // elements per chunk below which a thread is not worth it

template <typename F>
static void for_each(int64_t n, F f) {
  parallel_for(n, kGrain, [&](int64_t b, int64_t e) { f(b, e); });
}

void fill(float* out, float v, int64_t n) {
  for_each(n, [&](int64_t b, int64_t e) { for (int64_t i = b; i < e; ++i) out[i] = v; });
}

void rand(float* out, int64_t n, RandKind kind, float a, float b, uint64_t seed, uint64_t offset) {
  for_each(n, [&](int64_t i0, int64_t i1) {
    if (kind == RandKind::Uniform)
      for (int64_t i = i0; i < i1; ++i) out[i] = math::rand_uniform(seed, offset, i, a, b);
    else
      for (int64_t i = i0; i < i1; ++i) out[i] = math::rand_normal(seed, offset, i, a, b);
  });
}

void binary(Binary op, const float* a, const float* b, float* out, int64_t n) {
  for_each(n, [&](int64_t i0, int64_t i1) {
    switch (op) {
      case Binary::Add: for (int64_t i = i0; i < i1; ++i) out[i] = a[i] + b[i]; break;
      case Binary::Sub: for (int64_t i = i0; i < i1; ++i) out[i] = a[i] - b[i]; break;
      case Binary::Mul: for (int64_t i = i0; i < i1; ++i) out[i] = a[i] * b[i]; break;
      case Binary::Div: for (int64_t i = i0; i < i1; ++i) out[i] = a[i] / b[i]; break;
    }
  });
}

void axpby(float alpha, const float* a, float beta, const float* b, float* out, int64_t n) {
  for_each(n, [&](int64_t i0, int64_t i1) {
    if (b)
      for (int64_t i = i0; i < i1; ++i) out[i] = alpha * a[i] + beta * b[i];
    else
      for (int64_t i = i0; i < i1; ++i) out[i] = alpha * a[i] + beta;
  });
}

void sum_all(const float* x, int64_t n, float* out) {
  out[0] = float(deterministic_sum(n, [&](int64_t i) { return double(x[i]); }));
}

void sum_rows(const float* x, int64_t rows, int64_t cols, float* out) {
  deterministic_column_sums(rows, cols, out,
                            [&](int64_t r, int64_t j) { return double(x[r * cols + j]); });
}

void add_rowvec(const float* x, const float* b, float* y, int64_t rows, int64_t cols) {
  parallel_for(rows, std::max<int64_t>(1, kGrain / std::max<int64_t>(cols, 1)),
               [&](int64_t r0, int64_t r1) {
                 for (int64_t r = r0; r < r1; ++r)
                   for (int64_t j = 0; j < cols; ++j) y[r * cols + j] = x[r * cols + j] + b[j];
               });
}

void act_forward(Act a, const float* x, float* y, int64_t n) {
  for_each(n, [&](int64_t b, int64_t e) { loops::act_forward(a, x + b, y + b, e - b); });
}

void act_backward(Act a, const float* x, const float* dy, float* dx, int64_t n) {
  for_each(n, [&](int64_t b, int64_t e) { loops::act_backward(a, x + b, dy + b, dx + b, e - b); });
}

}  // namespace cpu
}  // namespace adashift

#include "loops.h"
#include "../math.h"

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

AS_VECTORIZE void column_sums(const float* __restrict x, int64_t rows, int64_t W, float* __restrict acc) {
  for (int64_t w = 0; w < W; ++w) acc[w] = 0.0f;
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = x + r * W;
#pragma omp simd
    for (int64_t w = 0; w < W; ++w) acc[w] += row[w];
  }
}

// The inner loop streams a row of B into a row of C (vectorised, FMA where available); k is
// blocked so the block of B stays in cache across the rows.
AS_VECTORIZE void gemm_rows(int64_t i0, int64_t i1, int64_t N, int64_t K, const float* __restrict A,
                            const float* __restrict B, float* __restrict C) {
  constexpr int64_t kKB = 256;
  for (int64_t i = i0; i < i1; ++i)
    for (int64_t j = 0; j < N; ++j) C[i * N + j] = 0.0f;
  for (int64_t k0 = 0; k0 < K; k0 += kKB) {
    const int64_t k1 = k0 + kKB < K ? k0 + kKB : K;
    for (int64_t i = i0; i < i1; ++i) {
      float* __restrict c = C + i * N;
      for (int64_t k = k0; k < k1; ++k) {
        const float a = A[i * K + k];
        const float* __restrict b = B + k * N;
#pragma omp simd
        for (int64_t j = 0; j < N; ++j) c[j] += a * b[j];
      }
    }
  }
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

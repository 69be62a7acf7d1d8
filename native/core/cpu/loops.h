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

float sum(const float* x, int64_t n);
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
// Per-element shift s[i] (region bands of AdaShift-MA, the shift laid out per pixel)
void gate_forward_v(const float* x, const float* s, float* y, int64_t n);
// out[i] = dy * x * g * (1 - g)
void gate_shift_grad_v(const float* x, const float* dy, const float* s, float* out, int64_t n);
// dx = dy * (g + x g (1 - g)) + add[i]
void gate_input_grad_v(const float* x, const float* dy, const float* s, const float* add, float* dx, int64_t n);
// acc[w] = sum over r < rows of x[r * W + w]
void column_sums(const float* x, int64_t rows, int64_t W, float* acc);
// C[i0:i1, :] = A[i0:i1, :] @ B with A [M, K], B [K, N], C [M, N] row-major
void gemm_rows(int64_t i0, int64_t i1, int64_t N, int64_t K, const float* A, const float* B, float* C);
void act_forward(Act a, const float* x, float* y, int64_t n);
void act_backward(Act a, const float* x, const float* dy, float* dx, int64_t n);

}  // namespace loops
}  // namespace cpu
}  // namespace adashift

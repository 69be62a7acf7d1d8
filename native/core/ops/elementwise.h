// Element-wise ops, fills, random fills, reductions, and the baseline activations.
// Tensor-level functions validate and dispatch; cpu:: / cuda:: launchers take raw pointers.
#pragma once
#include "../tensor.h"
#ifdef ADASHIFT_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace adashift {

enum class Binary : int { Add = 0, Sub = 1, Mul = 2, Div = 3 };
enum class Act : int { ReLU = 0, GELU = 1, GELUTanh = 2, SiLU = 3 };
enum class RandKind : int { Uniform = 0, Normal = 1 };

Tensor empty(const std::vector<int64_t>& shape, Device d);
Tensor full(const std::vector<int64_t>& shape, float value, Device d);
void fill_(Tensor& t, float value);
// a and b: uniform [a, b) or normal(mean a, std b); element i draws counter offset + i.
Tensor rand(const std::vector<int64_t>& shape, RandKind kind, float a, float b, uint64_t seed,
            uint64_t offset, Device d);
Tensor to_device(const Tensor& t, Device d);
Tensor clone(const Tensor& t);
// Copies src's values into dst (same shape, any two devices): dst keeps its memory, so a
// captured CUDA graph that reads dst sees the new values on its next replay.
void copy_(Tensor& dst, const Tensor& src);
Tensor binary(Binary op, const Tensor& a, const Tensor& b);
// out = alpha * a + beta * b (b may be undefined: out = alpha * a + beta)
Tensor axpby(float alpha, const Tensor& a, float beta, const Tensor& b);
// y += alpha * x, in place (gradient accumulation, optimizer updates)
void axpy_(Tensor& y, float alpha, const Tensor& x);
Tensor sum_all(const Tensor& x);                 // -> [1]
Tensor sum_rows(const Tensor& x, int64_t rows);  // x viewed [rows, n/rows] -> [n/rows]
Tensor add_rowvec(const Tensor& x, const Tensor& b);  // x [.., n] + b [n]
Tensor act_forward(Act a, const Tensor& x);
Tensor act_backward(Act a, const Tensor& x, const Tensor& dy);

namespace cpu {
void fill(float* out, float v, int64_t n);
void rand(float* out, int64_t n, RandKind kind, float a, float b, uint64_t seed, uint64_t offset);
void binary(Binary op, const float* a, const float* b, float* out, int64_t n);
void axpby(float alpha, const float* a, float beta, const float* b, float* out, int64_t n);
void sum_all(const float* x, int64_t n, float* out);
void sum_rows(const float* x, int64_t rows, int64_t cols, float* out);
void add_rowvec(const float* x, const float* b, float* y, int64_t rows, int64_t cols);
void act_forward(Act a, const float* x, float* y, int64_t n);
void act_backward(Act a, const float* x, const float* dy, float* dx, int64_t n);
}  // namespace cpu

#ifdef ADASHIFT_WITH_CUDA
namespace cuda {
void fill(cudaStream_t s, float* out, float v, int64_t n);
void rand(cudaStream_t s, float* out, int64_t n, RandKind kind, float a, float b, uint64_t seed,
          uint64_t offset);
void binary(cudaStream_t s, Binary op, const float* a, const float* b, float* out, int64_t n);
void axpby(cudaStream_t s, float alpha, const float* a, float beta, const float* b, float* out,
           int64_t n);
void sum_all(cudaStream_t s, const float* x, int64_t n, float* out);
void sum_rows(cudaStream_t s, const float* x, int64_t rows, int64_t cols, float* out);
void add_rowvec(cudaStream_t s, const float* x, const float* b, float* y, int64_t rows,
                int64_t cols);
void act_forward(cudaStream_t s, Act a, const float* x, float* y, int64_t n);
void act_backward(cudaStream_t s, Act a, const float* x, const float* dy, float* dx, int64_t n);
}  // namespace cuda
#endif

}  // namespace adashift

// Small dense ops for the context networks (and, later, the classifier head): LayerNorm over
// the last axis, softmax over the last axis, batched matmul, and axis permutation.
#pragma once
#include "../tensor.h"
#ifdef ADASHIFT_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace adashift {

struct LayerNormOut { Tensor y, mean, rstd; };  // mean, rstd: [rows]
struct LayerNormGrad { Tensor dx, dweight, dbias; };
// x [..., C]; weight and bias [C]
LayerNormOut layernorm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias,
                               float eps);
LayerNormGrad layernorm_backward(const Tensor& dy, const Tensor& x, const Tensor& mean,
                                 const Tensor& rstd, const Tensor& weight);

Tensor softmax_forward(const Tensor& x);                      // over the last axis
Tensor softmax_backward(const Tensor& y, const Tensor& dy);   // from the saved output

// out[b] = op(A[b]) @ op(B[b]); A [batch?, M, K] (or [.., K, M] when transA), B likewise.
// A rank-2 operand is shared by every batch entry.
Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b);

// Permutes the axes of x (rank <= 6): out.shape[i] = x.shape[perm[i]].
Tensor permute(const Tensor& x, const std::vector<int64_t>& perm);

struct MatmulDims {
  int64_t batch, M, N, K;
  int64_t stride_a, stride_b, stride_c;  // elements between batch entries (0: shared)
  bool trans_a, trans_b;
};
struct PermuteDims {
  int rank;
  int64_t out_shape[6];
  int64_t in_strides[6];  // stride in x of each output axis
};

namespace cpu {
void layernorm_forward(const float* x, const float* w, const float* b, float eps, int64_t rows,
                       int64_t C, float* y, float* mean, float* rstd);
void layernorm_backward(const float* dy, const float* x, const float* mean, const float* rstd,
                        const float* w, int64_t rows, int64_t C, float* dx, float* dw, float* db);
void softmax_forward(const float* x, int64_t rows, int64_t n, float* y);
void softmax_backward(const float* y, const float* dy, int64_t rows, int64_t n, float* dx);
void matmul(const MatmulDims& d, const float* a, const float* b, float* c);
void permute(const PermuteDims& d, const float* x, float* out);
}  // namespace cpu

#ifdef ADASHIFT_WITH_CUDA
namespace cuda {
void layernorm_forward(cudaStream_t s, const float* x, const float* w, const float* b, float eps,
                       int64_t rows, int64_t C, float* y, float* mean, float* rstd);
void layernorm_backward(cudaStream_t s, const float* dy, const float* x, const float* mean,
                        const float* rstd, const float* w, int64_t rows, int64_t C, float* dx,
                        float* dw, float* db);
void softmax_forward(cudaStream_t s, const float* x, int64_t rows, int64_t n, float* y);
void softmax_backward(cudaStream_t s, const float* y, const float* dy, int64_t rows, int64_t n,
                      float* dx);
void matmul(cudaStream_t s, const MatmulDims& d, const float* a, const float* b, float* c);
void permute(cudaStream_t s, const PermuteDims& d, const float* x, float* out);
}  // namespace cuda
#endif

}  // namespace adashift

// Fused cross-entropy over logits [N, K] with integer class labels (stored as float32 [N]) and
// label smoothing eps, the mean over the batch (PyTorch's F.cross_entropy(label_smoothing=eps)):
//   loss_i = -(1 - eps) log p[i, y_i] - eps / K * sum_k log p[i, k]
//          = lse_i - (1 - eps) x[i, y_i] - eps / K * sum_k x[i, k],  lse_i = log sum_k e^x[i, k]
//   loss   = mean_i loss_i
// Forward is one pass over the logits (max, log-sum-exp, the picked and summed logits, and the
// argmax for the count of correct predictions); backward is one element-wise pass:
//   dlogits[i, k] = (softmax[i, k] - target[i, k]) * g / N,
//   target = (1 - eps) [k == y_i] + eps / K, softmax from the saved row max and log-sum (kept
//   apart: their sum in float loses the gradient's digits when the logits are large).
// The batch mean adds the rows in a fixed order (double): deterministic.
// A label that is not an integer in [0, K) makes its row's loss NaN (the kernels never read out
// of bounds); the Tensor-level function validates labels on the CPU, and the TypeScript layer
// validates them before they reach a GPU.
#pragma once
#include "../tensor.h"
#ifdef ADASHIFT_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace adashift {

struct CrossEntropyOut {
  Tensor loss;     // [1]
  Tensor lse;      // [N, 2]: each row's max logit and log sum e^(x - max), saved for backward
  Tensor correct;  // [1]: rows whose first maximal logit is the label
};
CrossEntropyOut cross_entropy_forward(const Tensor& logits, const Tensor& labels, float smoothing);
// grad: the loss's upstream gradient, one element (read on the device: no sync).
Tensor cross_entropy_backward(const Tensor& logits, const Tensor& labels, const Tensor& lse,
                              const Tensor& grad, float smoothing);

namespace cpu {
void cross_entropy_forward(const float* logits, const float* labels, int64_t N, int64_t K,
                           float smoothing, float* loss, float* lse, float* correct);
void cross_entropy_backward(const float* logits, const float* labels, const float* lse,
                            const float* grad, int64_t N, int64_t K, float smoothing,
                            float* dlogits);
}  // namespace cpu

#ifdef ADASHIFT_WITH_CUDA
namespace cuda {
void cross_entropy_forward(cudaStream_t st, const float* logits, const float* labels, int64_t N,
                           int64_t K, float smoothing, float* loss, float* lse, float* correct);
void cross_entropy_backward(cudaStream_t st, const float* logits, const float* labels,
                            const float* lse, const float* grad, int64_t N, int64_t K,
                            float smoothing, float* dlogits);
}  // namespace cuda
#endif

}  // namespace adashift

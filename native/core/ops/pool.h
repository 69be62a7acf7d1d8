// 2-D pooling over x [N, C, H, W] with PyTorch's semantics (ceil_mode=False, dilation 1):
//   max_pool2d: windows clipped to the input (padding acts as -inf); the output keeps, per
//     element, the flat offset h * W + w of its maximum inside the input plane ("indices",
//     stored as float32: exact because a plane is limited to 2^24 elements); ties keep the
//     first maximum in row-major window order, a NaN wins. Backward routes each output's
//     gradient to that offset (a sum where windows overlap).
//   avg_pool2d: mean over the window; the divisor counts the padded window
//     (count_include_pad) or only the input elements in it.
// Backward passes are gathers: each input element adds the gradients of the windows that
// contain it, in ascending (oh, ow) order: deterministic, no atomics, the same order on CPU
// and CUDA.
#pragma once
#include "../tensor.h"
#ifdef ADASHIFT_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace adashift {

struct Pool2d {
  int64_t N, C;
  int H, W, Ho, Wo;
  int kh, kw, sh, sw, ph, pw;
  bool count_include_pad;
  int64_t planes() const { return N * C; }
};

// Validates the input shape and window parameters (kernel >= 1, stride >= 1, 0 <= padding <=
// kernel / 2, output at least 1 x 1) and computes the output size.
Pool2d pool2d_geometry(const std::vector<int64_t>& x_shape, int64_t kh, int64_t kw, int64_t sh,
                       int64_t sw, int64_t ph, int64_t pw, bool count_include_pad,
                       const char* what);

struct MaxPoolOut { Tensor y, indices; };  // both [N, C, Ho, Wo]
MaxPoolOut max_pool2d_forward(const Tensor& x, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                              int64_t ph, int64_t pw);
Tensor max_pool2d_backward(const Tensor& dy, const Tensor& indices,
                           const std::vector<int64_t>& x_shape, int64_t kh, int64_t kw,
                           int64_t sh, int64_t sw, int64_t ph, int64_t pw);
Tensor avg_pool2d_forward(const Tensor& x, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                          int64_t ph, int64_t pw, bool count_include_pad);
Tensor avg_pool2d_backward(const Tensor& dy, const std::vector<int64_t>& x_shape, int64_t kh,
                           int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                           bool count_include_pad);

namespace cpu {
void max_pool2d_forward(const Pool2d& g, const float* x, float* y, float* indices);
void max_pool2d_backward(const Pool2d& g, const float* dy, const float* indices, float* dx);
void avg_pool2d_forward(const Pool2d& g, const float* x, float* y);
void avg_pool2d_backward(const Pool2d& g, const float* dy, float* dx);
}  // namespace cpu

#ifdef ADASHIFT_WITH_CUDA
namespace cuda {
void max_pool2d_forward(cudaStream_t st, const Pool2d& g, const float* x, float* y,
                        float* indices);
void max_pool2d_backward(cudaStream_t st, const Pool2d& g, const float* dy, const float* indices,
                         float* dx);
void avg_pool2d_forward(cudaStream_t st, const Pool2d& g, const float* x, float* y);
void avg_pool2d_backward(cudaStream_t st, const Pool2d& g, const float* dy, float* dx);
}  // namespace cuda
#endif

}  // namespace adashift

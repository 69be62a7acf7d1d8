// 2-D convolution (cross-correlation, like PyTorch's conv2d; groups 1, dilation 1), forward and
// backward, and a Tensor-level entry to the CPU GEMM for tests and benchmarks.
//
// Layout: x [N, Cin, H, W], weight [Cout, Cin, kh, kw], bias [Cout] (optional),
// y [N, Cout, Ho, Wo] with Ho = (H + 2 pad_h - kh) / stride_h + 1 (likewise Wo).
// Both backends lower the convolution to GEMMs (CPU: cpu/conv.cc, implicit "window" operands
// for stride 1, im2col columns otherwise; CUDA: im2col/col2im around a tiled SGEMM; a 1x1,
// stride-1, unpadded convolution is a GEMM on the input itself) and reduce in fixed orders: the
// results are bit-identical run to run on one device, and on the CPU for any thread count with
// the default (own) GEMM.
#pragma once
#include <string>
#include "../tensor.h"
#ifdef ADASHIFT_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace adashift {

struct Conv2dGrad { Tensor dx, dw, db; };

// Whether CUDA convolutions may round their GEMM operands to TF32 (10-bit mantissa) and multiply
// them on the tensor cores, accumulating in float (PyTorch's torch.backends.cudnn.allow_tf32, on
// by default there). Off by default here; read when a convolution is launched (a captured CUDA
// graph keeps the mode it was captured with). Used for products of at least 64 output rows on
// devices of compute capability 8.0 or later; the CPU ignores it.
void set_conv_allow_tf32(bool on);
bool conv_allow_tf32();

Tensor conv2d_forward(const Tensor& x, const Tensor& w, const Tensor& b, int stride_h,
                      int stride_w, int pad_h, int pad_w);
// Gradients of sum(y * dy); the ones not asked for are left undefined. With dx_add (x's shape
// and device) and need_dx, dx comes back as the input gradient plus dx_add, each element's sum
// rounded once (the bits of a separate add): a gradient already waiting for x (a residual
// block's shortcut) folded in while each sample's dx is in cache, not in a pass of its own.
Conv2dGrad conv2d_backward(const Tensor& dy, const Tensor& x, const Tensor& w, int stride_h,
                           int stride_w, int pad_h, int pad_w, bool need_dx, bool need_dw,
                           bool need_db, const Tensor& dx_add = Tensor());

// CPU GEMM on raw row-major operands held in tensors (any shape; only the element count
// matters): returns a copy of c updated with C = alpha * op(A) op(B) + beta * C, where C is
// M x N with leading dimension ldc. backend: "own" (the package's kernel), "serial" (the same
// on one thread), "small" (the same with A read in place: AdaShift-MA's per-sample products),
// "blas" (BLAS sgemm; an Arg error when not compiled in) or "default" (what conv2d uses now).
// For tests and benchmarks.
Tensor gemm_cpu(const Tensor& a, const Tensor& b, const Tensor& c, bool trans_a, bool trans_b,
                int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb, int64_t ldc,
                float alpha, float beta, const std::string& backend);

struct Conv2dDims {
  int64_t N, Cin, H, W;
  int64_t Cout, kh, kw;
  int64_t Ho, Wo;
  int64_t stride_h, stride_w, pad_h, pad_w;
  int64_t K() const { return Cin * kh * kw; }   // GEMM depth: rows of the im2col matrix
  int64_t P() const { return Ho * Wo; }          // output pixels per sample
  bool pointwise() const {                        // a GEMM on x itself, no im2col
    return kh == 1 && kw == 1 && stride_h == 1 && stride_w == 1 && pad_h == 0 && pad_w == 0;
  }
};

namespace cpu {
// b may be null. y [N, Cout, Ho, Wo] is fully written.
void conv2d_forward(const Conv2dDims& d, const float* x, const float* w, const float* b,
                    float* y);
// dx, dw, db: null when not needed; each given one is fully written. dx_add (null or x's
// size): added into dx.
void conv2d_backward(const Conv2dDims& d, const float* dy, const float* x, const float* w,
                     float* dx, float* dw, float* db, const float* dx_add = nullptr);
}  // namespace cpu

#ifdef ADASHIFT_WITH_CUDA
namespace cuda {
void conv2d_forward(cudaStream_t s, const Conv2dDims& d, const float* x, const float* w,
                    const float* b, float* y);
void conv2d_backward(cudaStream_t s, const Conv2dDims& d, const float* dy, const float* x,
                     const float* w, float* dx, float* dw, float* db, const float* dx_add = nullptr);
// Floats of scratch per chunk of samples (im2col columns; default 2^25, 128 MiB): a convolution
// whose columns exceed it runs in chunks. For tests, which lower it to make chunks.
int64_t conv_scratch_floats();
void set_conv_scratch_floats(int64_t n);
// The TF32 GEMM's kernel variants (k-step and register budget; conv.cu), for timing them
// against each other: 0 (the default) .. conv_tf32_variants() - 1.
int conv_tf32_variants();
void set_conv_tf32_variant(int v);
// The float32 GEMM of products with >= 64 rows: 0 (the default) the per-sample tiled SGEMM, 1
// the folded one (k_sgemm_foldn: the batch folded into the columns; the same bits), for timing.
int conv_f32_kernel();
void set_conv_f32_kernel(int k);
}  // namespace cuda
#endif

}  // namespace adashift

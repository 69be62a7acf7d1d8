#include <atomic>
#include "conv.h"
#include "../cpu/gemm.h"
#include "../dispatch.h"
#include "elementwise.h"

namespace adashift {

namespace {

Conv2dDims conv_dims(const char* fn, const Tensor& x, const Tensor& w, int stride_h,
                     int stride_w, int pad_h, int pad_w) {
  AS_CHECK(x.defined() && x.dim() == 4, Shape, fn, ": input must have shape [N, C, H, W], got ",
           x.defined() ? shape_str(x.shape()) : std::string("an undefined tensor"));
  AS_CHECK(w.defined() && w.dim() == 4, Shape, fn,
           ": weight must have shape [Cout, Cin, kh, kw], got ",
           w.defined() ? shape_str(w.shape()) : std::string("an undefined tensor"));
  check_same_device(x, w, fn);
  AS_CHECK(stride_h >= 1 && stride_w >= 1, Arg, fn, ": strides must be >= 1, got [", stride_h,
           ", ", stride_w, "]");
  AS_CHECK(pad_h >= 0 && pad_w >= 0, Arg, fn, ": paddings must be >= 0, got [", pad_h, ", ",
           pad_w, "]");
  Conv2dDims d{};
  d.N = x.size(0);
  d.Cin = x.size(1);
  d.H = x.size(2);
  d.W = x.size(3);
  d.Cout = w.size(0);
  d.kh = w.size(2);
  d.kw = w.size(3);
  AS_CHECK(d.Cout >= 1 && w.size(1) >= 1 && d.kh >= 1 && d.kw >= 1, Shape, fn,
           ": weight needs at least one output channel, input channel and kernel element, got ",
           shape_str(w.shape()));
  AS_CHECK(w.size(1) == d.Cin, Shape, fn, ": input has ", d.Cin,
           " channels but the weight expects ", w.size(1), " (weight ", shape_str(w.shape()),
           ", input ", shape_str(x.shape()), "; groups other than 1 are not supported)");
  d.stride_h = stride_h;
  d.stride_w = stride_w;
  d.pad_h = pad_h;
  d.pad_w = pad_w;
  const int64_t hp = d.H + 2 * int64_t(pad_h), wp = d.W + 2 * int64_t(pad_w);
  AS_CHECK(hp >= d.kh && wp >= d.kw, Shape, fn, ": input of spatial size ", d.H, "x", d.W,
           " (", hp, "x", wp, " with padding) is smaller than the kernel ", d.kh, "x", d.kw);
  d.Ho = (hp - d.kh) / stride_h + 1;
  d.Wo = (wp - d.kw) / stride_w + 1;
  return d;
}

}  // namespace

namespace {
std::atomic<bool> g_conv_tf32{false};
}  // namespace
void set_conv_allow_tf32(bool on) { g_conv_tf32.store(on); }
bool conv_allow_tf32() { return g_conv_tf32.load(); }

Tensor conv2d_forward(const Tensor& x, const Tensor& w, const Tensor& b, int stride_h,
                      int stride_w, int pad_h, int pad_w) {
  Conv2dDims d = conv_dims("conv2d", x, w, stride_h, stride_w, pad_h, pad_w);
  if (b.defined()) {
    check_same_device(x, b, "conv2d bias");
    AS_CHECK(b.dim() == 1 && b.size(0) == d.Cout, Shape, "conv2d: bias must have shape [",
             d.Cout, "] (one per output channel), got ", shape_str(b.shape()));
  }
  Tensor y({d.N, d.Cout, d.Ho, d.Wo}, x.device());
  if (y.numel() == 0) return y;
  AS_DISPATCH(x.device(), conv2d_forward, d, x.data(), w.data(), b.defined() ? b.data() : nullptr,
              y.data());
  return y;
}

Conv2dGrad conv2d_backward(const Tensor& dy, const Tensor& x, const Tensor& w, int stride_h,
                           int stride_w, int pad_h, int pad_w, bool need_dx, bool need_dw,
                           bool need_db, const Tensor& dx_add) {
  Conv2dDims d = conv_dims("conv2d backward", x, w, stride_h, stride_w, pad_h, pad_w);
  AS_CHECK(dy.defined(), Arg, "conv2d backward: the output gradient is undefined");
  check_same_device(x, dy, "conv2d backward");
  check_shape(dy, {d.N, d.Cout, d.Ho, d.Wo}, "conv2d backward: output gradient");
  if (dx_add.defined()) {
    check_same_device(x, dx_add, "conv2d backward");
    check_shape(dx_add, x.shape(), "conv2d backward: the gradient to add to dx");
  }
  Conv2dGrad g;
  if (need_dx) g.dx = Tensor(x.shape(), x.device());
  if (need_dw) g.dw = Tensor(w.shape(), x.device());
  if (need_db) g.db = Tensor({d.Cout}, x.device());
  if (!need_dx && !need_dw && !need_db) return g;
  AS_DISPATCH(x.device(), conv2d_backward, d, dy.data(), x.data(), w.data(),
              need_dx ? g.dx.data() : nullptr, need_dw ? g.dw.data() : nullptr,
              need_db ? g.db.data() : nullptr, need_dx && dx_add.defined() ? dx_add.data() : nullptr);
  return g;
}

Tensor gemm_cpu(const Tensor& a, const Tensor& b, const Tensor& c, bool trans_a, bool trans_b,
                int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb, int64_t ldc,
                float alpha, float beta, const std::string& backend) {
  AS_CHECK(a.defined() && b.defined() && c.defined(), Arg, "gemm: a, b and c must be tensors");
  AS_CHECK(a.device().is_cpu() && b.device().is_cpu() && c.device().is_cpu(), Device,
           "gemm: this entry point runs the CPU GEMM; its operands must be on the CPU");
  AS_CHECK(M >= 0 && N >= 0 && K >= 0, Arg, "gemm: sizes must be >= 0, got M ", M, ", N ", N,
           ", K ", K);
  // Stored matrices: A is (trans_a ? K x M : M x K), B is (trans_b ? N x K : K x N), C M x N.
  auto check_operand = [](const char* name, const Tensor& t, int64_t rows, int64_t cols,
                          int64_t ld) {
    AS_CHECK(ld >= std::max<int64_t>(cols, 1), Arg, "gemm: leading dimension of ", name,
             " must be at least ", std::max<int64_t>(cols, 1), " (its stored row length), got ",
             ld);
    int64_t need = 0;
    if (rows > 0 && cols > 0) {
      // (rows - 1) * ld + cols, refusing sizes whose product overflows int64
      int64_t span = 0;
      AS_CHECK(!__builtin_mul_overflow(rows - 1, ld, &span) && !__builtin_add_overflow(span, cols, &need),
               Shape, "gemm: a ", rows, " x ", cols, " matrix with leading dimension ", ld,
               " is larger than any tensor can be");
    }
    AS_CHECK(t.numel() >= need, Shape, "gemm: ", name, " holds ", t.numel(),
             " elements but a ", rows, " x ", cols, " matrix with leading dimension ", ld,
             " needs ", need);
  };
  check_operand("a", a, trans_a ? K : M, trans_a ? M : K, lda);
  check_operand("b", b, trans_b ? N : K, trans_b ? K : N, ldb);
  check_operand("c", c, M, N, ldc);
  Tensor out = clone(c);
  if (backend == "own")
    cpu::gemm_reference_kernel(trans_a, trans_b, M, N, K, alpha, a.data(), lda, b.data(), ldb,
                               beta, out.data(), ldc);
  else if (backend == "serial")
    cpu::gemm_serial(trans_a, trans_b, M, N, K, alpha, a.data(), lda, b.data(), ldb, beta,
                     out.data(), ldc);
  else if (backend == "small")
    cpu::gemm_small_serial(trans_a, trans_b, M, N, K, alpha, a.data(), lda, b.data(), ldb, beta,
                           out.data(), ldc);
  else if (backend == "blas") {
    AS_CHECK(cpu::gemm_blas_compiled(), Arg,
             "gemm: backend 'blas' is not available: this build has no BLAS");
    AS_CHECK(cpu::gemm_blas(trans_a, trans_b, M, N, K, alpha, a.data(), lda, b.data(), ldb, beta,
                            out.data(), ldc),
             Arg, "gemm: sizes exceed the BLAS integer range");
  } else if (backend == "default")
    cpu::gemm(trans_a, trans_b, M, N, K, alpha, a.data(), lda, b.data(), ldb, beta, out.data(),
              ldc);
  else
    fail(ErrorCode::Arg,
         cat("gemm: backend must be 'own', 'serial', 'small', 'blas' or 'default', got '", backend,
             "'"));
  return out;
}

}  // namespace adashift

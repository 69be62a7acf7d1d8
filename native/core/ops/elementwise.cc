#include "elementwise.h"
#include <cmath>
#include "../dispatch.h"

namespace adashift {

Tensor empty(const std::vector<int64_t>& shape, Device d) { return Tensor(shape, d); }

void fill_(Tensor& t, float value) {
  if (t.numel() == 0) return;
  AS_DISPATCH(t.device(), fill, t.data(), value, t.numel());
}

Tensor full(const std::vector<int64_t>& shape, float value, Device d) {
  Tensor t(shape, d);
  fill_(t, value);
  return t;
}

Tensor rand(const std::vector<int64_t>& shape, RandKind kind, float a, float b, uint64_t seed,
            uint64_t offset, Device d) {
  if (kind == RandKind::Uniform)
    AS_CHECK(std::isfinite(a) && std::isfinite(b) && a <= b, Arg,
             "rand: bounds must be finite with low <= high, got [", a, ", ", b, ")");
  else
    AS_CHECK(std::isfinite(a) && std::isfinite(b) && b >= 0, Arg,
             "randn: mean must be finite and std finite and >= 0, got mean ", a, ", std ", b);
  Tensor t(shape, d);
  if (t.numel() > 0) AS_DISPATCH(d, rand, t.data(), t.numel(), kind, a, b, seed, offset);
  return t;
}

Tensor to_device(const Tensor& t, Device d) {
  if (t.device() == d) return t;
  Tensor out(t.shape(), d);
  copy_bytes(d, out.data(), t.device(), t.data(), t.nbytes());
  return out;
}

Tensor clone(const Tensor& t) {
  Tensor out(t.shape(), t.device());
  copy_bytes(t.device(), out.data(), t.device(), t.data(), t.nbytes());
  return out;
}

void copy_(Tensor& dst, const Tensor& src) {
  AS_CHECK(dst.shape() == src.shape(), Shape, "copy_: the source must have the destination's shape ",
           shape_str(dst.shape()), ", got ", shape_str(src.shape()));
  if (dst.data() == src.data()) return;
  copy_bytes(dst.device(), dst.data(), src.device(), src.data(), dst.nbytes());
}

static const char* binary_name(Binary op) {
  switch (op) {
    case Binary::Add: return "add";
    case Binary::Sub: return "sub";
    case Binary::Mul: return "mul";
    case Binary::Div: return "div";
  }
  return "binary";
}

Tensor binary(Binary op, const Tensor& a, const Tensor& b) {
  check_same_device(a, b, binary_name(op));
  AS_CHECK(a.shape() == b.shape(), Shape, binary_name(op), ": shapes must match, got ",
           shape_str(a.shape()), " and ", shape_str(b.shape()));
  Tensor out(a.shape(), a.device());
  if (out.numel() > 0) AS_DISPATCH(a.device(), binary, op, a.data(), b.data(), out.data(), a.numel());
  return out;
}

Tensor axpby(float alpha, const Tensor& a, float beta, const Tensor& b) {
  if (b.defined()) {
    check_same_device(a, b, "axpby");
    AS_CHECK(a.shape() == b.shape(), Shape, "axpby: shapes must match, got ",
             shape_str(a.shape()), " and ", shape_str(b.shape()));
  }
  Tensor out(a.shape(), a.device());
  if (out.numel() > 0)
    AS_DISPATCH(a.device(), axpby, alpha, a.data(), beta, b.defined() ? b.data() : nullptr,
                out.data(), a.numel());
  return out;
}

void axpy_(Tensor& y, float alpha, const Tensor& x) {
  check_same_device(y, x, "axpy_");
  AS_CHECK(y.numel() == x.numel(), Shape, "axpy_: sizes must match, got ", shape_str(y.shape()),
           " and ", shape_str(x.shape()));
  if (y.numel() > 0)
    AS_DISPATCH(y.device(), axpby, 1.0f, y.data(), alpha, x.data(), y.data(), y.numel());
}

Tensor sum_all(const Tensor& x) {
  Tensor out({1}, x.device());
  if (x.numel() == 0) { fill_(out, 0.0f); return out; }
  AS_DISPATCH(x.device(), sum_all, x.data(), x.numel(), out.data());
  return out;
}

Tensor sum_rows(const Tensor& x, int64_t rows) {
  AS_CHECK(rows >= 1 && x.numel() % rows == 0, Shape, "sum_rows: cannot split ",
           shape_str(x.shape()), " into ", rows, " rows");
  int64_t cols = x.numel() / rows;
  Tensor out({cols}, x.device());
  if (cols > 0) AS_DISPATCH(x.device(), sum_rows, x.data(), rows, cols, out.data());
  return out;
}

Tensor add_rowvec(const Tensor& x, const Tensor& b) {
  check_same_device(x, b, "add_rowvec");
  AS_CHECK(x.dim() >= 1 && b.dim() == 1 && b.size(0) == x.size(-1), Shape,
           "add_rowvec: expected a vector of length ", x.dim() ? x.size(-1) : 0, ", got ",
           shape_str(b.shape()));
  Tensor out(x.shape(), x.device());
  int64_t cols = b.size(0);
  if (out.numel() > 0)
    AS_DISPATCH(x.device(), add_rowvec, x.data(), b.data(), out.data(), x.numel() / cols, cols);
  return out;
}

Tensor act_forward(Act a, const Tensor& x) {
  Tensor y(x.shape(), x.device());
  if (y.numel() > 0) AS_DISPATCH(x.device(), act_forward, a, x.data(), y.data(), x.numel());
  return y;
}

Tensor act_backward(Act a, const Tensor& x, const Tensor& dy) {
  check_same_device(x, dy, "activation backward");
  AS_CHECK(x.shape() == dy.shape(), Shape, "activation backward: gradient shape ",
           shape_str(dy.shape()), " does not match input shape ", shape_str(x.shape()));
  Tensor dx(x.shape(), x.device());
  if (dx.numel() > 0)
    AS_DISPATCH(x.device(), act_backward, a, x.data(), dy.data(), dx.data(), x.numel());
  return dx;
}

}  // namespace adashift

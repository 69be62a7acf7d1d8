#include "tensor.h"
#include "backend.h"

namespace adashift {

int64_t checked_numel(const std::vector<int64_t>& shape) {
  AS_CHECK(int64_t(shape.size()) <= kMaxDims, Shape, "a tensor has at most ", kMaxDims,
           " dimensions, got ", shape.size());
  int64_t n = 1;
  for (int64_t s : shape) {
    AS_CHECK(s >= 0, Shape, "dimensions must be non-negative integers, got shape ",
             shape_str(shape));
    if (s != 0 && n > kMaxElements / s)
      fail(ErrorCode::Shape, cat("shape ", shape_str(shape), " has more than 2^40 elements"));
    n *= s;
  }
  return n;
}

Tensor::Tensor(std::vector<int64_t> shape, Device d) : shape_(std::move(shape)) {
  numel_ = checked_numel(shape_);
  require_device(d);
  storage_ = std::make_shared<Storage>(d, size_t(numel_) * sizeof(float));
}

Tensor Tensor::view(const Tensor& base, std::vector<int64_t> shape) {
  int64_t n = checked_numel(shape);
  AS_CHECK(n == base.numel(), Shape, "cannot view a tensor of shape ", shape_str(base.shape()),
           " (", base.numel(), " elements) as ", shape_str(shape), " (", n, " elements)");
  Tensor t;
  t.storage_ = base.storage_;
  t.shape_ = std::move(shape);
  t.numel_ = n;
  return t;
}

void check_same_device(const Tensor& a, const Tensor& b, const char* what) {
  AS_CHECK(a.device() == b.device(), Device, what, ": tensors are on different devices (",
           a.device().str(), " and ", b.device().str(), "); move one with .to(device)");
}

void check_shape(const Tensor& t, const std::vector<int64_t>& expect, const char* what) {
  AS_CHECK(t.shape() == expect, Shape, what, ": expected shape ", shape_str(expect), ", got ",
           shape_str(t.shape()));
}

}  // namespace adashift

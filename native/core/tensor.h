// A float32, contiguous, row-major tensor: shared storage, an element offset and a shape.
#pragma once
#include <memory>
#include <vector>
#include "device.h"

namespace adashift {

constexpr int64_t kMaxDims = 8;
constexpr int64_t kMaxElements = int64_t(1) << 40;  // 4 TiB of float32: beyond any device

int64_t checked_numel(const std::vector<int64_t>& shape);

class Tensor {
 public:
  Tensor() = default;
  Tensor(std::vector<int64_t> shape, Device d);  // uninitialised
  static Tensor view(const Tensor& base, std::vector<int64_t> shape);  // same storage

  const std::vector<int64_t>& shape() const { return shape_; }
  int64_t dim() const { return int64_t(shape_.size()); }
  int64_t size(int64_t i) const { return shape_[i < 0 ? i + dim() : i]; }
  int64_t numel() const { return numel_; }
  size_t nbytes() const { return size_t(numel_) * sizeof(float); }
  Device device() const { return storage_ ? storage_->device() : Device{}; }
  bool defined() const { return bool(storage_); }
  float* data() const { return storage_ ? static_cast<float*>(storage_->data()) : nullptr; }
  const std::shared_ptr<Storage>& storage() const { return storage_; }

 private:
  std::shared_ptr<Storage> storage_;
  std::vector<int64_t> shape_;
  int64_t numel_ = 0;
};

void check_same_device(const Tensor& a, const Tensor& b, const char* what);
void check_shape(const Tensor& t, const std::vector<int64_t>& expect, const char* what);

}  // namespace adashift

// Devices and the memory each tensor lives in. Storage is reference counted so that views
// (reshape) share it; the bytes go back to the allocator of their device when the last
// reference drops. Live counts and bytes are process-wide atomics (memory() in JS).
#pragma once
#include <atomic>
#include <cstddef>
#include <memory>
#include <string>
#include "common.h"

namespace adashift {

enum class DeviceType : int { CPU = 0, CUDA = 1 };

struct Device {
  DeviceType type = DeviceType::CPU;
  int index = 0;
  bool is_cpu() const { return type == DeviceType::CPU; }
  bool is_cuda() const { return type == DeviceType::CUDA; }
  bool operator==(const Device& o) const { return type == o.type && index == o.index; }
  bool operator!=(const Device& o) const { return !(*this == o); }
  std::string str() const { return is_cpu() ? "cpu" : cat("cuda:", index); }
};

constexpr int kMaxCudaDevices = 16;

struct MemoryCounters {
  std::atomic<int64_t> storages{0};
  std::atomic<int64_t> bytes{0};
  // Highest `bytes` seen since the last reset_peak_memory (updated on every allocation).
  std::atomic<int64_t> peak{0};
};
// index 0: CPU; 1 + i: CUDA device i
MemoryCounters& memory_counters(Device d);
// Restarts the device's peak at its current live bytes.
void reset_peak_memory(Device d);

// Raw allocation on a device. CUDA memory comes from a caching allocator; freeing returns the
// block to the cache (stream-ordered reuse on the device's one stream).
void* device_alloc(Device d, size_t bytes);
// Host blocks held by the CPU cache for reuse (not counted as live bytes), and releasing them.
size_t cpu_cached_bytes();
void cpu_empty_cache();
void device_free(Device d, void* p, size_t bytes);

class Storage {
 public:
  Storage(Device d, size_t bytes);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  void* data() const { return ptr_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return dev_; }
 private:
  Device dev_;
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Copies between any two devices; synchronises the CUDA stream when the destination is host.
void copy_bytes(Device dst_dev, void* dst, Device src_dev, const void* src, size_t bytes);
// Waits for queued work on the device (no-op on CPU).
void synchronize(Device d);

}  // namespace adashift

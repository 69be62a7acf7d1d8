#include "device.h"
#include <cstdlib>
#include <cstring>
#include <new>
#include "dispatch.h"

namespace adashift {

static MemoryCounters g_counters[1 + kMaxCudaDevices];

MemoryCounters& memory_counters(Device d) {
  if (d.is_cpu()) return g_counters[0];
  return g_counters[1 + (d.index < 0 || d.index >= kMaxCudaDevices ? 0 : d.index)];
}

void* device_alloc(Device d, size_t bytes) {
  size_t n = bytes == 0 ? 64 : bytes;
  if (d.is_cpu()) {
    // 64-byte alignment: whole cache lines, aligned vector loads
    void* p = std::aligned_alloc(64, (n + 63) / 64 * 64);
    if (!p) fail(ErrorCode::Arg, cat("out of host memory allocating ", bytes, " bytes"));
    return p;
  }
#ifdef ADASHIFT_WITH_CUDA
  return cuda_cached_alloc(d.index, n);
#else
  fail_no_cuda();
#endif
}

void device_free(Device d, void* p, size_t bytes) {
  if (!p) return;
  if (d.is_cpu()) { std::free(p); return; }
#ifdef ADASHIFT_WITH_CUDA
  cuda_cached_free(d.index, p, bytes == 0 ? 64 : bytes);
#else
  (void)bytes;
#endif
}

Storage::Storage(Device d, size_t bytes) : dev_(d), bytes_(bytes) {
  ptr_ = device_alloc(d, bytes);
  auto& c = memory_counters(d);
  c.storages.fetch_add(1);
  c.bytes.fetch_add(int64_t(bytes));
}

Storage::~Storage() {
  auto& c = memory_counters(dev_);
  c.storages.fetch_sub(1);
  c.bytes.fetch_sub(int64_t(bytes_));
  device_free(dev_, ptr_, bytes_);
}

void copy_bytes(Device dst_dev, void* dst, Device src_dev, const void* src, size_t bytes) {
  if (bytes == 0) return;
  if (dst_dev.is_cpu() && src_dev.is_cpu()) { std::memcpy(dst, src, bytes); return; }
#ifdef ADASHIFT_WITH_CUDA
  if (dst_dev.is_cuda() && src_dev.is_cuda() && dst_dev.index != src_dev.index) {
    synchronize(src_dev);
    CUDA_CHECK(cudaMemcpyPeerAsync(dst, dst_dev.index, src, src_dev.index, bytes,
                                   cuda_stream(dst_dev)));
    return;
  }
  Device on = dst_dev.is_cuda() ? dst_dev : src_dev;
  cudaStream_t s = cuda_stream(on);
  CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, s));
  // Host memory is pageable: make the copy complete before the caller reuses or reads it.
  if (dst_dev.is_cpu() || src_dev.is_cpu()) CUDA_CHECK(cudaStreamSynchronize(s));
#else
  fail_no_cuda();
#endif
}

void synchronize(Device d) {
  if (d.is_cpu()) return;
#ifdef ADASHIFT_WITH_CUDA
  CUDA_CHECK(cudaStreamSynchronize(cuda_stream(d)));
#else
  fail_no_cuda();
#endif
}

}  // namespace adashift

#include "device.h"
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include "dispatch.h"
#include "graph.h"

namespace adashift {

// ---- CPU caching allocator -------------------------------------------------------------------
// Large blocks are kept after free and handed out again for the next request of the same
// rounded size: a fresh multi-megabyte buffer costs a page fault per 4 KiB on first touch,
// which on a training step costs more than the kernels themselves. Small blocks go straight
// to the C allocator. The cache is bounded (ADASHIFT_CPU_CACHE_MB, default 2048).
namespace {
constexpr size_t kCpuCacheMin = size_t(64) << 10;

struct CpuCache {
  std::mutex m;
  std::multimap<size_t, void*> blocks;
  size_t cached = 0;
  size_t limit = 0;
  CpuCache() {
    size_t mb = 2048;
    if (const char* env = std::getenv("ADASHIFT_CPU_CACHE_MB")) mb = size_t(std::strtoull(env, nullptr, 10));
    limit = mb << 20;
  }
};
CpuCache& cpu_cache() {
  static CpuCache* c = new CpuCache();  // never destroyed: frees may run during static teardown
  return *c;
}
size_t cpu_round(size_t n) {
  if (n < kCpuCacheMin) return (n + 63) / 64 * 64;
  // 1/8-octave classes: at most 12.5% slack, few distinct sizes
  size_t p = 1;
  while (p * 2 <= n) p *= 2;
  size_t step = std::max<size_t>(p / 8, 4096);
  return (n + step - 1) / step * step;
}
void* cpu_alloc(size_t bytes) {
  size_t n = cpu_round(bytes);
  if (n >= kCpuCacheMin) {
    CpuCache& c = cpu_cache();
    std::lock_guard<std::mutex> lk(c.m);
    auto it = c.blocks.find(n);
    if (it != c.blocks.end()) {
      void* p = it->second;
      c.blocks.erase(it);
      c.cached -= n;
      return p;
    }
  }
  void* p = std::aligned_alloc(64, n);
  if (!p) {
    cpu_empty_cache();
    p = std::aligned_alloc(64, n);
  }
  if (!p) fail(ErrorCode::Oom, cat("out of host memory allocating ", bytes, " bytes"));
  return p;
}
void cpu_free(void* p, size_t bytes) {
  size_t n = cpu_round(bytes);
  if (n >= kCpuCacheMin) {
    CpuCache& c = cpu_cache();
    std::lock_guard<std::mutex> lk(c.m);
    if (c.cached + n <= c.limit) {
      c.blocks.emplace(n, p);
      c.cached += n;
      return;
    }
  }
  std::free(p);
}
}  // namespace

void cpu_empty_cache() {
  CpuCache& c = cpu_cache();
  std::lock_guard<std::mutex> lk(c.m);
  for (auto& kv : c.blocks) std::free(kv.second);
  c.blocks.clear();
  c.cached = 0;
}

size_t cpu_cached_bytes() {
  CpuCache& c = cpu_cache();
  std::lock_guard<std::mutex> lk(c.m);
  return c.cached;
}

static MemoryCounters g_counters[1 + kMaxCudaDevices];

MemoryCounters& memory_counters(Device d) {
  if (d.is_cpu()) return g_counters[0];
  return g_counters[1 + (d.index < 0 || d.index >= kMaxCudaDevices ? 0 : d.index)];
}

void reset_peak_memory(Device d) {
  auto& c = memory_counters(d);
  c.peak.store(c.bytes.load());
}

void* device_alloc(Device d, size_t bytes) {
  size_t n = bytes == 0 ? 64 : bytes;
  if (d.is_cpu()) return cpu_alloc(n);  // 64-byte aligned: cache lines, vector loads
#ifdef ADASHIFT_WITH_CUDA
  return cuda_cached_alloc(d.index, n);
#else
  fail_no_cuda();
#endif
}

void device_free(Device d, void* p, size_t bytes) {
  if (!p) return;
  if (d.is_cpu()) { cpu_free(p, bytes == 0 ? 64 : bytes); return; }
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
  const int64_t now = c.bytes.fetch_add(int64_t(bytes)) + int64_t(bytes);
  int64_t p = c.peak.load(std::memory_order_relaxed);
  while (now > p && !c.peak.compare_exchange_weak(p, now, std::memory_order_relaxed)) {
  }
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
    // The copy runs on the destination's stream: the source's stream must be done writing src
    // before it, and must not reuse src's block (freed as soon as the caller lets go of it)
    // until the copy has read it, so the copy is waited for too.
    // both streams are waited for: neither may be capturing (synchronize checks the source's)
    check_not_capturing(dst_dev, "copying between two GPUs (to the device being captured)");
    synchronize(src_dev);
    CUDA_CHECK(cudaMemcpyPeerAsync(dst, dst_dev.index, src, src_dev.index, bytes,
                                   cuda_stream(dst_dev)));
    CUDA_CHECK(cudaStreamSynchronize(cuda_stream(dst_dev)));
    return;
  }
  Device on = dst_dev.is_cuda() ? dst_dev : src_dev;
  if (dst_dev.is_cpu() || src_dev.is_cpu())
    check_not_capturing(on, "copying between host and device memory (reading a tensor's values, "
                            "or making a tensor from JS data)");
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
  check_not_capturing(d, "synchronize()");
  CUDA_CHECK(cudaStreamSynchronize(cuda_stream(d)));
#else
  fail_no_cuda();
#endif
}

}  // namespace adashift

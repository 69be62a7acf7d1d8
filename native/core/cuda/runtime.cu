// Stream, error checking, device queries and the caching allocator.
#include <cuda_runtime.h>
#include <map>
#include <mutex>
#include <vector>
#include "../backend.h"
#include "runtime.h"

namespace adashift {

void cuda_check(cudaError_t e, const char* file, int line, const char* what) {
  if (e == cudaSuccess) return;
  const char* name = cudaGetErrorName(e);
  const char* desc = cudaGetErrorString(e);
  cudaGetLastError();  // clear sticky-less errors so the next call starts clean
  if (e == cudaErrorMemoryAllocation)
    fail(ErrorCode::CudaOom, cat("CUDA out of memory (", what, " at ", file, ":", line,
                                 "); free tensors with dispose()/tidy() or use a smaller batch"));
  fail(ErrorCode::Cuda, cat("CUDA error ", name, " (", desc, ") in ", what, " at ", file, ":",
                            line));
}

namespace {
struct DeviceState {
  std::once_flag once;
  cudaStream_t stream = nullptr;
  int sms = 0;
};
DeviceState g_dev[kMaxCudaDevices];

DeviceState& state(int index) {
  AS_CHECK(index >= 0 && index < kMaxCudaDevices, Device, "CUDA device index ", index,
           " out of range");
  DeviceState& s = g_dev[index];
  std::call_once(s.once, [&] {
    CUDA_CHECK(cudaSetDevice(index));
    CUDA_CHECK(cudaStreamCreateWithFlags(&s.stream, cudaStreamNonBlocking));
    CUDA_CHECK(cudaDeviceGetAttribute(&s.sms, cudaDevAttrMultiProcessorCount, index));
  });
  return s;
}
}  // namespace

cudaStream_t cuda_stream(Device d) {
  DeviceState& s = state(d.index);
  CUDA_CHECK(cudaSetDevice(d.index));
  return s.stream;
}

int cuda_sm_count(Device d) { return state(d.index).sms; }

int cuda_current_sm_count() {
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  return state(dev).sms;
}

int cuda_grid_for(Device d, int64_t n, int block) {
  int64_t want = (n + block - 1) / block;
  int64_t cap = int64_t(cuda_sm_count(d)) * 8;  // 8 resident blocks per SM keep it busy
  if (want < 1) want = 1;
  return int(want < cap ? want : cap);
}

// ---- caching allocator -------------------------------------------------------------------
// Sizes are rounded (512 B below 1 MiB, 2 MiB above) and freed blocks wait in a per-size
// free list for the next request of that size. All work runs on one stream per device, so a
// block freed after its last use is safe to hand out to a later kernel on the same stream.
namespace {
struct Cache {
  std::mutex m;
  std::multimap<size_t, void*> free_blocks;
  size_t reserved = 0;
};
Cache g_cache[kMaxCudaDevices];

size_t round_size(size_t n) {
  if (n < (1u << 20)) return (n + 511) / 512 * 512;
  return (n + (2u << 20) - 1) / (2u << 20) * (2u << 20);
}

void release_all(int device, Cache& c) {
  // caller holds c.m
  CUDA_CHECK(cudaSetDevice(device));
  for (auto& kv : c.free_blocks) {
    cudaFree(kv.second);
    c.reserved -= kv.first;
  }
  c.free_blocks.clear();
}
}  // namespace

void* cuda_cached_alloc(int device, size_t bytes) {
  state(device);
  size_t n = round_size(bytes);
  Cache& c = g_cache[device];
  std::lock_guard<std::mutex> lk(c.m);
  auto it = c.free_blocks.find(n);
  if (it != c.free_blocks.end()) {
    void* p = it->second;
    c.free_blocks.erase(it);
    return p;
  }
  CUDA_CHECK(cudaSetDevice(device));
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, n);
  if (e == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    // Give cached blocks back and retry once before reporting OOM.
    CUDA_CHECK(cudaStreamSynchronize(g_dev[device].stream));
    release_all(device, c);
    e = cudaMalloc(&p, n);
  }
  CUDA_CHECK(e);
  c.reserved += n;
  return p;
}

void cuda_cached_free(int device, void* p, size_t bytes) {
  Cache& c = g_cache[device];
  std::lock_guard<std::mutex> lk(c.m);
  c.free_blocks.emplace(round_size(bytes), p);
}

size_t cuda_cached_reserved(int device) {
  Cache& c = g_cache[device];
  std::lock_guard<std::mutex> lk(c.m);
  return c.reserved;
}

void cuda_empty_cache(int device) {
  Cache& c = g_cache[device];
  std::lock_guard<std::mutex> lk(c.m);
  CUDA_CHECK(cudaStreamSynchronize(state(device).stream));
  release_all(device, c);
}

// ---- what the host offers ----------------------------------------------------------------
#ifndef ADASHIFT_CUDA_ARCHS
#define ADASHIFT_CUDA_ARCHS "unknown"
#endif

BackendInfo cuda_backend_info() {
  BackendInfo info;
  info.cuda_compiled = true;
  info.compiled_archs = ADASHIFT_CUDA_ARCHS;
  cudaRuntimeGetVersion(&info.runtime_version);
  // With the static runtime and no driver installed this reports 0 rather than failing.
  if (cudaDriverGetVersion(&info.driver_version) != cudaSuccess) info.driver_version = 0;
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    cudaGetLastError();
    if (info.driver_version == 0 || e == cudaErrorInsufficientDriver || e == cudaErrorNoDevice)
      info.reason = info.driver_version == 0
                        ? "no NVIDIA driver found (libcuda.so could not be loaded)"
                        : cat("no CUDA device: ", cudaGetErrorString(e));
    else
      info.reason = cat("cudaGetDeviceCount failed: ", cudaGetErrorName(e), " (",
                        cudaGetErrorString(e), ")");
    if (e == cudaErrorInsufficientDriver && info.driver_version > 0)
      info.reason = cat("the NVIDIA driver (CUDA ", info.driver_version / 1000, ".",
                        (info.driver_version % 1000) / 10,
                        ") is older than this build's CUDA runtime (",
                        info.runtime_version / 1000, ".", (info.runtime_version % 1000) / 10,
                        "); update the driver");
    return info;
  }
  if (count == 0) {
    info.reason = "the NVIDIA driver reports no CUDA devices";
    return info;
  }
  for (int i = 0; i < count && i < kMaxCudaDevices; ++i) {
    cudaDeviceProp p;
    if (cudaGetDeviceProperties(&p, i) != cudaSuccess) { cudaGetLastError(); continue; }
    CudaDeviceInfo d;
    d.index = i;
    d.name = p.name;
    d.total_memory = p.totalGlobalMem;
    d.cc_major = p.major;
    d.cc_minor = p.minor;
    d.multiprocessors = p.multiProcessorCount;
    info.devices.push_back(d);
  }
  info.cuda_usable = !info.devices.empty();
  if (!info.cuda_usable) info.reason = "no CUDA device could be queried";
  return info;
}

}  // namespace adashift

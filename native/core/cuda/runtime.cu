// Stream, error checking, device queries and the caching allocator.
#include <cuda_runtime.h>
#include <mutex>
#include "../backend.h"
#include "../block_cache.h"
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
  int cc_major = 0;
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
    CUDA_CHECK(cudaDeviceGetAttribute(&s.cc_major, cudaDevAttrComputeCapabilityMajor, index));
  });
  return s;
}
DeviceState& current_state() {
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  return state(dev);
}

}  // namespace

cudaStream_t cuda_stream(Device d) {
  DeviceState& s = state(d.index);
  CUDA_CHECK(cudaSetDevice(d.index));
  return s.stream;
}

int cuda_sm_count(Device d) { return state(d.index).sms; }

int cuda_current_sm_count() { return current_state().sms; }
int cuda_current_cc_major() { return current_state().cc_major; }

int cuda_grid_for(Device d, int64_t n, int block) {
  int64_t want = (n + block - 1) / block;
  int64_t cap = int64_t(cuda_sm_count(d)) * 8;  // 8 resident blocks per SM keep it busy
  if (want < 1) want = 1;
  return int(want < cap ? want : cap);
}

// ---- caching allocator and graph capture ------------------------------------------------------
// block_cache.h keeps the books (free lists, graph pools); here are the CUDA calls under it.
namespace {
struct CudaBlocks final : BlockCache::Backend {
  int device = 0;
  void* raw_alloc(size_t n) override {
    CUDA_CHECK(cudaSetDevice(device));
    void* p = nullptr;
    // During a capture cudaMalloc counts as unsafe (it is not recorded). The block outlives the
    // capture in the graph's pool, which is what the graph needs, so allow it for this call.
    cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
    CUDA_CHECK(cudaThreadExchangeStreamCaptureMode(&mode));
    cudaError_t e = cudaMalloc(&p, n);
    CUDA_CHECK(cudaThreadExchangeStreamCaptureMode(&mode));
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      return nullptr;
    }
    CUDA_CHECK(e);
    return p;
  }
  void raw_free(void* p) override {
    CUDA_CHECK(cudaSetDevice(device));
    cudaFree(p);
  }
  void wait_idle() override { CUDA_CHECK(cudaStreamSynchronize(state(device).stream)); }
};

struct DeviceCache {
  CudaBlocks backend;
  BlockCache cache{&backend};
};
DeviceCache& device_cache(int device) {
  static DeviceCache* caches = [] {
    auto* c = new DeviceCache[kMaxCudaDevices];  // never destroyed: frees may run at teardown
    for (int i = 0; i < kMaxCudaDevices; ++i) c[i].backend.device = i;
    return c;
  }();
  return caches[device];
}
}  // namespace

void* cuda_cached_alloc(int device, size_t bytes) {
  state(device);
  BlockCache& c = device_cache(device).cache;
  void* p = c.alloc(bytes);
  if (!p) {
    const bool capturing = c.capturing_pool() != 0;
    fail(ErrorCode::CudaOom,
         cat("CUDA out of memory allocating ", bytes, " bytes on cuda:", device,
             capturing ? " while capturing a CUDA graph (the graph's pool cannot give cached "
                         "blocks back during a capture)"
                       : "",
             "; free tensors with dispose()/tidy() or use a smaller batch"));
  }
  return p;
}

void cuda_cached_free(int device, void* p, size_t bytes) { device_cache(device).cache.free(p, bytes); }

size_t cuda_cached_reserved(int device) { return device_cache(device).cache.reserved(); }

void cuda_empty_cache(int device) {
  state(device);
  device_cache(device).cache.empty_cache();
}

bool cuda_capturing(int device) { return device_cache(device).cache.capturing_pool() != 0; }

int cuda_capture_begin(int device) {
  DeviceState& s = state(device);
  BlockCache& c = device_cache(device).cache;
  const int pool = c.begin_capture();
  CUDA_CHECK(cudaSetDevice(device));
  cudaError_t e = cudaStreamBeginCapture(s.stream, cudaStreamCaptureModeThreadLocal);
  if (e != cudaSuccess) {
    c.end_capture();
    c.release_pool(pool);
    CUDA_CHECK(e);
  }
  return pool;
}

CudaGraphObjects cuda_capture_end(int device) {
  DeviceState& s = state(device);
  BlockCache& c = device_cache(device).cache;
  CudaGraphObjects g;
  g.device = device;
  g.pool = c.capturing_pool();
  AS_CHECK(g.pool != 0, CudaGraph, "no CUDA graph capture is open on cuda:", device);
  CUDA_CHECK(cudaSetDevice(device));
  cudaError_t e = cudaStreamEndCapture(s.stream, &g.graph);
  c.end_capture();
  if (e == cudaSuccess) e = cudaGraphInstantiate(&g.exec, g.graph, 0);
  if (e != cudaSuccess) {
    cudaGetLastError();
    if (g.graph) cudaGraphDestroy(g.graph);
    c.release_pool(g.pool);
    fail(ErrorCode::CudaGraph,
         cat("capturing the CUDA graph failed: ", cudaGetErrorName(e), " (", cudaGetErrorString(e),
             "); the captured function must queue device work only (no reads to the host, no "
             "synchronize, no host-to-device copies)"));
  }
  return g;
}

void cuda_capture_abort(int device) {
  BlockCache& c = device_cache(device).cache;
  const int pool = c.capturing_pool();
  if (pool == 0) return;
  DeviceState& s = state(device);
  cudaSetDevice(device);
  cudaGraph_t graph = nullptr;
  if (cudaStreamEndCapture(s.stream, &graph) == cudaSuccess && graph) cudaGraphDestroy(graph);
  cudaGetLastError();
  c.end_capture();
  c.release_pool(pool);
}

void cuda_graph_launch(const CudaGraphObjects& g) {
  AS_CHECK(!cuda_capturing(g.device), CudaGraph,
           "a CUDA graph cannot be replayed while another one is being captured on cuda:", g.device);
  DeviceState& s = state(g.device);
  CUDA_CHECK(cudaSetDevice(g.device));
  CUDA_CHECK(cudaGraphLaunch(g.exec, s.stream));
}

void cuda_graph_release(CudaGraphObjects& g) {
  if (g.exec) cudaGraphExecDestroy(g.exec);
  if (g.graph) cudaGraphDestroy(g.graph);
  g.exec = nullptr;
  g.graph = nullptr;
  if (g.pool) device_cache(g.device).cache.release_pool(g.pool);
  g.pool = 0;
}

size_t cuda_pool_bytes(int device, int pool) { return device_cache(device).cache.pool_bytes(pool); }

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

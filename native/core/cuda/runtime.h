// CUDA plumbing shared by the launchers: checked calls, the one stream per device, device
// properties. Compiled only when the CUDA backend is built.
#pragma once
#include <cuda_runtime_api.h>
#include <cstddef>
#include "../device.h"

namespace adashift {

void cuda_check(cudaError_t e, const char* file, int line, const char* what);
#define CUDA_CHECK(expr) ::adashift::cuda_check((expr), __FILE__, __LINE__, #expr)
// After every kernel launch: catches bad configurations at the launch site.
#define CUDA_CHECK_LAUNCH() ::adashift::cuda_check(cudaGetLastError(), __FILE__, __LINE__, "kernel launch")

// The device's single work stream (created on first use; also makes the device current).
cudaStream_t cuda_stream(Device d);
int cuda_sm_count(Device d);
// Blocks for a grid-stride loop over n items: enough to fill the device, no more.
int cuda_grid_for(Device d, int64_t n, int block);
int cuda_current_sm_count();
int cuda_current_cc_major();  // compute capability of the current device (major)

// Caching allocator (device memory is returned to per-size free lists, not to the driver).
void* cuda_cached_alloc(int device, size_t bytes);
void cuda_cached_free(int device, void* p, size_t bytes);
size_t cuda_cached_reserved(int device);
void cuda_empty_cache(int device);

// CUDA graphs (graph.h is the device-neutral face of these). A capture records the work queued
// on the device's stream; its allocations come from a pool that stays reserved for the graph.
struct CudaGraphObjects {
  int device = 0;
  int pool = 0;
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
};
bool cuda_capturing(int device);
int cuda_capture_begin(int device);
CudaGraphObjects cuda_capture_end(int device);
void cuda_capture_abort(int device);  // no-op when no capture is open
void cuda_graph_launch(const CudaGraphObjects& g);
void cuda_graph_release(CudaGraphObjects& g);
size_t cuda_pool_bytes(int device, int pool);

}  // namespace adashift

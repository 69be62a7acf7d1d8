// Device helpers shared by the CUDA kernel files: grid sizing, alignment checks, 16-byte
// loads/stores, deterministic warp/block sums, and scratch memory from the caching allocator.
// Every reduction here adds in a fixed order that depends only on the launch shape, so the
// same inputs give the same bits on every run on one device.
#pragma once
#include <cuda_runtime.h>
#include <cstdint>
#include "runtime.h"
#include "../math.h"

namespace adashift {
namespace cuda {
namespace detail {

constexpr int kMaxGridX = 2147483647;  // 2^31 - 1
constexpr int kMaxGridYZ = 65535;

// Blocks for a grid-stride loop over n items: ceil(n / block), at most 8 per SM, at least 1.
inline int grid_for(int64_t n, int block) {
  int64_t want = (n + block - 1) / block;
  int64_t cap = int64_t(cuda_current_sm_count()) * 8;
  if (want > cap) want = cap;
  if (want < 1) want = 1;
  return int(want);
}

// Blocks for one-block-per-item kernels that loop over items (planes, rows) in grid-stride
// fashion: enough blocks to fill the device at full occupancy, no more than there are items.
inline int grid_for_items(int64_t items, int block) {
  int per_sm = 2048 / block;
  if (per_sm > 32) per_sm = 32;
  if (per_sm < 1) per_sm = 1;
  int64_t cap = int64_t(cuda_current_sm_count()) * per_sm;
  int64_t g = items < cap ? items : cap;
  if (g < 1) g = 1;
  return int(g);
}

// nullptr counts as aligned (an absent operand does not block the vector path).
inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

inline int round_up32(int64_t n) {
  int64_t r = (n + 31) / 32 * 32;
  return int(r < 32 ? 32 : r);
}

// Threads per block for a plane of `items` work items: a multiple of 32 in [32, 256].
inline int block_for_items(int64_t items) {
  if (items >= 256) return 256;
  return round_up32(items);
}

__device__ __forceinline__ float4 ld4(const float* p, int64_t i4) {
  return reinterpret_cast<const float4*>(p)[i4];
}
__device__ __forceinline__ void st4(float* p, int64_t i4, float4 v) {
  reinterpret_cast<float4*>(p)[i4] = v;
}

__device__ __forceinline__ int64_t global_thread() {
  return int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t global_stride() { return int64_t(gridDim.x) * blockDim.x; }

// Butterfly sum over the 32 lanes; every lane ends with the same value (a + b == b + a).
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
// Sum within aligned teams of `width` lanes (width a power of two <= 32). All 32 lanes of
// the warp must call it.
template <typename T>
__device__ __forceinline__ T team_sum(T v, int width) {
  for (int o = width >> 1; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Block-wide sum (blockDim.x a multiple of 32, at most 1024): warp sums, then warp 0 adds the
// per-warp sums in warp order. The result is valid in thread 0. `sh` holds 32 values; the
// leading barrier makes back-to-back calls with the same buffer safe. Every thread of the
// block must call it.
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  T r = T(0);
  if (warp == 0) {
    r = lane < nwarps ? sh[lane] : T(0);
    r = warp_sum(r);
  }
  return r;
}

// Scratch device memory from the caching allocator for the duration of a launcher. Freed
// blocks are reused only by later work on the same stream, so freeing right after the last
// launch that uses it is safe (stream order).
class Scratch {
 public:
  explicit Scratch(size_t bytes) : bytes_(bytes) {
    CUDA_CHECK(cudaGetDevice(&device_));
    ptr_ = cuda_cached_alloc(device_, bytes_);
  }
  ~Scratch() { cuda_cached_free(device_, ptr_, bytes_); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  template <typename T>
  T* as() const { return static_cast<T*>(ptr_); }
 private:
  int device_ = 0;
  size_t bytes_ = 0;
  void* ptr_ = nullptr;
};

// ---- deterministic column sums ---------------------------------------------------------------
// out_k[j] = sum over rows r of value_k(r, j), for j < cols and k < NOUT (sum_rows; LayerNorm's
// dweight and dbias). V is a functor `__device__ void operator()(int64_t r, int64_t j,
// double* acc) const` that adds its NOUT values to acc[0..NOUT).
//
// Pass 1: blocks of 32 x 8 threads; blockIdx.x picks 32 adjacent columns (coalesced rows),
// blockIdx.y a chunk of rows. Thread (tx, ty) adds rows ty, ty + 8, ... of its chunk in order
// (double), then thread ty == 0 adds the 8 partials in ty order. With one chunk the result goes
// straight to out; otherwise chunk partials go to scratch and pass 2 adds them in chunk order.
// The chunking depends only on (rows, cols, SM count): same bits on every run.
struct ColsumOut {
  float* p[2];
};

template <int NOUT, class V>
__global__ void k_colsum_partial(V val, int64_t rows, int64_t cols, int64_t rows_per_chunk,
                                 int64_t chunks, double* part, ColsumOut out) {
  __shared__ double sh[NOUT][8][33];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t tiles = (cols + 31) / 32;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    for (int64_t chunk = blockIdx.y; chunk < chunks; chunk += gridDim.y) {
      const int64_t j = tile * 32 + tx;
      const int64_t r0 = chunk * rows_per_chunk;
      const int64_t r1 = r0 + rows_per_chunk < rows ? r0 + rows_per_chunk : rows;
      double acc[NOUT];
#pragma unroll
      for (int k = 0; k < NOUT; ++k) acc[k] = 0.0;
      if (j < cols)
        for (int64_t r = r0 + ty; r < r1; r += 8) val(r, j, acc);
#pragma unroll
      for (int k = 0; k < NOUT; ++k) sh[k][ty][tx] = acc[k];
      __syncthreads();
      if (ty == 0 && j < cols) {
#pragma unroll
        for (int k = 0; k < NOUT; ++k) {
          double t = 0.0;
          for (int y = 0; y < 8; ++y) t += sh[k][y][tx];
          if (chunks == 1)
            out.p[k][j] = float(t);
          else
            part[(chunk * NOUT + k) * cols + j] = t;
        }
      }
      __syncthreads();
    }
  }
}

template <int NOUT>
__global__ void k_colsum_final(const double* part, int64_t chunks, int64_t cols, ColsumOut out) {
  for (int64_t j = global_thread(); j < cols; j += global_stride()) {
#pragma unroll
    for (int k = 0; k < NOUT; ++k) {
      double t = 0.0;
      for (int64_t c = 0; c < chunks; ++c) t += part[(c * NOUT + k) * cols + j];
      out.p[k][j] = float(t);
    }
  }
}

// rows may be 0 (then every out_k[j] is 0).
template <int NOUT, class V>
void column_sums(cudaStream_t s, V val, int64_t rows, int64_t cols, float* const* outs) {
  static_assert(NOUT >= 1 && NOUT <= 2, "column_sums: 1 or 2 outputs");
  if (cols <= 0) return;
  const int64_t tiles = (cols + 31) / 32;
  const int64_t target = int64_t(cuda_current_sm_count()) * 8;  // blocks that fill the device
  int64_t chunks = (target + tiles - 1) / tiles;
  const int64_t max_chunks = (rows + 63) / 64;  // at least 64 rows (8 per thread) per chunk
  if (chunks > max_chunks) chunks = max_chunks;
  if (chunks < 1) chunks = 1;
  int64_t rows_per_chunk = rows > 0 ? (rows + chunks - 1) / chunks : 1;
  chunks = rows > 0 ? (rows + rows_per_chunk - 1) / rows_per_chunk : 1;  // no empty chunks
  ColsumOut out{{outs[0], NOUT > 1 ? outs[1] : nullptr}};
  const dim3 block(32, 8);
  const dim3 grid(unsigned(tiles < kMaxGridX ? tiles : kMaxGridX),
                  unsigned(chunks < kMaxGridYZ ? chunks : kMaxGridYZ));
  if (chunks == 1) {
    k_colsum_partial<NOUT, V><<<grid, block, 0, s>>>(val, rows, cols, rows_per_chunk, 1, nullptr,
                                                     out);
    CUDA_CHECK_LAUNCH();
    return;
  }
  Scratch part(size_t(chunks) * NOUT * size_t(cols) * sizeof(double));
  k_colsum_partial<NOUT, V><<<grid, block, 0, s>>>(val, rows, cols, rows_per_chunk, chunks,
                                                   part.as<double>(), out);
  CUDA_CHECK_LAUNCH();
  k_colsum_final<NOUT><<<grid_for(cols, 256), 256, 0, s>>>(part.as<double>(), chunks, cols, out);
  CUDA_CHECK_LAUNCH();
}

}  // namespace detail
}  // namespace cuda
}  // namespace adashift

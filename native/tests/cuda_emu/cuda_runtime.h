// CPU emulation of what the adashift kernels use from CUDA C++: qualifiers, built-in index
// variables, __syncthreads, __syncwarp, warp shuffles, __ldg, __fmul_rn, float4, shared memory and kernel
// launches. The .cu files are compiled as C++ after cuda_emu_cu2cc (cu_to_cc.cc) has rewritten
// the three things C++ cannot spell:
//   k<<<grid, block, smem, stream>>>(args)   ->  k ->* ::emu::launch_site(...)(args)
//   __shared__ T name[dims];                 ->  auto& name = ::emu::static_shared<T[dims]>(...)
//   extern __shared__ T name[];              ->  T* const name = ::emu::dynamic_shared<T>()
// (and __launch_bounds__(n) kernels get a check of the block size at entry).
//
// Execution model (emu_runtime.cc): every CUDA thread of a block is a fiber on one OS thread;
// __syncthreads and shuffles switch fibers; blocks of a launch are spread over a small pool of
// OS threads. Misuse that a GPU would turn into a hang, garbage or a launch error aborts with a
// message naming the kernel, the launch site, the block and the thread.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>
#include "cuda_runtime_api.h"

#define __global__
#define __device__
#define __host__
#define __constant__
#define __forceinline__ inline
// The kernel's bound is checked by the code cu_to_cc inserts at the top of its body.
#define __launch_bounds__(...)

constexpr int warpSize = 32;

// A copy from memory is a vector load and an assignment to memory a vector store: both check
// the 16-byte alignment the GPU requires. The check is an out-of-line call so that the compiler
// cannot fold it away from the type's declared alignment (and it runs before any member is read
// or written).
void emu_check_float4_align(const void* p, const char* what);
struct alignas(16) float4 {
  float x, y, z, w;
  float4() = default;
  constexpr float4(float a, float b, float c, float d) : x(a), y(b), z(c), w(d) {}
  float4(const float4& o) {
    emu_check_float4_align(&o, "load");
    x = o.x;
    y = o.y;
    z = o.z;
    w = o.w;
  }
  float4& operator=(const float4& o) {
    emu_check_float4_align(this, "store");
    x = o.x;
    y = o.y;
    z = o.z;
    w = o.w;
    return *this;
  }
};
inline float4 make_float4(float a, float b, float c, float d) { return float4(a, b, c, d); }

namespace emu {

// Current thread and block of the calling fiber, and the shape of the running launch.
extern thread_local uint3 t_thread_idx __attribute__((tls_model("initial-exec")));
extern thread_local uint3 t_block_idx __attribute__((tls_model("initial-exec")));
extern dim3 g_grid_dim, g_block_dim;

[[noreturn]] void fail_in_kernel(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

void syncthreads(const char* file, int line);
uint64_t shfl_xor(unsigned mask, uint64_t bits, int lane_mask, const char* file, int line);
void* shared_slot(const void* site, size_t bytes, size_t align);
void* dynamic_shared(size_t align);
void check_launch_bounds(long long max_threads, const char* file, int line);

template <typename T>
inline T shfl_xor_sync(unsigned mask, T v, int lane_mask, const char* file, int line) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8, "shuffle of up to 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof v);
  bits = shfl_xor(mask, bits, lane_mask, file, line);
  T r;
  std::memcpy(&r, &bits, sizeof r);
  return r;
}

// A static __shared__ variable: one object per block, the same for every thread of the block,
// filled with 0xff bytes (NaN for float and double) before the block starts. Site is the type of
// a lambda written at the declaration, so every declaration (and every instantiation of a kernel
// template) gets its own key.
template <typename T, typename Site>
inline T& static_shared(Site) {
  static char key;  // its address identifies the declaration; writable so it is never merged
  return *static_cast<T*>(shared_slot(&key, sizeof(T), alignof(T) < 16 ? 16 : alignof(T)));
}
template <typename T>
inline T* dynamic_shared() {
  return static_cast<T*>(dynamic_shared(alignof(T) < 16 ? 16 : alignof(T)));
}

// ---- kernel launches -------------------------------------------------------------------------
// Everything a launch needs after its arguments are bound; run_thread runs the kernel body for
// the current fiber. Kept type-erased so that a graph capture can store it.
// A launch as written: the kernel's name, where, and its configuration.
struct LaunchConfig {
  const char* kernel;
  const char* file;
  int line;
  dim3 grid, block;
  size_t smem;
  cudaStream_t stream;
};
struct Launch : LaunchConfig {
  virtual ~Launch() = default;
  virtual void run_thread() const = 0;
};
// Validates the launch and runs it (or records it while its stream is capturing).
void submit(Launch* launch);  // takes ownership
void check_kernel_pointer(const Launch& l, int index, const void* p);

template <typename... A>
struct PendingLaunch {
  LaunchConfig config;
  std::tuple<A...> args;
};

struct LaunchSite {
  LaunchConfig config;
  template <typename... A>
  PendingLaunch<std::decay_t<A>...> operator()(A&&... a) const {
    return {config, std::tuple<std::decay_t<A>...>(std::forward<A>(a)...)};
  }
};
inline LaunchSite launch_site(const char* kernel, const char* file, int line, dim3 grid,
                              dim3 block, size_t smem = 0, cudaStream_t stream = 0) {
  return LaunchSite{LaunchConfig{kernel, file, line, grid, block, smem, stream}};
}

template <typename Fn, typename... A>
struct KernelCall final : Launch {
  Fn fn;
  std::tuple<A...> args;
  // Each thread gets its own copies of the parameters (converted to the kernel's types), as
  // the GPU's parameter space gives each thread the same values.
  void run_thread() const override { std::apply(fn, args); }
};

template <typename T>
inline void check_arg(const Launch& l, int index, const T& v) {
  if constexpr (std::is_pointer<T>::value) check_kernel_pointer(l, index, static_cast<const void*>(v));
}

// kernel ->* launch_site(...)(args): a kernel name or fully specified template-id on the left.
template <typename... P, typename... A>
void operator->*(void (*fn)(P...), PendingLaunch<A...>&& p) {
  static_assert(sizeof...(P) == sizeof...(A), "kernel launched with the wrong number of arguments");
  auto* k = new KernelCall<void (*)(P...), A...>();
  static_cast<LaunchConfig&>(*k) = p.config;
  k->fn = fn;
  k->args = std::move(p.args);
  int index = 0;
  std::apply([&](const auto&... a) { (check_arg(*k, index++, a), ...); }, k->args);
  submit(k);
}

}  // namespace emu

#define threadIdx (static_cast<const uint3&>(::emu::t_thread_idx))
#define blockIdx (static_cast<const uint3&>(::emu::t_block_idx))
#define blockDim (static_cast<const dim3&>(::emu::g_block_dim))
#define gridDim (static_cast<const dim3&>(::emu::g_grid_dim))
#define __syncthreads() ::emu::syncthreads(__FILE__, __LINE__)
#define __shfl_xor_sync(mask, v, lane_mask) \
  ::emu::shfl_xor_sync((mask), (v), (lane_mask), __FILE__, __LINE__)

// A warp barrier among the lanes of mask, checked like a shuffle (the same call by every lane of
// the mask); memory is coherent between the fibers of a block, so it needs no fence here.
inline void __syncwarp(unsigned mask = 0xffffffffu, const char* file = __builtin_FILE(),
                       int line = __builtin_LINE()) {
  ::emu::shfl_xor(mask, 0, 0, file, line);
}

template <typename T>
inline T __ldg(const T* p) {
  return *p;
}
// Correctly rounded product, never contracted into an FMA (the emulated kernels are compiled
// with -ffp-contract=off, so no product is).
inline float __fmul_rn(float a, float b) { return a * b; }

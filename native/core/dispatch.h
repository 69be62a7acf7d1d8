// Picks the backend launcher for a device: cpu::fn(args...) or cuda::fn(stream, args...).
#pragma once
#include "common.h"
#include "device.h"
#ifdef ADASHIFT_WITH_CUDA
#include "cuda/runtime.h"
#endif

namespace adashift {
[[noreturn]] inline void fail_no_cuda() {
  fail(ErrorCode::NoCuda, "this build of adashift has no CUDA backend (it was compiled without "
                          "nvcc); rebuild with the CUDA toolkit installed, or use device 'cpu'");
}
}  // namespace adashift

#ifdef ADASHIFT_WITH_CUDA
#define AS_DISPATCH(dev, fn, ...)                                                   \
  do {                                                                              \
    if ((dev).is_cpu()) ::adashift::cpu::fn(__VA_ARGS__);                           \
    else { ::adashift::cuda::fn(::adashift::cuda_stream(dev), __VA_ARGS__); }       \
  } while (0)
#else
#define AS_DISPATCH(dev, fn, ...)                                                   \
  do {                                                                              \
    if ((dev).is_cpu()) ::adashift::cpu::fn(__VA_ARGS__);                           \
    else ::adashift::fail_no_cuda();                                                \
  } while (0)
#endif

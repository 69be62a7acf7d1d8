// Shared definitions for the kernel library: the error type every layer above understands,
// the __host__ __device__ marker, and argument checks that say what was wrong.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <sstream>
#include <vector>

#if defined(__CUDACC__)
#define AS_HD __host__ __device__ __forceinline__
#else
#define AS_HD inline
#endif

namespace adashift {

// Codes are part of the public JS API (error.code); keep them in sync with lib/errors.ts.
enum class ErrorCode { Arg, Shape, DType, Device, NoCuda, Cuda, CudaOom, CudaGraph, Disposed, IO, Oom };

inline const char* error_code_name(ErrorCode c) {
  switch (c) {
    case ErrorCode::Arg: return "ERR_ARG";
    case ErrorCode::Shape: return "ERR_SHAPE";
    case ErrorCode::DType: return "ERR_DTYPE";
    case ErrorCode::Device: return "ERR_DEVICE";
    case ErrorCode::NoCuda: return "ERR_NO_CUDA";
    case ErrorCode::Cuda: return "ERR_CUDA";
    case ErrorCode::CudaOom: return "ERR_CUDA_OOM";
    case ErrorCode::CudaGraph: return "ERR_CUDA_GRAPH";
    case ErrorCode::Disposed: return "ERR_DISPOSED";
    case ErrorCode::IO: return "ERR_IO";
    case ErrorCode::Oom: return "ERR_OOM";
  }
  return "ERR_ARG";
}

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& msg) : std::runtime_error(msg), code_(code) {}
  ErrorCode code() const { return code_; }
 private:
  ErrorCode code_;
};

template <typename... Parts>
std::string cat(const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  return os.str();
}

[[noreturn]] inline void fail(ErrorCode code, const std::string& msg) { throw Error(code, msg); }

#define AS_CHECK(cond, code, ...)                                            \
  do {                                                                       \
    if (!(cond)) ::adashift::fail(::adashift::ErrorCode::code,               \
                                  ::adashift::cat(__VA_ARGS__));             \
  } while (0)

inline std::string shape_str(const std::vector<int64_t>& s) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << ']';
  return os.str();
}

}  // namespace adashift

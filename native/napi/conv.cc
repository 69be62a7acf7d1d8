// Bindings of the conv op family: conv2d forward/backward, the CPU GEMM backend switch, and a
// raw entry to the CPU GEMM for tests and benchmarks.
#include <string>
#include "../core/cpu/gemm.h"
#include "../core/ops/conv.h"
#include "common.h"

namespace adashift {
namespace napi {

namespace {

using CI = Napi::CallbackInfo;

constexpr int64_t kMaxStride = int64_t(1) << 20;
constexpr int64_t kMaxDim = int64_t(1) << 40;

// conv2dForward(x, w, b | null, strideH, strideW, padH, padW)
Napi::Value Conv2dForward(const CI& info) {
  Args a{info, "conv2d"};
  return wrap(info, conv2d_forward(a.tensor(0, "x"), a.tensor(1, "weight"),
                                   a.optional_tensor(2, "bias"),
                                   int(a.integer(3, "strideH", 1, kMaxStride)),
                                   int(a.integer(4, "strideW", 1, kMaxStride)),
                                   int(a.integer(5, "padH", 0, kMaxStride)),
                                   int(a.integer(6, "padW", 0, kMaxStride))));
}

// conv2dBackward(dy, x, w, strideH, strideW, padH, padW, needDx, needDw, needDb, dxAdd?)
//   -> [dx | null, dw | null, db | null]; with dxAdd (x's shape), dx includes it
Napi::Value Conv2dBackward(const CI& info) {
  Args a{info, "conv2dBackward"};
  Conv2dGrad g = conv2d_backward(
      a.tensor(0, "dy"), a.tensor(1, "x"), a.tensor(2, "weight"),
      int(a.integer(3, "strideH", 1, kMaxStride)), int(a.integer(4, "strideW", 1, kMaxStride)),
      int(a.integer(5, "padH", 0, kMaxStride)), int(a.integer(6, "padW", 0, kMaxStride)),
      a.boolean(7, "needDx"), a.boolean(8, "needDw"), a.boolean(9, "needDb"),
      a.optional_tensor(10, "dxAdd"));
  return wrap_all(info, {g.dx, g.dw, g.db});
}

std::string string_arg(const CI& info, size_t i, const char* fn, const char* name) {
  Napi::Value v = Args{info, fn}.at(i, name);
  AS_CHECK(v.IsString(), Arg, fn, ": '", name, "' must be a string");
  return v.As<Napi::String>().Utf8Value();
}

// gemmBackend(choice?: 'own' | 'openblas') -> 'openblas' | 'own' (after the change)
Napi::Value GemmBackendJs(const CI& info) {
  if (info.Length() > 0 && !info[0].IsUndefined() && !info[0].IsNull())
    cpu::set_gemm_backend(string_arg(info, 0, "gemmBackend", "choice"));
  return Napi::String::New(info.Env(), cpu::gemm_backend_name());
}

// gemmInfo() -> { backend, blasCompiled, kernel }
Napi::Value GemmInfo(const CI& info) {
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("backend", cpu::gemm_backend_name());
  o.Set("blasCompiled", cpu::gemm_blas_compiled());
  o.Set("kernel", cpu::gemm_kernel_name());
  return o;
}

// cpuPeakGflops(ms) -> the measured FMA rate of all CPU threads, GFLOP/s (cpu::fma_peak_gflops)
Napi::Value CpuPeakGflops(const CI& info) {
  Args a{info, "cpuPeakGflops"};
  return Napi::Number::New(info.Env(), cpu::fma_peak_gflops(a.integer(0, "ms", 1, 10000)));
}

// gemm(a, b, c, transA, transB, m, n, k, lda, ldb, ldc, alpha, beta, backend) -> updated copy
// of c
Napi::Value Gemm(const CI& info) {
  Args a{info, "gemm"};
  return wrap(info, gemm_cpu(a.tensor(0, "a"), a.tensor(1, "b"), a.tensor(2, "c"),
                             a.boolean(3, "transA"), a.boolean(4, "transB"),
                             a.integer(5, "m", 0, kMaxDim), a.integer(6, "n", 0, kMaxDim),
                             a.integer(7, "k", 0, kMaxDim), a.integer(8, "lda", 1, kMaxDim),
                             a.integer(9, "ldb", 1, kMaxDim), a.integer(10, "ldc", 1, kMaxDim),
                             float(a.number(11, "alpha")), float(a.number(12, "beta")),
                             string_arg(info, 13, "gemm", "backend")));
}

}  // namespace

void register_conv(Napi::Env env, Napi::Object exports) {
  AS_EXPORT(exports, env, "conv2dForward", Conv2dForward);
  AS_EXPORT(exports, env, "conv2dBackward", Conv2dBackward);
  AS_EXPORT(exports, env, "gemmBackend", GemmBackendJs);
  AS_EXPORT(exports, env, "gemmInfo", GemmInfo);
  AS_EXPORT(exports, env, "cpuPeakGflops", CpuPeakGflops);
  AS_EXPORT(exports, env, "gemm", Gemm);
}

}  // namespace napi
}  // namespace adashift

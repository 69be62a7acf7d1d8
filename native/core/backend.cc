#include "backend.h"
#include <thread>
#include "threadpool.h"

namespace adashift {

#ifdef ADASHIFT_WITH_CUDA
BackendInfo cuda_backend_info();  // cuda/runtime.cu
#endif

BackendInfo backend_info() {
#ifdef ADASHIFT_WITH_CUDA
  BackendInfo info = cuda_backend_info();
#else
  BackendInfo info;
  info.cuda_compiled = false;
  info.cuda_usable = false;
  info.reason = "this build has no CUDA backend: nvcc was not found when the addon was built "
                "(or ADASHIFT_CUDA=0 was set)";
#endif
  info.cpu_threads = num_threads();
  return info;
}

void require_device(Device d) {
  if (d.is_cpu()) return;
  AS_CHECK(d.is_cuda(), Device, "unknown device type");
#ifdef ADASHIFT_WITH_CUDA
  static const BackendInfo info = cuda_backend_info();  // device set fixed for the process
  AS_CHECK(info.cuda_usable, NoCuda, "CUDA is not usable on this host: ", info.reason);
  AS_CHECK(d.index >= 0 && d.index < int(info.devices.size()), Device, "device cuda:", d.index,
           " does not exist; this host has ", info.devices.size(), " CUDA device(s)");
#else
  fail(ErrorCode::NoCuda, "this build of adashift has no CUDA backend (compiled without nvcc); "
                          "rebuild with the CUDA toolkit installed, or use device 'cpu'");
#endif
}

}  // namespace adashift

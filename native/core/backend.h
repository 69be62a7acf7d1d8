// What the build and the host can do: CUDA compiled in, runtime/driver versions, devices,
// and why CUDA is not usable when it is not.
#pragma once
#include <string>
#include <vector>
#include "device.h"

namespace adashift {

struct CudaDeviceInfo {
  int index = 0;
  std::string name;
  size_t total_memory = 0;
  int cc_major = 0, cc_minor = 0;
  int multiprocessors = 0;
};

struct BackendInfo {
  bool cuda_compiled = false;
  bool cuda_usable = false;
  int runtime_version = 0;  // CUDA's encoding: 1000*major + 10*minor
  int driver_version = 0;   // 0 when no driver is installed
  std::string reason;       // why CUDA is not usable (empty when usable)
  std::vector<CudaDeviceInfo> devices;
  std::string compiled_archs;
  int cpu_threads = 1;
};

BackendInfo backend_info();
// Throws ERR_NO_CUDA / ERR_DEVICE when d cannot be used; CPU always passes.
void require_device(Device d);

}  // namespace adashift

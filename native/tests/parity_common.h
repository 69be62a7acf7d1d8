// Shared by the CUDA parity files (parity_*.cc, run by cuda_check and cuda_emu_check).
#pragma once
#include <cstdio>
#include "core/backend.h"

// True (after printing "<name>: SKIPPED (<reason>)") where CUDA is not usable: each parity entry
// point returns 0 failures then.
inline bool parity_skipped(const char* name) {
  const adashift::BackendInfo info = adashift::backend_info();
  if (!info.cuda_usable) std::printf("%s: SKIPPED (%s)\n", name, info.reason.c_str());
  return !info.cuda_usable;
}

// Whether the CUDA parity checks run on the CPU emulation of CUDA (native/tests/cuda_emu), whose
// runtime sets ADASHIFT_CUDA_EMU=1 before main(): timings mean nothing there, so the benchmark
// and timing parts are skipped (every op, shape and code path is still compared). Setting it on
// a GPU host gives the same quick run; ADASHIFT_CUDA_EMU=full runs everything on the emulation.
#pragma once
#include <cstdlib>
#include <cstring>

inline bool cuda_emulated() {
  const char* v = std::getenv("ADASHIFT_CUDA_EMU");
  return v && std::strcmp(v, "1") == 0;
}

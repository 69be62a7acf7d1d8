// CUDA graphs: the work a function queues on a device's stream is recorded once, then replayed
// with one launch (no per-kernel launch cost, no host work between kernels). Device-neutral
// face of cuda/runtime.cu; without the CUDA backend every call throws ERR_NO_CUDA.
//
// While a device is capturing, nothing runs: copies between host and device, synchronize()
// and reading values back are refused with ERR_CUDA_GRAPH (they would happen once at capture,
// not on each replay). Memory allocated or freed during the capture belongs to the graph's pool
// until the graph is released (block_cache.h).
#pragma once
#include <cstddef>
#include <memory>
#include "device.h"

namespace adashift {

class Graph {
 public:
  static void begin_capture(Device d);
  // Ends the capture and instantiates the graph (ERR_CUDA_GRAPH when the capture was broken).
  static std::unique_ptr<Graph> end_capture(Device d);
  // Ends an open capture and drops what it recorded (no-op when none is open).
  static void abort_capture(Device d);
  static bool capturing(Device d);

  ~Graph();
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;
  // Queues one replay on the device's stream.
  void replay();
  // Frees the graph and gives its pool back (also done by the destructor).
  void release();
  bool released() const;
  Device device() const { return device_; }
  size_t pool_bytes() const;

 private:
  struct Impl;
  Graph(Device d, std::unique_ptr<Impl> impl);
  Device device_;
  std::unique_ptr<Impl> impl_;
};

// Throws ERR_CUDA_GRAPH naming `what` when d (a CUDA device) is capturing.
void check_not_capturing(Device d, const char* what);

}  // namespace adashift

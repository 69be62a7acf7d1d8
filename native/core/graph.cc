#include "graph.h"
#include "dispatch.h"
#ifdef ADASHIFT_WITH_CUDA
#include "cuda/runtime.h"
#endif

namespace adashift {

#ifdef ADASHIFT_WITH_CUDA
struct Graph::Impl {
  CudaGraphObjects g;
};

static int cuda_index(Device d, const char* fn) {
  AS_CHECK(d.is_cuda(), CudaGraph, fn, ": CUDA graphs need a CUDA device, got ", d.str());
  return d.index;
}

void Graph::begin_capture(Device d) { cuda_capture_begin(cuda_index(d, "captureGraph")); }

std::unique_ptr<Graph> Graph::end_capture(Device d) {
  auto impl = std::make_unique<Impl>();
  impl->g = cuda_capture_end(cuda_index(d, "captureGraph"));
  return std::unique_ptr<Graph>(new Graph(d, std::move(impl)));
}

void Graph::abort_capture(Device d) {
  if (d.is_cuda()) cuda_capture_abort(d.index);
}

bool Graph::capturing(Device d) { return d.is_cuda() && cuda_capturing(d.index); }

void Graph::replay() {
  AS_CHECK(!released(), CudaGraph, "replay: the CUDA graph was disposed");
  cuda_graph_launch(impl_->g);
}

void Graph::release() {
  if (impl_) cuda_graph_release(impl_->g);
}

bool Graph::released() const { return !impl_ || impl_->g.exec == nullptr; }

size_t Graph::pool_bytes() const {
  return released() ? 0 : cuda_pool_bytes(impl_->g.device, impl_->g.pool);
}
#else
struct Graph::Impl {};
void Graph::begin_capture(Device) { fail_no_cuda(); }
std::unique_ptr<Graph> Graph::end_capture(Device) { fail_no_cuda(); }
void Graph::abort_capture(Device) {}
bool Graph::capturing(Device) { return false; }
void Graph::replay() { fail_no_cuda(); }
void Graph::release() {}
bool Graph::released() const { return true; }
size_t Graph::pool_bytes() const { return 0; }
#endif

Graph::Graph(Device d, std::unique_ptr<Impl> impl) : device_(d), impl_(std::move(impl)) {}

Graph::~Graph() {
  try {
    release();
  } catch (...) {
    // teardown must not throw; the driver frees what is left with the process
  }
}

void check_not_capturing(Device d, const char* what) {
  if (!Graph::capturing(d)) return;
  fail(ErrorCode::CudaGraph,
       cat(what, " is not possible while a CUDA graph is being captured on ", d.str(),
           ": it would happen once, at capture, not on each replay. Do it outside the captured "
           "function (copy new inputs into the graph's input tensors with copy_() before "
           "replay(), and read outputs after it)"));
}

}  // namespace adashift

// Bindings of CUDA graph capture (core/graph.h). A captured graph travels to JS as an External
// that owns it: dispose() releases it at once, the garbage collector otherwise.
#include "../core/backend.h"
#include "../core/graph.h"
#include "common.h"

namespace adashift {
namespace napi {

namespace {

using CI = Napi::CallbackInfo;

Graph* graph_arg(const Args& a, size_t i) {
  Napi::Value v = a.at(i, "graph");
  AS_CHECK(v.IsExternal(), Arg, a.fn, ": expected a graph handle from cudaGraphEnd");
  return v.As<Napi::External<Graph>>().Data();
}

// The device argument of the capture calls, checked to exist (a CUDA index past the devices
// would otherwise reach the allocator's tables).
Device device_arg(const CI& info, const char* fn) {
  Device d = Args{info, fn}.device(0, "device");
  require_device(d);
  return d;
}

Napi::Value CudaGraphBegin(const CI& info) {
  Graph::begin_capture(device_arg(info, "cudaGraphBegin"));
  return info.Env().Undefined();
}

Napi::Value CudaGraphEnd(const CI& info) {
  std::unique_ptr<Graph> g = Graph::end_capture(device_arg(info, "cudaGraphEnd"));
  return Napi::External<Graph>::New(info.Env(), g.release(), [](Napi::Env, Graph* p) { delete p; });
}

Napi::Value CudaGraphAbort(const CI& info) {
  Graph::abort_capture(device_arg(info, "cudaGraphAbort"));
  return info.Env().Undefined();
}

Napi::Value CudaGraphCapturing(const CI& info) {
  return Napi::Boolean::New(info.Env(), Graph::capturing(device_arg(info, "cudaGraphCapturing")));
}

Napi::Value CudaGraphReplay(const CI& info) {
  graph_arg(Args{info, "replay"}, 0)->replay();
  return info.Env().Undefined();
}

Napi::Value CudaGraphDispose(const CI& info) {
  graph_arg(Args{info, "dispose"}, 0)->release();
  return info.Env().Undefined();
}

Napi::Value CudaGraphPoolBytes(const CI& info) {
  return Napi::Number::New(info.Env(), double(graph_arg(Args{info, "poolBytes"}, 0)->pool_bytes()));
}

}  // namespace

void register_graph(Napi::Env env, Napi::Object exports) {
#define FN(name, fn) exports.Set(name, Napi::Function::New<guarded<fn>>(env, name))
  FN("cudaGraphBegin", CudaGraphBegin); FN("cudaGraphEnd", CudaGraphEnd);
  FN("cudaGraphAbort", CudaGraphAbort); FN("cudaGraphCapturing", CudaGraphCapturing);
  FN("cudaGraphReplay", CudaGraphReplay); FN("cudaGraphDispose", CudaGraphDispose);
  FN("cudaGraphPoolBytes", CudaGraphPoolBytes);
#undef FN
}

}  // namespace napi
}  // namespace adashift

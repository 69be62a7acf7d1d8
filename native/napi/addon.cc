// The adashift native module: tensor creation, backend queries and the op bindings.
// Every binding reads its arguments through Args (clear ERR_* errors), calls the kernel
// library, and wraps results as NativeTensor handles.
#include "../core/backend.h"
#include "../core/ops/adashift.h"
#include "../core/ops/conv.h"
#include "../core/ops/dense.h"
#include "../core/ops/elementwise.h"
#include "../core/threadpool.h"
#ifdef ADASHIFT_WITH_CUDA
#include "../core/cuda/runtime.h"
#endif
#include <cmath>
#include "common.h"

namespace adashift {
namespace napi {

Napi::Value wrap(const Napi::CallbackInfo& info, Tensor t) { return TensorHandle::Wrap(info.Env(), std::move(t)); }
Napi::Array wrap_all(const Napi::CallbackInfo& info, std::initializer_list<Tensor> ts) {
  Napi::Array a = Napi::Array::New(info.Env(), ts.size());
  uint32_t i = 0;
  for (const Tensor& t : ts) a.Set(i++, t.defined() ? TensorHandle::Wrap(info.Env(), t) : info.Env().Null());
  return a;
}

namespace {

using CI = Napi::CallbackInfo;

// ---- backend, memory, threads --------------------------------------------------------------
Napi::Value BackendInfoJs(const CI& info) {
  Napi::Env env = info.Env();
  BackendInfo b = backend_info();
  Napi::Object o = Napi::Object::New(env);
  o.Set("cudaCompiled", b.cuda_compiled);
  o.Set("cudaUsable", b.cuda_usable);
  o.Set("runtimeVersion", b.runtime_version);
  o.Set("driverVersion", b.driver_version);
  o.Set("reason", b.reason);
  o.Set("compiledArchs", b.compiled_archs);
  o.Set("cpuThreads", b.cpu_threads);
  Napi::Array devs = Napi::Array::New(env, b.devices.size());
  for (size_t i = 0; i < b.devices.size(); ++i) {
    const auto& d = b.devices[i];
    Napi::Object x = Napi::Object::New(env);
    x.Set("index", d.index);
    x.Set("name", d.name);
    x.Set("totalMemory", double(d.total_memory));
    x.Set("computeCapability", cat(d.cc_major, ".", d.cc_minor));
    x.Set("multiprocessors", d.multiprocessors);
    devs.Set(uint32_t(i), x);
  }
  o.Set("devices", devs);
  return o;
}

Napi::Object memory_entry(Napi::Env env, Device d) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("device", d.str());
  o.Set("tensors", double(live_handles(d).load()));
  o.Set("storages", double(memory_counters(d).storages.load()));
  o.Set("bytes", double(memory_counters(d).bytes.load()));
  o.Set("peakBytes", double(memory_counters(d).peak.load()));
  if (d.is_cpu()) o.Set("cachedBytes", double(cpu_cached_bytes()));
#ifdef ADASHIFT_WITH_CUDA
  if (d.is_cuda()) o.Set("reservedBytes", double(cuda_cached_reserved(d.index)));
#endif
  return o;
}

Napi::Value Memory(const CI& info) {
  Napi::Env env = info.Env();
  Napi::Array out = Napi::Array::New(env);
  out.Set(uint32_t(0), memory_entry(env, Device{}));
  uint32_t k = 1;
  for (int i = 0; i < kMaxCudaDevices; ++i) {
    Device d{DeviceType::CUDA, i};
    if (memory_counters(d).storages.load() != 0 || live_handles(d).load() != 0)
      out.Set(k++, memory_entry(env, d));
  }
  return out;
}

Napi::Value SetNumThreads(const CI& info) {
  set_num_threads(int(Args{info, "setNumThreads"}.integer(0, "threads", 1, 4096)));
  return info.Env().Undefined();
}
Napi::Value GetNumThreads(const CI& info) { return Napi::Number::New(info.Env(), num_threads()); }

Napi::Value SetConvAllowTF32(const CI& info) {
  set_conv_allow_tf32(Args{info, "setConvAllowTF32"}.boolean(0, "on"));
  return info.Env().Undefined();
}
Napi::Value GetConvAllowTF32(const CI& info) {
  return Napi::Boolean::New(info.Env(), conv_allow_tf32());
}

Napi::Value Synchronize(const CI& info) {
  Device d = Args{info, "synchronize"}.device(0, "device");
  require_device(d);
  synchronize(d);
  return info.Env().Undefined();
}

Napi::Value EmptyCache(const CI& info) {
  Device d = Args{info, "emptyCache"}.device(0, "device");
  require_device(d);
  if (d.is_cpu()) cpu_empty_cache();
#ifdef ADASHIFT_WITH_CUDA
  if (d.is_cuda()) cuda_empty_cache(d.index);
#endif
  return info.Env().Undefined();
}

Napi::Value ResetPeakMemory(const CI& info) {
  Device d = Args{info, "resetPeakMemory"}.device(0, "device");
  require_device(d);
  reset_peak_memory(d);
  return info.Env().Undefined();
}

// ---- creation -------------------------------------------------------------------------------
Napi::Value Empty(const CI& info) {
  Args a{info, "empty"};
  return wrap(info, empty(a.shape(0, "shape"), a.device(1, "device")));
}

Napi::Value Full(const CI& info) {
  Args a{info, "full"};
  return wrap(info, full(a.shape(0, "shape"), float(a.number(1, "value")), a.device(2, "device")));
}

Napi::Value FromArray(const CI& info) {
  Args a{info, "tensor"};
  Napi::Value v = a.at(0, "data");
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
    fail(ErrorCode::DType, "tensor: data must be a Float32Array (float32 is the only dtype)");
  Napi::Float32Array arr = v.As<Napi::Float32Array>();
  std::vector<int64_t> shape = a.shape(1, "shape");
  Device d = a.device(2, "device");
  int64_t n = checked_numel(shape);
  AS_CHECK(int64_t(arr.ElementLength()) == n, Shape, "tensor: ", arr.ElementLength(),
           " values do not fill shape ", shape_str(shape), " (", n, " elements)");
  Tensor t(shape, d);
  copy_bytes(d, t.data(), Device{}, arr.Data(), t.nbytes());
  return wrap(info, t);
}

Napi::Value Rand(const CI& info) {
  Args a{info, "rand"};
  std::vector<int64_t> shape = a.shape(0, "shape");
  int64_t kind = a.integer(1, "kind", 0, 1);
  float lo = float(a.number(2, "a")), hi = float(a.number(3, "b"));
  uint64_t seed = uint64_t(a.integer(4, "seed", 0, 9007199254740991LL));
  uint64_t offset = uint64_t(a.integer(5, "offset", 0, 9007199254740991LL));
  return wrap(info, rand(shape, RandKind(kind), lo, hi, seed, offset, a.device(6, "device")));
}

Napi::Value To(const CI& info) {
  Args a{info, "to"};
  const Tensor& t = a.tensor(0, "tensor");
  Device d = a.device(1, "device");
  require_device(d);
  return wrap(info, to_device(t, d));
}

Napi::Value Clone(const CI& info) { return wrap(info, clone(Args{info, "clone"}.tensor(0, "x"))); }

Napi::Value CopyInPlace(const CI& info) {
  Args a{info, "copy_"};
  Tensor dst = a.tensor(0, "dst");
  copy_(dst, a.tensor(1, "src"));
  return info.Env().Undefined();
}

// ---- element-wise ---------------------------------------------------------------------------
Napi::Value BinaryJs(const CI& info) {
  Args a{info, "binary"};
  Binary op = Binary(a.integer(0, "op", 0, 3));
  return wrap(info, binary(op, a.tensor(1, "a"), a.tensor(2, "b")));
}

Napi::Value Axpby(const CI& info) {
  Args a{info, "axpby"};
  return wrap(info, axpby(float(a.number(0, "alpha")), a.tensor(1, "a"),
                          float(a.number(2, "beta")), a.optional_tensor(3, "b")));
}

Napi::Value AxpyInPlace(const CI& info) {
  Args a{info, "axpy_"};
  Tensor y = a.tensor(0, "y");
  axpy_(y, float(a.number(1, "alpha")), a.tensor(2, "x"));
  return info.Env().Undefined();
}

Napi::Value FillInPlace(const CI& info) {
  Args a{info, "fill_"};
  Tensor t = a.tensor(0, "t");
  fill_(t, float(a.number(1, "value")));
  return info.Env().Undefined();
}

Napi::Value SumAll(const CI& info) { return wrap(info, sum_all(Args{info, "sum"}.tensor(0, "x"))); }

Napi::Value SumRows(const CI& info) {
  Args a{info, "sumRows"};
  return wrap(info, sum_rows(a.tensor(0, "x"), a.integer(1, "rows", 1, int64_t(1) << 40)));
}

Napi::Value AddRowvec(const CI& info) {
  Args a{info, "addRowvec"};
  return wrap(info, add_rowvec(a.tensor(0, "x"), a.tensor(1, "b")));
}

Napi::Value ActForward(const CI& info) {
  Args a{info, "activation"};
  return wrap(info, act_forward(Act(a.integer(0, "kind", 0, 3)), a.tensor(1, "x")));
}

Napi::Value ActBackward(const CI& info) {
  Args a{info, "activation backward"};
  return wrap(info, act_backward(Act(a.integer(0, "kind", 0, 3)), a.tensor(1, "x"), a.tensor(2, "dy")));
}

// ---- AdaShift -------------------------------------------------------------------------------
constexpr int64_t kMaxGrid = 1024;

Napi::Value RegionPoolForward(const CI& info) {
  Args a{info, "regionPool"};
  return wrap(info, region_pool_forward(a.tensor(0, "x"), a.integer(1, "grid", 1, kMaxGrid)));
}

Napi::Value RegionPoolBackward(const CI& info) {
  Args a{info, "regionPoolBackward"};
  return wrap(info, region_pool_backward(a.tensor(0, "dt"), a.shape(1, "inputShape"),
                                         a.integer(2, "grid", 1, kMaxGrid)));
}

Napi::Value GateForward(const CI& info) {
  Args a{info, "gate"};
  return wrap(info, gate_forward(a.tensor(0, "x"), a.tensor(1, "s"), a.integer(2, "grid", 1, kMaxGrid)));
}

Napi::Value GateBackwardReduce(const CI& info) {
  Args a{info, "gateBackwardReduce"};
  return wrap(info, gate_backward_reduce(a.tensor(0, "x"), a.tensor(1, "dy"), a.tensor(2, "s"),
                                         a.integer(3, "grid", 1, kMaxGrid)));
}

Napi::Value GateBackwardApply(const CI& info) {
  Args a{info, "gateBackwardApply"};
  return wrap(info, gate_backward_apply(a.tensor(0, "x"), a.tensor(1, "dy"), a.tensor(2, "s"),
                                        a.optional_tensor(3, "dt"), a.integer(4, "grid", 1, kMaxGrid)));
}

Napi::Value AdaShiftBForwardJs(const CI& info) {
  Args a{info, "adashiftBForward"};
  AdaShiftBForward o = adashift_b_forward(a.tensor(0, "x"), a.optional_tensor(1, "projWeight"),
                                          a.optional_tensor(2, "projBias"), a.tensor(3, "normWeight"),
                                          a.tensor(4, "normBias"), float(a.number(5, "eps")));
  return wrap_all(info, {o.y, o.saved.t, o.saved.u, o.saved.s, o.saved.mean, o.saved.rstd});
}

Napi::Value AdaShiftBBackwardJs(const CI& info) {
  Args a{info, "adashiftBBackward"};
  AdaShiftBSaved sv{a.tensor(2, "t"), a.tensor(3, "u"), a.tensor(4, "s"), a.tensor(5, "mean"), a.tensor(6, "rstd")};
  AdaShiftBGrad g = adashift_b_backward(a.tensor(0, "x"), a.tensor(1, "dy"), sv, a.optional_tensor(7, "projWeight"),
                                        a.tensor(8, "normWeight"), a.boolean(9, "needDx"));
  return wrap_all(info, {g.dx, g.dproj_w, g.dproj_b, g.dnorm_w, g.dnorm_b});
}

// (m [N, 1, C], projWeight | null, projBias | null, normWeight, normBias, eps) -> [s, u, mean, rstd]
Napi::Value AdaShiftBContextForwardJs(const CI& info) {
  Args a{info, "adashiftBContextForward"};
  AdaShiftBContext o = adashift_b_context_forward(a.tensor(0, "m"), a.optional_tensor(1, "projWeight"),
                                                  a.optional_tensor(2, "projBias"), a.tensor(3, "normWeight"),
                                                  a.tensor(4, "normBias"), float(a.number(5, "eps")));
  return wrap_all(info, {o.s, o.u, o.mean, o.rstd});
}

// (ds, m, u, mean, rstd, projWeight | null, normWeight, needDm) ->
// [dm | null, dProjW | null, dProjB | null, dNormW, dNormB]
Napi::Value AdaShiftBContextBackwardJs(const CI& info) {
  Args a{info, "adashiftBContextBackward"};
  AdaShiftBContext sv{Tensor(), a.tensor(2, "u"), a.tensor(3, "mean"), a.tensor(4, "rstd")};
  AdaShiftBContextGrad g = adashift_b_context_backward(a.tensor(0, "ds"), a.tensor(1, "m"), sv,
                                                       a.optional_tensor(5, "projWeight"),
                                                       a.tensor(6, "normWeight"), a.boolean(7, "needDm"));
  return wrap_all(info, {g.dm, g.dproj_w, g.dproj_b, g.dnorm_w, g.dnorm_b});
}

// Parameters of AdaShift-MA at args [i, i + 13): grid, heads, q.w, q.b, k.w, k.b, v.w, v.b,
// linW | null, rectW, rectB, eps, keepContext.
static AdaShiftMAParams ma_params(const Args& a, size_t i) {
  AdaShiftMAParams p;
  p.grid = a.integer(i, "grid", 1, kMaxGrid);
  p.heads = a.integer(i + 1, "heads", 1, int64_t(1) << 40);
  p.q_w = a.tensor(i + 2, "qWeight");
  p.q_b = a.tensor(i + 3, "qBias");
  p.k_w = a.tensor(i + 4, "kWeight");
  p.k_b = a.tensor(i + 5, "kBias");
  p.v_w = a.tensor(i + 6, "vWeight");
  p.v_b = a.tensor(i + 7, "vBias");
  p.lin_w = a.optional_tensor(i + 8, "rectLinearWeight");
  p.rect_w = a.tensor(i + 9, "rectWeight");
  p.rect_b = a.tensor(i + 10, "rectBias");
  p.eps = float(a.number(i + 11, "eps"));
  p.keep_context = a.boolean(i + 12, "keepContext");
  return p;
}

// An optional BatchNorm input at args [i, i + 5): mean, invstd, weight, bias (all or none) and
// residual | null.
static MABatchNormInput ma_bn_input(const Args& a, size_t i) {
  MABatchNormInput bn;
  bn.mean = a.optional_tensor(i, "bnMean");
  if (!bn.mean.defined()) {
    const char* names[] = {"bnInvstd", "bnWeight", "bnBias", "residual"};
    for (size_t k = 0; k < 4; ++k)
      AS_CHECK(!a.optional_tensor(i + 1 + k, names[k]).defined(), Arg, a.fn, ": '", names[k],
               "' given without 'bnMean' (the BatchNorm input is all of bnMean, bnInvstd, bnWeight, bnBias, or none)");
    return bn;
  }
  bn.invstd = a.tensor(i + 1, "bnInvstd");
  bn.weight = a.tensor(i + 2, "bnWeight");
  bn.bias = a.tensor(i + 3, "bnBias");
  bn.residual = a.optional_tensor(i + 4, "residual");
  return bn;
}

// (x, ...MA params (13), [bnMean, bnInvstd, bnWeight, bnBias, residual | null]) ->
// [y, t, attn, o, z, s, stats (null on CUDA)] (t, attn, o, z null without keepContext)
Napi::Value AdaShiftMAForwardJs(const CI& info) {
  Args a{info, "adashiftMAForward"};
  AdaShiftMAForward o = adashift_ma_forward(a.tensor(0, "x"), ma_params(a, 1), ma_bn_input(a, 14));
  return wrap_all(info, {o.y, o.saved.t, o.saved.attn, o.saved.o, o.saved.z, o.saved.s, o.saved.stats});
}

// (x, dy, t | null, attn | null, o | null, z | null, s, stats | null, ...MA params (13), needDx,
// [BatchNorm input as above]) ->
// [dx (dz with a BatchNorm input), dq.w, dq.b, dk.w, dk.b, dv.w, dv.b, dlin.w, drect.w, drect.b,
//  sumDz, sumDzXhat] (null where not computed)
Napi::Value AdaShiftMABackwardJs(const CI& info) {
  Args a{info, "adashiftMABackward"};
  AdaShiftMASaved sv{a.optional_tensor(2, "t"), a.optional_tensor(3, "attn"), a.optional_tensor(4, "o"),
                     a.optional_tensor(5, "z"), a.tensor(6, "s"), a.optional_tensor(7, "stats")};
  AdaShiftMAGrad g = adashift_ma_backward(a.tensor(0, "x"), a.tensor(1, "dy"), sv, ma_params(a, 8),
                                          a.boolean(21, "needDx"), ma_bn_input(a, 22));
  return wrap_all(info, {g.dx, g.dq_w, g.dq_b, g.dk_w, g.dk_b, g.dv_w, g.dv_b, g.dlin_w, g.drect_w,
                         g.drect_b, g.sum_dz, g.sum_dz_xhat});
}

// ---- dense ----------------------------------------------------------------------------------
Napi::Value LayerNormForward(const CI& info) {
  Args a{info, "layerNorm"};
  LayerNormOut o = layernorm_forward(a.tensor(0, "x"), a.tensor(1, "weight"), a.tensor(2, "bias"),
                                     float(a.number(3, "eps")));
  return wrap_all(info, {o.y, o.mean, o.rstd});
}

Napi::Value LayerNormBackward(const CI& info) {
  Args a{info, "layerNormBackward"};
  LayerNormGrad g = layernorm_backward(a.tensor(0, "dy"), a.tensor(1, "x"), a.tensor(2, "mean"),
                                       a.tensor(3, "rstd"), a.tensor(4, "weight"));
  return wrap_all(info, {g.dx, g.dweight, g.dbias});
}

Napi::Value SoftmaxForward(const CI& info) {
  return wrap(info, softmax_forward(Args{info, "softmax"}.tensor(0, "x")));
}

Napi::Value SoftmaxBackward(const CI& info) {
  Args a{info, "softmaxBackward"};
  return wrap(info, softmax_backward(a.tensor(0, "y"), a.tensor(1, "dy")));
}

Napi::Value Matmul(const CI& info) {
  Args a{info, "matmul"};
  return wrap(info, matmul(a.tensor(0, "a"), a.tensor(1, "b"), a.boolean(2, "transA"),
                           a.boolean(3, "transB")));
}

Napi::Value Permute(const CI& info) {
  Args a{info, "permute"};
  const Tensor& x = a.tensor(0, "x");
  Napi::Value pv = a.at(1, "axes");
  AS_CHECK(pv.IsArray(), Arg, "permute: 'axes' must be an array of integers");
  Napi::Array arr = pv.As<Napi::Array>();
  AS_CHECK(arr.Length() <= 6, Arg, "permute: at most 6 axes");
  std::vector<int64_t> perm;
  for (uint32_t i = 0; i < arr.Length(); ++i) {
    Napi::Value v = arr.Get(i);
    double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1;
    AS_CHECK(v.IsNumber() && d == std::floor(d) && d >= 0 && d < 6, Arg,
             "permute: axes must be integers in [0, rank)");
    perm.push_back(int64_t(d));
  }
  a.tensor(0, "x");  // reading the axes may run user code: refuse a tensor disposed meanwhile
  return wrap(info, permute(x, perm));
}

// Context-aware init: each Node environment (main thread, every Worker) gets its own
// instance data; the kernel library's process-wide state (thread pool, CUDA cache) is shared.
static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto* data = new InstanceData();
  Napi::Function ctor = TensorHandle::Init(env);
  data->tensor_ctor = Napi::Persistent(ctor);
  data->ctor_token = Napi::Persistent(Napi::Object::New(env));
  env.SetInstanceData<InstanceData>(data);
  exports.Set("NativeTensor", ctor);
#define FN(name, fn) exports.Set(name, Napi::Function::New<guarded<fn>>(env, name))
  FN("backendInfo", BackendInfoJs); FN("memory", Memory);
  FN("setNumThreads", SetNumThreads); FN("getNumThreads", GetNumThreads);
  FN("setConvAllowTF32", SetConvAllowTF32); FN("getConvAllowTF32", GetConvAllowTF32);
  FN("synchronize", Synchronize); FN("emptyCache", EmptyCache);
  FN("resetPeakMemory", ResetPeakMemory);
  FN("empty", Empty); FN("full", Full); FN("fromArray", FromArray); FN("rand", Rand);
  FN("to", To); FN("clone", Clone); FN("copy_", CopyInPlace);
  FN("binary", BinaryJs); FN("axpby", Axpby); FN("axpy_", AxpyInPlace); FN("fill_", FillInPlace);
  FN("sumAll", SumAll); FN("sumRows", SumRows); FN("addRowvec", AddRowvec);
  FN("actForward", ActForward); FN("actBackward", ActBackward);
  FN("regionPoolForward", RegionPoolForward); FN("regionPoolBackward", RegionPoolBackward);
  FN("gateForward", GateForward); FN("gateBackwardReduce", GateBackwardReduce);
  FN("gateBackwardApply", GateBackwardApply);
  FN("adashiftBForward", AdaShiftBForwardJs); FN("adashiftBBackward", AdaShiftBBackwardJs);
  FN("adashiftBContextForward", AdaShiftBContextForwardJs); FN("adashiftBContextBackward", AdaShiftBContextBackwardJs);
  FN("adashiftMAForward", AdaShiftMAForwardJs); FN("adashiftMABackward", AdaShiftMABackwardJs);
  FN("layerNormForward", LayerNormForward); FN("layerNormBackward", LayerNormBackward);
  FN("softmaxForward", SoftmaxForward); FN("softmaxBackward", SoftmaxBackward);
  FN("matmul", Matmul); FN("permute", Permute);
#undef FN
  register_conv(env, exports);
  register_norm(env, exports);
  register_optim(env, exports);
  register_graph(env, exports);
  return exports;
}

}  // namespace
}  // namespace napi
}  // namespace adashift

static Napi::Object InitAdashift(Napi::Env env, Napi::Object exports) {
  return adashift::napi::Init(env, exports);
}
NODE_API_MODULE(adashift, InitAdashift)

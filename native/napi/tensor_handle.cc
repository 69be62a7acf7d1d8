#include <cmath>
#include <cstring>
#include "../core/ops/elementwise.h"
#include "common.h"

namespace adashift {
namespace napi {

static std::atomic<int64_t> g_live[1 + kMaxCudaDevices];

std::atomic<int64_t>& live_handles(Device d) {
  return g_live[d.is_cpu() ? 0 : 1 + std::min(std::max(d.index, 0), kMaxCudaDevices - 1)];
}

Napi::Error make_error(Napi::Env env, ErrorCode code, const std::string& msg) {
  Napi::Error err = Napi::Error::New(env, msg);
  err.Set("code", Napi::String::New(env, error_code_name(code)));
  return err;
}

Napi::Function TensorHandle::Init(Napi::Env env) {
  return DefineClass(env, "NativeTensor",
                     {InstanceAccessor<&TensorHandle::Shape>("shape"),
                      InstanceAccessor<&TensorHandle::DeviceName>("device"),
                      InstanceAccessor<&TensorHandle::Numel>("numel"),
                      InstanceAccessor<&TensorHandle::Disposed>("disposed"),
                      InstanceAccessor<&TensorHandle::StorageShared>("storageShared"),
                      InstanceMethod<&TensorHandle::ToFloat32Array>("toFloat32Array"),
                      InstanceMethod<&TensorHandle::Dispose>("dispose"),
                      InstanceMethod<&TensorHandle::Reshape>("reshape")});
}

// JS cannot construct handles directly: the factory passes the instance's token object as the
// only argument (compared by identity: no string made and read back per handle).
static thread_local Tensor* t_pending = nullptr;

Napi::Object TensorHandle::Wrap(Napi::Env env, Tensor t) {
  AS_CHECK(t.defined(), Arg, "internal: an op produced no tensor");
  auto* data = env.GetInstanceData<InstanceData>();
  t_pending = &t;
  Napi::Object obj = data->tensor_ctor.New({data->ctor_token.Value()});
  t_pending = nullptr;
  return obj;
}

TensorHandle::TensorHandle(const Napi::CallbackInfo& info) : Napi::ObjectWrap<TensorHandle>(info) {
  if (!t_pending || info.Length() != 1 ||
      !info[0].StrictEquals(info.Env().GetInstanceData<InstanceData>()->ctor_token.Value()))
    throw make_error(info.Env(), ErrorCode::Arg,
                     "NativeTensor cannot be constructed directly; use tensor(), zeros(), ...");
  t_ = *t_pending;
  dev_ = t_.device();
  live_handles(dev_).fetch_add(1);
}

TensorHandle::~TensorHandle() { release(); }

void TensorHandle::release() {
  if (!t_.defined()) return;
  t_ = Tensor();
  live_handles(dev_).fetch_sub(1);
}

const Tensor& TensorHandle::tensor(const char* what) const {
  AS_CHECK(t_.defined(), Disposed, what, ": the tensor was disposed and can no longer be used");
  return t_;
}

// Getters and methods run outside guarded<>: convert errors here.
#define AS_MEMBER_TRY try {
#define AS_MEMBER_CATCH                                        \
  }                                                            \
  catch (const Error& e) {                                     \
    throw make_error(info.Env(), e.code(), e.what());          \
  }

Napi::Value TensorHandle::Shape(const Napi::CallbackInfo& info) {
  AS_MEMBER_TRY
  const Tensor& t = tensor("shape");
  Napi::Array a = Napi::Array::New(info.Env(), t.shape().size());
  for (size_t i = 0; i < t.shape().size(); ++i) a.Set(uint32_t(i), double(t.shape()[i]));
  return a;
  AS_MEMBER_CATCH
}

Napi::Value TensorHandle::DeviceName(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), dev_.str());
}

Napi::Value TensorHandle::Numel(const Napi::CallbackInfo& info) {
  AS_MEMBER_TRY
  return Napi::Number::New(info.Env(), double(tensor("numel").numel()));
  AS_MEMBER_CATCH
}

Napi::Value TensorHandle::StorageShared(const Napi::CallbackInfo& info) {
  AS_MEMBER_TRY
  return Napi::Boolean::New(info.Env(), tensor("storageShared").storage().use_count() > 1);
  AS_MEMBER_CATCH
}

Napi::Value TensorHandle::Disposed(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), !t_.defined());
}

Napi::Value TensorHandle::ToFloat32Array(const Napi::CallbackInfo& info) {
  try {
    const Tensor& t = tensor("toFloat32Array");
    AS_CHECK(t.numel() <= (int64_t(1) << 32), Shape, "toFloat32Array: tensor too large for a "
             "JS typed array (", t.numel(), " elements)");
    Napi::Float32Array out = Napi::Float32Array::New(info.Env(), size_t(t.numel()));
    copy_bytes(Device{}, out.Data(), t.device(), t.data(), t.nbytes());
    return out;
  } catch (const Error& e) {
    throw make_error(info.Env(), e.code(), e.what());
  }
}

Napi::Value TensorHandle::Dispose(const Napi::CallbackInfo& info) {
  release();
  return info.Env().Undefined();
}

Napi::Value TensorHandle::Reshape(const Napi::CallbackInfo& info) {
  try {
    Args args{info, "reshape"};
    const Tensor t = tensor("reshape");  // a copy: reading the shape may run user code
    std::vector<int64_t> shape = args.shape(0, "shape");
    AS_CHECK(!disposed(), Disposed, "reshape: the tensor was disposed while its arguments were read");
    return Wrap(info.Env(), Tensor::view(t, shape));
  } catch (const Error& e) {
    throw make_error(info.Env(), e.code(), e.what());
  }
}

// ---- argument readers ---------------------------------------------------------------------
Napi::Value Args::at(size_t i, const char* name) const {
  if (i >= info.Length())
    fail(ErrorCode::Arg, cat(fn, ": missing argument '", name, "' (position ", i + 1, ")"));
  return info[i];
}

static std::string type_of(const Napi::Value& v) {
  switch (v.Type()) {
    case napi_undefined: return "undefined";
    case napi_null: return "null";
    case napi_boolean: return "a boolean";
    case napi_number: return "a number";
    case napi_string: return "a string";
    case napi_symbol: return "a symbol";
    case napi_object: return v.IsArray() ? "an array" : "an object";
    case napi_function: return "a function";
    case napi_bigint: return "a bigint";
    default: return "an external";
  }
}

// The handle v wraps; null when v is not a handle of this addon (*imitation: it has the
// handles' prototype without being one: Object.create, a Proxy).
static TensorHandle* handle_of(const Napi::CallbackInfo& info, const Napi::Value& v, bool* imitation) {
  *imitation = false;
  auto* data = info.Env().GetInstanceData<InstanceData>();
  if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(data->tensor_ctor.Value())) return nullptr;
  void* raw = nullptr;
  if (napi_unwrap(info.Env(), v, &raw) != napi_ok || raw == nullptr) {
    Napi::Env env = info.Env();
    bool pending = false;
    napi_is_exception_pending(env, &pending);
    if (pending) { napi_value ignored; napi_get_and_clear_last_exception(env, &ignored); }
    *imitation = true;
    return nullptr;
  }
  return static_cast<TensorHandle*>(raw);
}

[[noreturn]] static void fail_not_tensor(const Napi::Value& v, const char* fn, const std::string& what,
                                         bool imitation) {
  if (imitation) fail(ErrorCode::Arg, cat(fn, ": ", what, " must be a tensor made by adashift, got an imitation"));
  fail(ErrorCode::Arg, cat(fn, ": ", what, " must be a tensor, got ", type_of(v)));
}

Tensor unwrap_tensor(const Napi::CallbackInfo& info, const Napi::Value& v, const char* fn, const std::string& what) {
  bool imitation;
  TensorHandle* h = handle_of(info, v, &imitation);
  if (!h) fail_not_tensor(v, fn, what, imitation);
  return h->tensor(fn);
}

// The argument's description is only built for the error (every op reads several tensors).
Tensor Args::tensor(size_t i, const char* name) const {
  const Napi::Value v = at(i, name);
  bool imitation;
  TensorHandle* h = handle_of(info, v, &imitation);
  if (!h) fail_not_tensor(v, fn, cat("argument '", name, "'"), imitation);
  return h->tensor(fn);
}

Tensor Args::optional_tensor(size_t i, const char* name) const {
  if (i >= info.Length() || info[i].IsNull() || info[i].IsUndefined()) return Tensor();
  return tensor(i, name);
}

std::vector<int64_t> Args::shape(size_t i, const char* name) const {
  Napi::Value v = at(i, name);
  if (!v.IsArray())
    fail(ErrorCode::Arg, cat(fn, ": '", name, "' must be an array of dimensions, got ", type_of(v)));
  Napi::Array a = v.As<Napi::Array>();
  if (a.Length() > uint32_t(kMaxDims))
    fail(ErrorCode::Shape, cat(fn, ": at most ", kMaxDims, " dimensions, got ", a.Length()));
  std::vector<int64_t> s;
  for (uint32_t k = 0; k < a.Length(); ++k) {
    Napi::Value d = a.Get(k);
    double x = d.IsNumber() ? d.As<Napi::Number>().DoubleValue() : NAN;
    if (!d.IsNumber() || !std::isfinite(x) || x < 0 || x != std::floor(x) || x > 9007199254740991.0)
      fail(ErrorCode::Shape, cat(fn, ": '", name, "'[", k, "] must be a non-negative integer, got ",
                                 d.IsNumber() ? d.ToString().Utf8Value() : type_of(d)));
    s.push_back(int64_t(x));
  }
  checked_numel(s);
  return s;
}

Device parse_device(const std::string& s) {
  if (s == "cpu") return Device{DeviceType::CPU, 0};
  if (s == "cuda") return Device{DeviceType::CUDA, 0};
  if (s.rfind("cuda:", 0) == 0 && s.size() > 5 && s.size() <= 8 &&
      s.find_first_not_of("0123456789", 5) == std::string::npos)
    return Device{DeviceType::CUDA, std::stoi(s.substr(5))};
  fail(ErrorCode::Device, cat("unknown device '", s, "'; expected 'cpu', 'cuda' or 'cuda:N'"));
}

Device Args::device(size_t i, const char* name) const {
  Napi::Value v = at(i, name);
  if (!v.IsString())
    fail(ErrorCode::Device, cat(fn, ": '", name, "' must be a device string, got ", type_of(v)));
  return parse_device(v.As<Napi::String>().Utf8Value());
}

double Args::number(size_t i, const char* name) const {
  Napi::Value v = at(i, name);
  double x = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : NAN;
  if (!v.IsNumber() || !std::isfinite(x))
    fail(ErrorCode::Arg, cat(fn, ": '", name, "' must be a finite number, got ",
                             v.IsNumber() ? v.ToString().Utf8Value() : type_of(v)));
  return x;
}

int64_t Args::integer(size_t i, const char* name, int64_t lo, int64_t hi) const {
  Napi::Value v = at(i, name);
  double x = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : NAN;
  if (!v.IsNumber() || !std::isfinite(x) || x != std::floor(x) || x < double(lo) || x > double(hi))
    fail(ErrorCode::Arg, cat(fn, ": '", name, "' must be an integer in [", lo, ", ", hi,
                             "], got ", v.IsNumber() ? v.ToString().Utf8Value() : type_of(v)));
  return int64_t(x);
}

bool Args::boolean(size_t i, const char* name) const {
  Napi::Value v = at(i, name);
  if (!v.IsBoolean())
    fail(ErrorCode::Arg, cat(fn, ": '", name, "' must be a boolean, got ", type_of(v)));
  return v.As<Napi::Boolean>().Value();
}

}  // namespace napi
}  // namespace adashift

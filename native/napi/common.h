// Shared helpers of the N-API layer: argument readers that say what was wrong, the Tensor
// handle class, and error conversion (every native failure becomes a JS Error with a code).
#pragma once
#include <napi.h>
#include <atomic>
#include <string>
#include <vector>
#include "../core/tensor.h"

namespace adashift {
namespace napi {

// ---- the JS-visible tensor handle -----------------------------------------------------------
class TensorHandle : public Napi::ObjectWrap<TensorHandle> {
 public:
  static Napi::Function Init(Napi::Env env);
  static Napi::Object Wrap(Napi::Env env, Tensor t);
  explicit TensorHandle(const Napi::CallbackInfo& info);
  ~TensorHandle() override;
  const Tensor& tensor(const char* what) const;
  bool disposed() const { return !t_.defined(); }
  void release();

 private:
  Napi::Value Shape(const Napi::CallbackInfo& info);
  Napi::Value DeviceName(const Napi::CallbackInfo& info);
  Napi::Value Numel(const Napi::CallbackInfo& info);
  Napi::Value Disposed(const Napi::CallbackInfo& info);
  Napi::Value StorageShared(const Napi::CallbackInfo& info);
  Napi::Value ToFloat32Array(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  Napi::Value Reshape(const Napi::CallbackInfo& info);
  Tensor t_;
  Device dev_;
};

// Live handles per device (index 0: CPU, 1 + i: cuda:i); bytes come from the core counters.
std::atomic<int64_t>& live_handles(Device d);

// Per-instance data (the addon is context-aware: one per main thread / worker).
struct InstanceData {
  Napi::FunctionReference tensor_ctor;
  // What TensorHandle::Wrap passes the constructor (JS cannot construct handles directly): an
  // object no script can reach, compared by identity.
  Napi::ObjectReference ctor_token;
};

// ---- errors -------------------------------------------------------------------------------
Napi::Error make_error(Napi::Env env, ErrorCode code, const std::string& msg);

// Wraps a binding so that every C++ exception reaches JS as an Error with a code.
template <Napi::Value (*Fn)(const Napi::CallbackInfo&)>
Napi::Value guarded(const Napi::CallbackInfo& info) {
  try {
    return Fn(info);
  } catch (const Error& e) {
    throw make_error(info.Env(), e.code(), e.what());
  } catch (const Napi::Error&) {
    throw;
  } catch (const std::bad_alloc&) {
    throw make_error(info.Env(), ErrorCode::Oom, "out of host memory");
  } catch (const std::exception& e) {
    throw make_error(info.Env(), ErrorCode::Arg, e.what());
  }
}

// ---- argument readers ---------------------------------------------------------------------
struct Args {
  const Napi::CallbackInfo& info;
  const char* fn;
  Napi::Value at(size_t i, const char* name) const;
  // By value: the call keeps the storage alive even if a later argument's getter disposes the
  // handle (the op then still sees a consistent tensor).
  Tensor tensor(size_t i, const char* name) const;
  // null/undefined -> undefined Tensor
  Tensor optional_tensor(size_t i, const char* name) const;
  std::vector<int64_t> shape(size_t i, const char* name) const;
  Device device(size_t i, const char* name) const;
  double number(size_t i, const char* name) const;          // finite
  int64_t integer(size_t i, const char* name, int64_t lo, int64_t hi) const;
  bool boolean(size_t i, const char* name) const;
};

Device parse_device(const std::string& s);  // 'cpu' | 'cuda' | 'cuda:N'

// The tensor of a JS value that must be a NativeTensor made by this addon (ERR_ARG otherwise,
// also for look-alikes such as Proxies or Object.create(prototype)).
Tensor unwrap_tensor(const Napi::CallbackInfo& info, const Napi::Value& v, const char* fn, const std::string& what);

Napi::Value wrap(const Napi::CallbackInfo& info, Tensor t);
// The tensors as handles, an undefined tensor as null.
Napi::Array wrap_all(const Napi::CallbackInfo& info, std::initializer_list<Tensor> ts);
// Exports fn under name, guarded (every native error becomes a JS Error with a code).
#define AS_EXPORT(exports, env, name, fn) \
  (exports).Set(name, Napi::Function::New<::adashift::napi::guarded<fn>>(env, name))

// Each op family registers its bindings (native/napi/<family>.cc).
void register_conv(Napi::Env env, Napi::Object exports);
void register_norm(Napi::Env env, Napi::Object exports);
void register_optim(Napi::Env env, Napi::Object exports);
void register_graph(Napi::Env env, Napi::Object exports);

}  // namespace napi
}  // namespace adashift

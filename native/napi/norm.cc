// Bindings of the norm op family: BatchNorm2d (+ fused activation), pooling, cross-entropy.
#include "../core/ops/loss.h"
#include "../core/ops/norm.h"
#include "../core/ops/pool.h"
#include "common.h"

namespace adashift {
namespace napi {

namespace {

using CI = Napi::CallbackInfo;
constexpr int64_t kMaxWin = int64_t(1) << 30;

NormAct norm_act(const Args& a, size_t i) { return NormAct(a.integer(i, "act", 0, 5)); }

// ---- BatchNorm ------------------------------------------------------------------------------
// (x, weight|null, bias|null, runningMean|null, runningVar|null, training, momentum, eps, planes,
//  residual|null) -> [mean, invstd, planeXhat|null, pooled|null]
Napi::Value BatchNormStats(const CI& info) {
  Args a{info, "batchNormStats"};
  Tensor rm = a.optional_tensor(3, "runningMean");
  Tensor rv = a.optional_tensor(4, "runningVar");
  BnStats s = batchnorm_stats(a.tensor(0, "x"), a.optional_tensor(1, "weight"),
                              a.optional_tensor(2, "bias"), rm, rv, a.boolean(5, "training"),
                              float(a.number(6, "momentum")), float(a.number(7, "eps")),
                              a.boolean(8, "planes"), a.optional_tensor(9, "residual"));
  return wrap_all(info, {s.mean, s.invstd, s.plane_xhat, s.pooled});
}

// (x, weight, bias, mean, invstd, act, s|null, residual|null) -> y
Napi::Value BatchNormActForward(const CI& info) {
  Args a{info, "batchNormActForward"};
  return wrap(info, batchnorm_act_forward(a.tensor(0, "x"), a.tensor(1, "weight"),
                                          a.tensor(2, "bias"), a.tensor(3, "mean"),
                                          a.tensor(4, "invstd"), norm_act(a, 5),
                                          a.optional_tensor(6, "s"),
                                          a.optional_tensor(7, "residual")));
}

// (x, dy, weight, bias, mean, invstd, act, s|null, residual|null, writeDz) ->
// [sumDz, sumDzXhat, ds|null, dz|null]
Napi::Value BatchNormActBackwardReduce(const CI& info) {
  Args a{info, "batchNormActBackwardReduce"};
  const bool want_dz = a.boolean(9, "writeDz");
  BnReduce r = batchnorm_act_backward_reduce(
      a.tensor(0, "x"), a.tensor(1, "dy"), a.tensor(2, "weight"), a.tensor(3, "bias"),
      a.tensor(4, "mean"), a.tensor(5, "invstd"), norm_act(a, 6), a.optional_tensor(7, "s"),
      a.optional_tensor(8, "residual"), want_dz);
  return wrap_all(info, {r.sum_dz, r.sum_dz_xhat, r.ds, r.dz});
}

// (sumDz, sumDzXhat, dm|null, planeXhat|null) -> [dweight, dbias]
Napi::Value BatchNormBackwardParams(const CI& info) {
  Args a{info, "batchNormBackwardParams"};
  BnParamGrad g = batchnorm_backward_params(a.tensor(0, "sumDz"), a.tensor(1, "sumDzXhat"),
                                            a.optional_tensor(2, "dm"),
                                            a.optional_tensor(3, "planeXhat"));
  return wrap_all(info, {g.dweight, g.dbias});
}

// (x, dy, weight, bias, mean, invstd, act, s|null, dm|null, dweight|null, dbias|null, training,
//  residual|null) -> [dx, dresidual|null]
Napi::Value BatchNormActBackwardApply(const CI& info) {
  Args a{info, "batchNormActBackwardApply"};
  BnApplyGrad g = batchnorm_act_backward_apply(
      a.tensor(0, "x"), a.tensor(1, "dy"), a.tensor(2, "weight"), a.tensor(3, "bias"),
      a.tensor(4, "mean"), a.tensor(5, "invstd"), norm_act(a, 6), a.optional_tensor(7, "s"),
      a.optional_tensor(8, "dm"), a.optional_tensor(9, "dweight"), a.optional_tensor(10, "dbias"),
      a.boolean(11, "training"), a.optional_tensor(12, "residual"));
  return wrap_all(info, {g.dx, g.dresidual});
}

// ---- pooling --------------------------------------------------------------------------------
struct Win { int64_t kh, kw, sh, sw, ph, pw; };
Win window_args(const Args& a, size_t i) {
  return Win{a.integer(i, "kernelH", 1, kMaxWin),     a.integer(i + 1, "kernelW", 1, kMaxWin),
             a.integer(i + 2, "strideH", 1, kMaxWin), a.integer(i + 3, "strideW", 1, kMaxWin),
             a.integer(i + 4, "paddingH", 0, kMaxWin), a.integer(i + 5, "paddingW", 0, kMaxWin)};
}

// (x, kh, kw, sh, sw, ph, pw) -> [y, indices]
Napi::Value MaxPool2dForward(const CI& info) {
  Args a{info, "maxPool2d"};
  const Win w = window_args(a, 1);
  MaxPoolOut o = max_pool2d_forward(a.tensor(0, "x"), w.kh, w.kw, w.sh, w.sw, w.ph, w.pw);
  return wrap_all(info, {o.y, o.indices});
}

// (dy, indices, inputShape, kh, kw, sh, sw, ph, pw) -> dx
Napi::Value MaxPool2dBackward(const CI& info) {
  Args a{info, "maxPool2dBackward"};
  const Win w = window_args(a, 3);
  return wrap(info, max_pool2d_backward(a.tensor(0, "dy"), a.tensor(1, "indices"),
                                        a.shape(2, "inputShape"), w.kh, w.kw, w.sh, w.sw, w.ph,
                                        w.pw));
}

// (x, kh, kw, sh, sw, ph, pw, countIncludePad) -> y
Napi::Value AvgPool2dForward(const CI& info) {
  Args a{info, "avgPool2d"};
  const Win w = window_args(a, 1);
  return wrap(info, avg_pool2d_forward(a.tensor(0, "x"), w.kh, w.kw, w.sh, w.sw, w.ph, w.pw,
                                       a.boolean(7, "countIncludePad")));
}

// (dy, inputShape, kh, kw, sh, sw, ph, pw, countIncludePad) -> dx
Napi::Value AvgPool2dBackward(const CI& info) {
  Args a{info, "avgPool2dBackward"};
  const Win w = window_args(a, 2);
  return wrap(info, avg_pool2d_backward(a.tensor(0, "dy"), a.shape(1, "inputShape"), w.kh, w.kw,
                                        w.sh, w.sw, w.ph, w.pw, a.boolean(8, "countIncludePad")));
}

// ---- cross-entropy --------------------------------------------------------------------------
// (logits, labels, smoothing) -> [loss [1], lse [N, 2] (row max, log-sum-exp), correct [1]]
Napi::Value CrossEntropyForward(const CI& info) {
  Args a{info, "crossEntropy"};
  CrossEntropyOut o = cross_entropy_forward(a.tensor(0, "logits"), a.tensor(1, "labels"),
                                            float(a.number(2, "labelSmoothing")));
  return wrap_all(info, {o.loss, o.lse, o.correct});
}

// (logits, labels, lse, grad, smoothing) -> dlogits
Napi::Value CrossEntropyBackward(const CI& info) {
  Args a{info, "crossEntropyBackward"};
  return wrap(info, cross_entropy_backward(a.tensor(0, "logits"), a.tensor(1, "labels"),
                                           a.tensor(2, "lse"), a.tensor(3, "grad"),
                                           float(a.number(4, "labelSmoothing"))));
}

}  // namespace

void register_norm(Napi::Env env, Napi::Object exports) {
  AS_EXPORT(exports, env, "batchNormStats", BatchNormStats);
  AS_EXPORT(exports, env, "batchNormActForward", BatchNormActForward);
  AS_EXPORT(exports, env, "batchNormActBackwardReduce", BatchNormActBackwardReduce);
  AS_EXPORT(exports, env, "batchNormBackwardParams", BatchNormBackwardParams);
  AS_EXPORT(exports, env, "batchNormActBackwardApply", BatchNormActBackwardApply);
  AS_EXPORT(exports, env, "maxPool2dForward", MaxPool2dForward);
  AS_EXPORT(exports, env, "maxPool2dBackward", MaxPool2dBackward);
  AS_EXPORT(exports, env, "avgPool2dForward", AvgPool2dForward);
  AS_EXPORT(exports, env, "avgPool2dBackward", AvgPool2dBackward);
  AS_EXPORT(exports, env, "crossEntropyForward", CrossEntropyForward);
  AS_EXPORT(exports, env, "crossEntropyBackward", CrossEntropyBackward);
}

}  // namespace napi
}  // namespace adashift

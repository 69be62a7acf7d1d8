#include "norm.h"
#include <cmath>
#include "../dispatch.h"

namespace adashift {

namespace {

BnShape bn_shape(const Tensor& x, const char* what) {
  AS_CHECK(x.dim() == 4, Shape, what, ": expected an input of shape [N, C, H, W], got ",
           shape_str(x.shape()));
  AS_CHECK(x.size(1) >= 1 && x.size(2) >= 1 && x.size(3) >= 1, Shape, what,
           ": C, H and W must be at least 1, got ", shape_str(x.shape()));
  return BnShape{x.size(0), x.size(1), x.size(2) * x.size(3)};
}

void check_vec(const Tensor& t, const Tensor& x, int64_t C, const char* what, const char* name) {
  AS_CHECK(t.defined(), Arg, what, ": '", name, "' is required");
  check_same_device(x, t, what);
  AS_CHECK(t.dim() == 1 && t.size(0) == C, Shape, what, ": '", name, "' must have shape [", C,
           "] (one value per channel of the input), got ", shape_str(t.shape()));
}

// [N, C] or [N, 1, C] (the token-major layout of AdaShift's per-region tensors with one region)
void check_planes(const Tensor& t, const Tensor& x, const BnShape& d, const char* what,
                  const char* name) {
  AS_CHECK(t.defined(), Arg, what, ": '", name, "' is required");
  check_same_device(x, t, what);
  const bool ok = (t.dim() == 2 && t.size(0) == d.N && t.size(1) == d.C) ||
                  (t.dim() == 3 && t.size(0) == d.N && t.size(1) == 1 && t.size(2) == d.C);
  AS_CHECK(ok, Shape, what, ": '", name, "' must have shape [", d.N, ", ", d.C, "] or [", d.N,
           ", 1, ", d.C, "], got ", shape_str(t.shape()));
}

void check_act(NormAct act, const Tensor& s, const Tensor& x, const BnShape& d, const char* what) {
  const int a = int(act);
  AS_CHECK(a >= 0 && a <= 5, Arg, what, ": unknown activation kind ", a);
  if (act == NormAct::Gate)
    check_planes(s, x, d, what, "shift s");
  else
    AS_CHECK(!s.defined(), Arg, what, ": a shift is only used with the AdaShift-B gate");
}

BnApply apply_params(const Tensor& weight, const Tensor& bias, const Tensor& mean,
                     const Tensor& invstd, const Tensor& s, const Tensor& residual) {
  return BnApply{mean.data(), invstd.data(), weight.data(), bias.data(),
                 s.defined() ? s.data() : nullptr, residual.defined() ? residual.data() : nullptr};
}

// The residual, when given, has x's shape and device.
void check_residual(const Tensor& residual, const Tensor& x, const char* what) {
  if (!residual.defined()) return;
  check_same_device(x, residual, what);
  AS_CHECK(residual.shape() == x.shape(), Shape, what, ": the residual must have the input's shape ",
           shape_str(x.shape()), ", got ", shape_str(residual.shape()));
}

void check_common(const Tensor& x, const BnShape& d, const Tensor& weight, const Tensor& bias,
                  const Tensor& mean, const Tensor& invstd, const char* what) {
  check_vec(weight, x, d.C, what, "weight");
  check_vec(bias, x, d.C, what, "bias");
  check_vec(mean, x, d.C, what, "mean");
  check_vec(invstd, x, d.C, what, "invstd");
}

}  // namespace

BnApply batchnorm_apply_params(const Tensor& x, const Tensor& weight, const Tensor& bias,
                               const Tensor& mean, const Tensor& invstd, const Tensor& residual,
                               const char* what) {
  // Not bn_shape: the caller's op takes empty inputs (H or W = 0), which have nothing to apply.
  AS_CHECK(x.dim() == 4, Shape, what, ": expected an input of shape [N, C, H, W], got ",
           shape_str(x.shape()));
  const BnShape d{x.size(0), x.size(1), x.size(2) * x.size(3)};
  check_common(x, d, weight, bias, mean, invstd, what);
  check_residual(residual, x, what);
  return apply_params(weight, bias, mean, invstd, Tensor(), residual);
}

BnStats batchnorm_stats(const Tensor& x, const Tensor& weight, const Tensor& bias,
                        const Tensor& running_mean, const Tensor& running_var, bool training,
                        float momentum, float eps, bool planes, const Tensor& residual) {
  const char* what = "batchNorm2d";
  const BnShape d = bn_shape(x, what);
  check_residual(residual, x, what);
  AS_CHECK(!residual.defined() || planes, Arg, what,
           ": a residual enters the statistics only through the pooled means (planes)");
  AS_CHECK(std::isfinite(eps) && eps >= 0.0f, Arg, what, ": eps must be finite and >= 0, got ",
           eps);
  AS_CHECK(std::isfinite(momentum), Arg, what, ": momentum must be finite, got ", momentum);
  AS_CHECK(running_mean.defined() == running_var.defined(), Arg, what,
           ": give both running_mean and running_var, or neither");
  if (running_mean.defined()) {
    check_vec(running_mean, x, d.C, what, "running_mean");
    check_vec(running_var, x, d.C, what, "running_var");
    AS_CHECK(running_mean.storage() != running_var.storage(), Arg, what,
             ": running_mean and running_var must not share memory");
  }
  if (planes) {
    check_vec(weight, x, d.C, what, "weight");
    check_vec(bias, x, d.C, what, "bias");
  }
  BnStats out;
  out.mean = Tensor({d.C}, x.device());
  out.invstd = Tensor({d.C}, x.device());
  if (planes) {
    out.plane_xhat = Tensor({d.N, d.C}, x.device());
    out.pooled = Tensor({d.N, d.C}, x.device());
  }
  float* px = planes ? out.plane_xhat.data() : nullptr;
  float* pp = planes ? out.pooled.data() : nullptr;
  const float* w = planes ? weight.data() : nullptr;
  const float* b = planes ? bias.data() : nullptr;
  const float* r = residual.defined() ? residual.data() : nullptr;
  if (training) {
    AS_CHECK(d.count() > 1, Shape, what,
             ": expected more than 1 value per channel when training, got input of shape ",
             shape_str(x.shape()));
    AS_DISPATCH(x.device(), batchnorm_stats_train, d, x.data(), w, b, momentum, eps,
                running_mean.defined() ? running_mean.data() : nullptr,
                running_var.defined() ? running_var.data() : nullptr, out.mean.data(),
                out.invstd.data(), px, pp, r);
  } else {
    AS_CHECK(running_mean.defined(), Arg, what,
             ": eval mode (training: false) needs running_mean and running_var");
    AS_DISPATCH(x.device(), batchnorm_stats_eval, d, x.data(), w, b, running_mean.data(),
                running_var.data(), eps, out.mean.data(), out.invstd.data(), px, pp, r);
  }
  return out;
}

Tensor batchnorm_act_forward(const Tensor& x, const Tensor& weight, const Tensor& bias,
                             const Tensor& mean, const Tensor& invstd, NormAct act,
                             const Tensor& s, const Tensor& residual) {
  const char* what = "batchNorm2d forward";
  const BnShape d = bn_shape(x, what);
  check_common(x, d, weight, bias, mean, invstd, what);
  check_act(act, s, x, d, what);
  check_residual(residual, x, what);
  Tensor y(x.shape(), x.device());
  if (y.numel() > 0)
    AS_DISPATCH(x.device(), batchnorm_act_forward, d, act,
                apply_params(weight, bias, mean, invstd, s, residual), x.data(), y.data());
  return y;
}

BnReduce batchnorm_act_backward_reduce(const Tensor& x, const Tensor& dy, const Tensor& weight,
                                       const Tensor& bias, const Tensor& mean,
                                       const Tensor& invstd, NormAct act, const Tensor& s,
                                       const Tensor& residual, bool want_dz) {
  const char* what = "batchNorm2d backward";
  const BnShape d = bn_shape(x, what);
  check_common(x, d, weight, bias, mean, invstd, what);
  check_act(act, s, x, d, what);
  check_residual(residual, x, what);
  check_same_device(x, dy, what);
  check_shape(dy, x.shape(), "batchNorm2d backward: output gradient");
  BnReduce r;
  r.sum_dz = Tensor({d.N, d.C}, x.device());
  r.sum_dz_xhat = Tensor({d.N, d.C}, x.device());
  if (act == NormAct::Gate) r.ds = Tensor({d.N, d.C}, x.device());
  if (want_dz) r.dz = Tensor(x.shape(), x.device());
  if (d.planes() > 0)
    AS_DISPATCH(x.device(), batchnorm_act_backward_reduce, d, act,
                apply_params(weight, bias, mean, invstd, s, residual), x.data(), dy.data(),
                r.sum_dz.data(), r.sum_dz_xhat.data(), r.ds.defined() ? r.ds.data() : nullptr,
                want_dz ? r.dz.data() : nullptr);
  return r;
}

BnParamGrad batchnorm_backward_params(const Tensor& sum_dz, const Tensor& sum_dz_xhat,
                                      const Tensor& dm, const Tensor& plane_xhat) {
  const char* what = "batchNorm2d backward (parameters)";
  AS_CHECK(sum_dz.dim() == 2, Shape, what, ": plane sums must have shape [N, C], got ",
           shape_str(sum_dz.shape()));
  const BnShape d{sum_dz.size(0), sum_dz.size(1), 1};
  check_same_device(sum_dz, sum_dz_xhat, what);
  check_shape(sum_dz_xhat, sum_dz.shape(), what);
  AS_CHECK(dm.defined() == plane_xhat.defined(), Arg, what,
           ": the pooled gradient dm and plane_xhat go together");
  if (dm.defined()) {
    // Reuse the [N, C] / [N, 1, C] check against a stand-in input of the same device.
    check_planes(dm, sum_dz, d, what, "dm");
    check_planes(plane_xhat, sum_dz, d, what, "plane_xhat");
  }
  BnParamGrad g;
  g.dweight = Tensor({d.C}, sum_dz.device());
  g.dbias = Tensor({d.C}, sum_dz.device());
  if (d.C > 0)
    AS_DISPATCH(sum_dz.device(), batchnorm_backward_params, d, sum_dz.data(), sum_dz_xhat.data(),
                dm.defined() ? dm.data() : nullptr,
                plane_xhat.defined() ? plane_xhat.data() : nullptr, g.dweight.data(),
                g.dbias.data());
  return g;
}

BnApplyGrad batchnorm_act_backward_apply(const Tensor& x, const Tensor& dy, const Tensor& weight,
                                         const Tensor& bias, const Tensor& mean,
                                         const Tensor& invstd, NormAct act, const Tensor& s,
                                         const Tensor& dm, const Tensor& dweight,
                                         const Tensor& dbias, bool training,
                                         const Tensor& residual) {
  const char* what = "batchNorm2d backward";
  const BnShape d = bn_shape(x, what);
  check_common(x, d, weight, bias, mean, invstd, what);
  check_act(act, s, x, d, what);
  check_residual(residual, x, what);
  check_same_device(x, dy, what);
  check_shape(dy, x.shape(), "batchNorm2d backward: output gradient");
  if (dm.defined()) {
    AS_CHECK(act == NormAct::Gate || act == NormAct::None, Arg, what,
             ": the pooled gradient dm needs the gate (or act None, with the gate's direct "
             "gradient as dy)");
    check_planes(dm, x, d, what, "dm");
  }
  if (training) {
    check_vec(dweight, x, d.C, what, "dweight");
    check_vec(dbias, x, d.C, what, "dbias");
  }
  BnApplyGrad g;
  g.dx = Tensor(x.shape(), x.device());
  if (residual.defined()) g.dresidual = Tensor(x.shape(), x.device());
  if (g.dx.numel() > 0)
    AS_DISPATCH(x.device(), batchnorm_act_backward_apply, d, act,
                apply_params(weight, bias, mean, invstd, s, residual), x.data(), dy.data(),
                dm.defined() ? dm.data() : nullptr, training ? dweight.data() : nullptr,
                training ? dbias.data() : nullptr, g.dx.data(),
                residual.defined() ? g.dresidual.data() : nullptr);
  return g;
}

}  // namespace adashift

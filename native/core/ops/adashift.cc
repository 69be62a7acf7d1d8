#include "adashift.h"
#include <algorithm>
#include "../dispatch.h"
#include "elementwise.h"
#include <cmath>

namespace adashift {

RegionGrid region_grid(const Tensor& x, int64_t grid) {
  AS_CHECK(x.dim() == 4, Shape, "AdaShift expects an input of shape [N, C, H, W], got ",
           shape_str(x.shape()));
  AS_CHECK(grid >= 1 && grid <= 1024, Arg, "AdaShift grid must be an integer in [1, 1024], got ",
           grid);
  RegionGrid g;
  g.N = x.size(0); g.C = x.size(1); g.H = x.size(2); g.W = x.size(3);
  AS_CHECK(g.H <= (int64_t(1) << 30) && g.W <= (int64_t(1) << 30), Shape,
           "AdaShift: H and W must be below 2^30, got ", shape_str(x.shape()));
  g.Ph = int(std::min<int64_t>(grid, std::max<int64_t>(g.H, 1)));
  g.Pw = int(std::min<int64_t>(grid, std::max<int64_t>(g.W, 1)));
  return g;
}

static void check_tokens(const RegionGrid& g, const Tensor& t, const Tensor& x, const char* what) {
  check_same_device(x, t, what);
  check_shape(t, {g.N, g.tokens(), g.C}, what);
}

Tensor region_pool_forward(const Tensor& x, int64_t grid) {
  RegionGrid g = region_grid(x, grid);
  Tensor t({g.N, g.tokens(), g.C}, x.device());
  if (t.numel() == 0) return t;
  AS_CHECK(g.H > 0 && g.W > 0, Shape, "region pooling needs H, W >= 1, got ",
           shape_str(x.shape()));
  AS_DISPATCH(x.device(), region_pool_forward, g, x.data(), t.data());
  return t;
}

Tensor region_pool_backward(const Tensor& dt, const std::vector<int64_t>& x_shape, int64_t grid) {
  AS_CHECK(x_shape.size() == 4, Shape, "region_pool_backward: input shape must be [N, C, H, W]");
  checked_numel(x_shape);
  Tensor dx(x_shape, dt.device());
  RegionGrid g = region_grid(dx, grid);
  check_shape(dt, {g.N, g.tokens(), g.C}, "region_pool_backward");
  if (dx.numel() > 0) AS_DISPATCH(dt.device(), region_pool_backward, g, dt.data(), dx.data());
  return dx;
}

Tensor gate_forward(const Tensor& x, const Tensor& s, int64_t grid) {
  RegionGrid g = region_grid(x, grid);
  check_tokens(g, s, x, "AdaShift gate: shift s");
  Tensor y(x.shape(), x.device());
  if (y.numel() > 0) AS_DISPATCH(x.device(), gate_forward, g, x.data(), s.data(), y.data());
  return y;
}

Tensor gate_backward_reduce(const Tensor& x, const Tensor& dy, const Tensor& s, int64_t grid) {
  RegionGrid g = region_grid(x, grid);
  check_tokens(g, s, x, "AdaShift gate backward: shift s");
  check_same_device(x, dy, "AdaShift gate backward");
  check_shape(dy, x.shape(), "AdaShift gate backward: output gradient");
  Tensor ds({g.N, g.tokens(), g.C}, x.device());
  if (ds.numel() == 0) return ds;
  if (x.numel() == 0) { fill_(ds, 0.0f); return ds; }
  AS_DISPATCH(x.device(), gate_backward_reduce, g, x.data(), dy.data(), s.data(), ds.data());
  return ds;
}

Tensor gate_backward_apply(const Tensor& x, const Tensor& dy, const Tensor& s, const Tensor& dt,
                           int64_t grid) {
  RegionGrid g = region_grid(x, grid);
  check_tokens(g, s, x, "AdaShift gate backward: shift s");
  if (dt.defined()) check_tokens(g, dt, x, "AdaShift backward: pooled gradient");
  check_same_device(x, dy, "AdaShift gate backward");
  check_shape(dy, x.shape(), "AdaShift gate backward: output gradient");
  Tensor dx(x.shape(), x.device());
  if (dx.numel() > 0)
    AS_DISPATCH(x.device(), gate_backward_apply, g, x.data(), dy.data(), s.data(),
                dt.defined() ? dt.data() : nullptr, dx.data());
  return dx;
}

}  // namespace adashift

// ---- AdaShift-B as one op ---------------------------------------------------------------------
#include "dense.h"

namespace adashift {

static void check_adashift_b_params(const Tensor& x, const Tensor& proj_w, const Tensor& proj_b,
                                    const Tensor& norm_w, const Tensor& norm_b) {
  AS_CHECK(x.dim() == 4, Shape, "AdaShift-B expects an input of shape [N, C, H, W], got ", shape_str(x.shape()));
  const int64_t C = x.size(1);
  check_same_device(x, norm_w, "AdaShift-B norm.weight");
  check_shape(norm_w, {C}, "AdaShift-B norm.weight");
  if (norm_b.defined()) {
    check_same_device(x, norm_b, "AdaShift-B norm.bias");
    check_shape(norm_b, {C}, "AdaShift-B norm.bias");
  }
  if (proj_w.defined()) {
    check_same_device(x, proj_w, "AdaShift-B proj.weight");
    check_shape(proj_w, {C, C}, "AdaShift-B proj.weight");
  }
  if (proj_b.defined()) {
    AS_CHECK(proj_w.defined(), Arg, "AdaShift-B: proj.bias without proj.weight");
    check_same_device(x, proj_b, "AdaShift-B proj.bias");
    check_shape(proj_b, {C}, "AdaShift-B proj.bias");
  }
}

AdaShiftBForward adashift_b_forward(const Tensor& x, const Tensor& proj_w, const Tensor& proj_b,
                                    const Tensor& norm_w, const Tensor& norm_b, float eps) {
  check_adashift_b_params(x, proj_w, proj_b, norm_w, norm_b);
  AS_CHECK(norm_b.defined(), Arg, "AdaShift-B: norm.bias is required");
  AS_CHECK(std::isfinite(eps) && eps > 0, Arg, "AdaShift-B: eps must be a positive number, got ", eps);
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  AS_CHECK(HW > 0 || x.numel() == 0, Shape, "AdaShift-B needs H, W >= 1, got ", shape_str(x.shape()));
  const Device d = x.device();
  if (d.is_cpu()) {
    AdaShiftBForward o;
    o.y = Tensor(x.shape(), d);
    o.saved.t = Tensor({N, 1, C}, d);
    o.saved.u = proj_w.defined() ? Tensor({N, 1, C}, d) : o.saved.t;
    o.saved.s = Tensor({N, 1, C}, d);
    o.saved.mean = Tensor({N}, d);
    o.saved.rstd = Tensor({N}, d);
    if (x.numel() > 0)
      cpu::adashift_b_forward(x.data(), N, C, HW, proj_w.defined() ? proj_w.data() : nullptr,
                              proj_b.defined() ? proj_b.data() : nullptr, norm_w.data(), norm_b.data(), eps,
                              o.y.data(), o.saved.t.data(), o.saved.u.data(), o.saved.s.data(),
                              o.saved.mean.data(), o.saved.rstd.data());
    return o;
  }
  // CUDA: the whole-tensor kernels in sequence (each already checked against the CPU).
  AdaShiftBForward o;
  o.saved.t = region_pool_forward(x, 1);
  if (proj_w.defined()) {
    Tensor t2 = Tensor::view(o.saved.t, {N, C});
    Tensor m = matmul(t2, proj_w, false, true);
    o.saved.u = Tensor::view(proj_b.defined() ? add_rowvec(m, proj_b) : m, {N, 1, C});
  } else {
    o.saved.u = o.saved.t;
  }
  LayerNormOut ln = layernorm_forward(o.saved.u, norm_w, norm_b, eps);
  o.saved.s = ln.y;
  o.saved.mean = ln.mean;
  o.saved.rstd = ln.rstd;
  o.y = gate_forward(x, o.saved.s, 1);
  return o;
}

AdaShiftBGrad adashift_b_backward(const Tensor& x, const Tensor& dy, const AdaShiftBSaved& sv,
                                  const Tensor& proj_w, const Tensor& norm_w, bool need_dx) {
  check_adashift_b_params(x, proj_w, Tensor(), norm_w, Tensor());
  check_same_device(x, dy, "AdaShift-B backward");
  check_shape(dy, x.shape(), "AdaShift-B backward: output gradient");
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  for (const Tensor* t : {&sv.t, &sv.u, &sv.s}) {
    check_same_device(x, *t, "AdaShift-B backward: saved tensor");
    check_shape(*t, {N, 1, C}, "AdaShift-B backward: saved tensor");
  }
  check_shape(sv.mean, {N}, "AdaShift-B backward: saved mean");
  check_shape(sv.rstd, {N}, "AdaShift-B backward: saved rstd");
  const Device d = x.device();
  AdaShiftBGrad g;
  if (N == 0) {  // an empty batch: zero parameter gradients
    if (need_dx) g.dx = Tensor(x.shape(), d);
    g.dnorm_w = full({C}, 0.0f, d);
    g.dnorm_b = full({C}, 0.0f, d);
    if (proj_w.defined()) { g.dproj_w = full({C, C}, 0.0f, d); g.dproj_b = full({C}, 0.0f, d); }
    return g;
  }
  Tensor du;
  if (d.is_cpu()) {
    du = Tensor({N, C}, d);
    Tensor dnw_rows({N, C}, d), dnb_rows({N, C}, d);
    if (need_dx) g.dx = Tensor(x.shape(), d);
    cpu::adashift_b_backward(x.data(), dy.data(), N, C, HW, sv.u.data(), sv.s.data(), sv.mean.data(),
                               sv.rstd.data(), proj_w.defined() ? proj_w.data() : nullptr, norm_w.data(),
                               need_dx && x.numel() > 0, need_dx ? g.dx.data() : nullptr, du.data(),
                               dnw_rows.data(), dnb_rows.data());
    g.dnorm_w = sum_rows(dnw_rows, N);
    g.dnorm_b = sum_rows(dnb_rows, N);
  } else {
    Tensor ds = gate_backward_reduce(x, dy, sv.s, 1);
    LayerNormGrad lg = layernorm_backward(ds, sv.u, sv.mean, sv.rstd, norm_w);
    g.dnorm_w = lg.dweight;
    g.dnorm_b = lg.dbias;
    du = Tensor::view(lg.dx, {N, C});
    if (need_dx) {
      Tensor dt = proj_w.defined() ? Tensor::view(matmul(du, proj_w, false, false), {N, 1, C})
                                   : Tensor::view(du, {N, 1, C});
      g.dx = gate_backward_apply(x, dy, sv.s, dt, 1);
    }
  }
  if (proj_w.defined()) {
    g.dproj_w = matmul(du, Tensor::view(sv.t, {N, C}), true, false);
    g.dproj_b = sum_rows(du, N);
  }
  return g;
}

}  // namespace adashift

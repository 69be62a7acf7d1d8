#include "adashift.h"
#include <algorithm>
#include "../dispatch.h"
#include "elementwise.h"

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

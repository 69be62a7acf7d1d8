#include "pool.h"
#include "../dispatch.h"
#include "elementwise.h"

namespace adashift {

namespace {
constexpr int64_t kMaxSide = int64_t(1) << 30;

int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
}  // namespace

Pool2d pool2d_geometry(const std::vector<int64_t>& s, int64_t kh, int64_t kw, int64_t sh,
                       int64_t sw, int64_t ph, int64_t pw, bool count_include_pad,
                       const char* what) {
  AS_CHECK(s.size() == 4, Shape, what, ": expected an input of shape [N, C, H, W], got ",
           shape_str(s));
  checked_numel(s);
  AS_CHECK(s[2] >= 1 && s[3] >= 1 && s[2] < kMaxSide && s[3] < kMaxSide, Shape, what,
           ": H and W must be in [1, 2^30), got ", shape_str(s));
  AS_CHECK(kh >= 1 && kw >= 1 && kh < kMaxSide && kw < kMaxSide, Arg, what,
           ": kernel size must be positive, got ", kh, " x ", kw);
  AS_CHECK(sh >= 1 && sw >= 1 && sh < kMaxSide && sw < kMaxSide, Arg, what,
           ": stride must be positive, got ", sh, " x ", sw);
  AS_CHECK(ph >= 0 && pw >= 0 && ph <= kh / 2 && pw <= kw / 2, Arg, what,
           ": padding must be non-negative and at most half the kernel size, got padding ", ph,
           " x ", pw, " for kernel ", kh, " x ", kw);
  AS_CHECK(s[2] * s[3] < (int64_t(1) << 31), Shape, what,
           ": an input plane is limited to 2^31 elements (H * W), got ", s[2], " x ", s[3]);
  const int64_t Ho = floor_div(s[2] + 2 * ph - kh, sh) + 1;
  const int64_t Wo = floor_div(s[3] + 2 * pw - kw, sw) + 1;
  AS_CHECK(Ho >= 1 && Wo >= 1, Shape, what, ": the output would be empty (", Ho, " x ", Wo,
           ") for input ", shape_str(s), ", kernel ", kh, " x ", kw, ", stride ", sh, " x ", sw,
           ", padding ", ph, " x ", pw, "; the kernel must fit in the padded input");
  // Padding can make the output plane larger than the input's (kernel 2, stride 1, padding 1).
  AS_CHECK(Ho * Wo < (int64_t(1) << 31), Shape, what,
           ": an output plane is limited to 2^31 elements (Ho * Wo), got ", Ho, " x ", Wo);
  Pool2d g;
  g.N = s[0];
  g.C = s[1];
  g.H = int(s[2]);
  g.W = int(s[3]);
  g.Ho = int(Ho);
  g.Wo = int(Wo);
  g.kh = int(kh);
  g.kw = int(kw);
  g.sh = int(sh);
  g.sw = int(sw);
  g.ph = int(ph);
  g.pw = int(pw);
  g.count_include_pad = count_include_pad;
  return g;
}

// Max pooling stores each window's argmax as a float index into the input plane: exact only up
// to 2^24 (above it neighbouring indices round to the same float and a gradient would go to
// two inputs). Forward and backward both check it (indices may be made by hand).
static void check_max_pool_plane(const Pool2d& g, const char* what) {
  AS_CHECK(int64_t(g.H) * g.W <= (int64_t(1) << 24), Shape, what,
           ": an input plane is limited to 2^24 elements (H * W), got ", g.H, " x ", g.W);
}

MaxPoolOut max_pool2d_forward(const Tensor& x, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                              int64_t ph, int64_t pw) {
  const Pool2d g = pool2d_geometry(x.shape(), kh, kw, sh, sw, ph, pw, false, "maxPool2d");
  check_max_pool_plane(g, "maxPool2d");
  MaxPoolOut o;
  o.y = Tensor({g.N, g.C, g.Ho, g.Wo}, x.device());
  o.indices = Tensor({g.N, g.C, g.Ho, g.Wo}, x.device());
  if (o.y.numel() > 0)
    AS_DISPATCH(x.device(), max_pool2d_forward, g, x.data(), o.y.data(), o.indices.data());
  return o;
}

Tensor max_pool2d_backward(const Tensor& dy, const Tensor& indices,
                           const std::vector<int64_t>& x_shape, int64_t kh, int64_t kw,
                           int64_t sh, int64_t sw, int64_t ph, int64_t pw) {
  const Pool2d g = pool2d_geometry(x_shape, kh, kw, sh, sw, ph, pw, false, "maxPool2d backward");
  check_max_pool_plane(g, "maxPool2d backward");
  check_same_device(dy, indices, "maxPool2d backward");
  check_shape(dy, {g.N, g.C, g.Ho, g.Wo}, "maxPool2d backward: output gradient");
  check_shape(indices, {g.N, g.C, g.Ho, g.Wo}, "maxPool2d backward: indices");
  Tensor dx(x_shape, dy.device());
  if (dx.numel() > 0)
    AS_DISPATCH(dy.device(), max_pool2d_backward, g, dy.data(), indices.data(), dx.data());
  return dx;
}

Tensor avg_pool2d_forward(const Tensor& x, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                          int64_t ph, int64_t pw, bool count_include_pad) {
  const Pool2d g = pool2d_geometry(x.shape(), kh, kw, sh, sw, ph, pw, count_include_pad, "avgPool2d");
  Tensor y({g.N, g.C, g.Ho, g.Wo}, x.device());
  if (y.numel() > 0) AS_DISPATCH(x.device(), avg_pool2d_forward, g, x.data(), y.data());
  return y;
}

Tensor avg_pool2d_backward(const Tensor& dy, const std::vector<int64_t>& x_shape, int64_t kh,
                           int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                           bool count_include_pad) {
  const Pool2d g = pool2d_geometry(x_shape, kh, kw, sh, sw, ph, pw, count_include_pad,
                                   "avgPool2d backward");
  check_shape(dy, {g.N, g.C, g.Ho, g.Wo}, "avgPool2d backward: output gradient");
  Tensor dx(x_shape, dy.device());
  if (dx.numel() > 0) AS_DISPATCH(dy.device(), avg_pool2d_backward, g, dy.data(), dx.data());
  return dx;
}

}  // namespace adashift

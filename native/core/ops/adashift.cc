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

// AdaShift-B's parameters for C channels, on x's device.
static void check_b_params(const Tensor& x, int64_t C, const Tensor& proj_w, const Tensor& proj_b,
                           const Tensor& norm_w, const Tensor& norm_b) {
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

static void check_adashift_b_params(const Tensor& x, const Tensor& proj_w, const Tensor& proj_b,
                                    const Tensor& norm_w, const Tensor& norm_b) {
  AS_CHECK(x.dim() == 4, Shape, "AdaShift-B expects an input of shape [N, C, H, W], got ", shape_str(x.shape()));
  check_b_params(x, x.size(1), proj_w, proj_b, norm_w, norm_b);
}

static void check_b_forward_args(const Tensor& norm_b, float eps) {
  AS_CHECK(norm_b.defined(), Arg, "AdaShift-B: norm.bias is required");
  AS_CHECK(std::isfinite(eps) && eps > 0, Arg, "AdaShift-B: eps must be a positive number, got ", eps);
}

AdaShiftBContext adashift_b_context_forward(const Tensor& m, const Tensor& proj_w,
                                            const Tensor& proj_b, const Tensor& norm_w,
                                            const Tensor& norm_b, float eps) {
  AS_CHECK(m.defined() && m.dim() == 3 && m.size(1) == 1, Shape,
           "AdaShift-B context: the pooled means must have shape [N, 1, C], got ",
           m.defined() ? shape_str(m.shape()) : std::string("nothing"));
  const int64_t N = m.size(0), C = m.size(2);
  check_b_params(m, C, proj_w, proj_b, norm_w, norm_b);
  check_b_forward_args(norm_b, eps);
  AdaShiftBContext o;
  if (proj_w.defined()) {
    Tensor u = matmul(Tensor::view(m, {N, C}), proj_w, false, true);
    o.u = Tensor::view(proj_b.defined() ? add_rowvec(u, proj_b) : u, {N, 1, C});
  } else {
    o.u = m;
  }
  LayerNormOut ln = layernorm_forward(o.u, norm_w, norm_b, eps);
  o.s = ln.y;
  o.mean = ln.mean;
  o.rstd = ln.rstd;
  return o;
}

AdaShiftBContextGrad adashift_b_context_backward(const Tensor& ds, const Tensor& m,
                                                 const AdaShiftBContext& saved,
                                                 const Tensor& proj_w, const Tensor& norm_w,
                                                 bool need_dm) {
  AS_CHECK(m.defined() && m.dim() == 3 && m.size(1) == 1, Shape,
           "AdaShift-B context backward: the pooled means must have shape [N, 1, C], got ",
           m.defined() ? shape_str(m.shape()) : std::string("nothing"));
  const int64_t N = m.size(0), C = m.size(2);
  check_b_params(m, C, proj_w, Tensor(), norm_w, Tensor());
  for (const Tensor* t : {&ds, &saved.u}) {
    check_same_device(m, *t, "AdaShift-B context backward");
    check_shape(*t, {N, 1, C}, "AdaShift-B context backward: shift gradient / saved u");
  }
  for (const Tensor* t : {&saved.mean, &saved.rstd}) {
    check_same_device(m, *t, "AdaShift-B context backward: saved statistics");
    check_shape(*t, {N}, "AdaShift-B context backward: saved statistics");
  }
  AdaShiftBContextGrad g;
  const Device d = m.device();
  if (N == 0) {  // no samples: zero parameter gradients
    if (need_dm) g.dm = Tensor({0, 1, C}, d);
    g.dnorm_w = full({C}, 0.0f, d);
    g.dnorm_b = full({C}, 0.0f, d);
    if (proj_w.defined()) { g.dproj_w = full({C, C}, 0.0f, d); g.dproj_b = full({C}, 0.0f, d); }
    return g;
  }
  LayerNormGrad lg = layernorm_backward(ds, saved.u, saved.mean, saved.rstd, norm_w);
  g.dnorm_w = lg.dweight;
  g.dnorm_b = lg.dbias;
  if (!proj_w.defined()) {
    if (need_dm) g.dm = lg.dx;
    return g;
  }
  Tensor du = Tensor::view(lg.dx, {N, C});
  g.dproj_w = matmul(du, Tensor::view(m, {N, C}), true, false);
  g.dproj_b = sum_rows(du, N);
  if (need_dm) g.dm = Tensor::view(matmul(du, proj_w, false, false), {N, 1, C});
  return g;
}

// A tensor the fused ops save for backward: zeros for an empty input (no kernel will write it),
// else left for the kernel to fill.
static Tensor saved_tensor(const std::vector<int64_t>& shape, Device d, bool empty) {
  return empty ? full(shape, 0.0f, d) : Tensor(shape, d);
}

AdaShiftBForward adashift_b_forward(const Tensor& x, const Tensor& proj_w, const Tensor& proj_b,
                                    const Tensor& norm_w, const Tensor& norm_b, float eps) {
  check_adashift_b_params(x, proj_w, proj_b, norm_w, norm_b);
  check_b_forward_args(norm_b, eps);
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  AS_CHECK(HW > 0 || x.numel() == 0, Shape, "AdaShift-B needs H, W >= 1, got ", shape_str(x.shape()));
  const Device d = x.device();
  if (d.is_cpu() || x.numel() == 0) {
    // An empty x (N, C, H or W zero) on either device: y is empty, and the saved per-sample
    // tensors (there may be N * C > 0 of them) are zeros rather than left unwritten.
    const bool empty = x.numel() == 0;
    auto make = [&](std::vector<int64_t> shape) { return saved_tensor(shape, d, empty); };
    AdaShiftBForward o;
    o.y = Tensor(x.shape(), d);
    o.saved.t = make({N, 1, C});
    o.saved.u = proj_w.defined() ? make({N, 1, C}) : o.saved.t;
    o.saved.s = make({N, 1, C});
    o.saved.mean = make({N});
    o.saved.rstd = make({N});
    if (!empty)
      cpu::adashift_b_forward(x.data(), N, C, HW, proj_w.defined() ? proj_w.data() : nullptr,
                              proj_b.defined() ? proj_b.data() : nullptr, norm_w.data(), norm_b.data(), eps,
                              o.y.data(), o.saved.t.data(), o.saved.u.data(), o.saved.s.data(),
                              o.saved.mean.data(), o.saved.rstd.data());
    return o;
  }
  // CUDA: the whole-tensor kernels in sequence (each already checked against the CPU).
  AdaShiftBForward o;
  o.saved.t = region_pool_forward(x, 1);
  AdaShiftBContext cx = adashift_b_context_forward(o.saved.t, proj_w, proj_b, norm_w, norm_b, eps);
  o.saved.u = cx.u;
  o.saved.s = cx.s;
  o.saved.mean = cx.mean;
  o.saved.rstd = cx.rstd;
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
  if (x.numel() == 0) {  // an empty input (no pixel carries a gradient): zero parameter gradients
    if (need_dx) g.dx = Tensor(x.shape(), d);
    g.dnorm_w = full({C}, 0.0f, d);
    g.dnorm_b = full({C}, 0.0f, d);
    if (proj_w.defined()) { g.dproj_w = full({C, C}, 0.0f, d); g.dproj_b = full({C}, 0.0f, d); }
    return g;
  }
  if (!d.is_cpu()) {
    // CUDA: the whole-tensor kernels in sequence; the context network's backward as the
    // BatchNorm + AdaShift-B op runs it.
    Tensor ds = gate_backward_reduce(x, dy, sv.s, 1);
    AdaShiftBContextGrad cg = adashift_b_context_backward(ds, sv.t, AdaShiftBContext{sv.s, sv.u, sv.mean, sv.rstd},
                                                          proj_w, norm_w, need_dx);
    if (need_dx) g.dx = gate_backward_apply(x, dy, sv.s, cg.dm, 1);
    g.dnorm_w = cg.dnorm_w;
    g.dnorm_b = cg.dnorm_b;
    g.dproj_w = cg.dproj_w;
    g.dproj_b = cg.dproj_b;
    return g;
  }
  Tensor du({N, C}, d);
  Tensor dnw_rows({N, C}, d), dnb_rows({N, C}, d);
  if (need_dx) g.dx = Tensor(x.shape(), d);
  cpu::adashift_b_backward(x.data(), dy.data(), N, C, HW, sv.u.data(), sv.s.data(), sv.mean.data(),
                           sv.rstd.data(), proj_w.defined() ? proj_w.data() : nullptr, norm_w.data(),
                           need_dx && x.numel() > 0, need_dx ? g.dx.data() : nullptr, du.data(),
                           dnw_rows.data(), dnb_rows.data());
  g.dnorm_w = sum_rows(dnw_rows, N);
  g.dnorm_b = sum_rows(dnb_rows, N);
  if (proj_w.defined()) {
    g.dproj_w = matmul(du, Tensor::view(sv.t, {N, C}), true, false);
    g.dproj_b = sum_rows(du, N);
  }
  return g;
}

}  // namespace adashift

// ---- AdaShift-MA as one op --------------------------------------------------------------------
namespace adashift {

static void check_ma_vec(const Tensor& x, const Tensor& t, int64_t C, const char* what) {
  AS_CHECK(t.defined(), Arg, "AdaShift-MA: ", what, " is required");
  check_same_device(x, t, what);
  check_shape(t, {C}, what);
}

static RegionGrid check_adashift_ma(const Tensor& x, const AdaShiftMAParams& p) {
  RegionGrid g = region_grid(x, p.grid);
  const int64_t C = g.C;
  AS_CHECK(C >= 1, Shape, "AdaShift-MA needs at least one channel, got ", shape_str(x.shape()));
  AS_CHECK(p.heads >= 1 && p.heads <= C && C % p.heads == 0, Arg, "AdaShift-MA: heads must divide the ",
           C, " channels, got ", p.heads);
  AS_CHECK(std::isfinite(p.eps) && p.eps > 0, Arg, "AdaShift-MA: eps must be a positive number, got ", p.eps);
  AS_CHECK(g.H * g.W > 0 || x.numel() == 0, Shape, "AdaShift-MA needs H, W >= 1, got ", shape_str(x.shape()));
  check_ma_vec(x, p.q_w, C, "AdaShift-MA q.weight");
  check_ma_vec(x, p.q_b, C, "AdaShift-MA q.bias");
  check_ma_vec(x, p.k_w, C, "AdaShift-MA k.weight");
  check_ma_vec(x, p.k_b, C, "AdaShift-MA k.bias");
  check_ma_vec(x, p.v_w, C, "AdaShift-MA v.weight");
  check_ma_vec(x, p.v_b, C, "AdaShift-MA v.bias");
  check_ma_vec(x, p.rect_w, C, "AdaShift-MA rect norm weight");
  check_ma_vec(x, p.rect_b, C, "AdaShift-MA rect norm bias");
  if (p.lin_w.defined()) {
    check_same_device(x, p.lin_w, "AdaShift-MA rect.0.weight");
    check_shape(p.lin_w, {C, C}, "AdaShift-MA rect.0.weight");
  }
  return g;
}

static cpu::AdaShiftMAPtrs ma_ptrs(const AdaShiftMAParams& p) {
  return cpu::AdaShiftMAPtrs{p.q_w.data(), p.q_b.data(), p.k_w.data(), p.k_b.data(), p.v_w.data(),
                             p.v_b.data(), p.lin_w.defined() ? p.lin_w.data() : nullptr,
                             p.rect_w.data(), p.rect_b.data(), p.heads, p.eps};
}

// [N, T, C] <-> [N*G, T, d] (a view when G == 1).
static Tensor ma_split(const Tensor& z, int64_t N, int64_t T, int64_t G, int64_t d) {
  if (G == 1) return Tensor::view(z, {N, T, d});
  return Tensor::view(permute(Tensor::view(z, {N, T, G, d}), {0, 2, 1, 3}), {N * G, T, d});
}
static Tensor ma_merge(const Tensor& z, int64_t N, int64_t T, int64_t G, int64_t d) {
  if (G == 1) return Tensor::view(z, {N, T, d});
  return Tensor::view(permute(Tensor::view(z, {N, G, T, d}), {0, 2, 1, 3}), {N, T, G * d});
}

// Checks a BatchNorm input against x (BatchNorm's own checks) and packs its pointers for the CPU
// kernels.
static BnApply check_ma_bn(const Tensor& x, const MABatchNormInput& bn) {
  return batchnorm_apply_params(x, bn.weight, bn.bias, bn.mean, bn.invstd, bn.residual,
                                "AdaShift-MA BatchNorm input");
}

// bn(x) + r as BatchNorm's forward pass writes it (the CUDA path's input to the MA op).
static Tensor ma_bn_input(const Tensor& x, const MABatchNormInput& bn) {
  return batchnorm_act_forward(x, bn.weight, bn.bias, bn.mean, bn.invstd, NormAct::None, Tensor(),
                               bn.residual);
}

// A saved tensor's data, or null when the op did not keep it.
static float* data_or_null(const Tensor& t) { return t.defined() ? t.data() : nullptr; }

// CUDA: the context network up to the rect's input, as the whole-tensor ops in sequence (each
// checked against the CPU): the forward's, and the backward's when the forward kept no context.
struct MAContext {
  Tensor t, attn, o, z;
};
static MAContext ma_context_cuda(const Tensor& x, const AdaShiftMAParams& p, int64_t N, int64_t T,
                                 int64_t G, int64_t d) {
  const float scale = float(1.0 / std::sqrt(double(d)));
  MAContext c;
  c.t = region_pool_forward(x, p.grid);
  Tensor q = ma_split(layernorm_forward(c.t, p.q_w, p.q_b, p.eps).y, N, T, G, d);
  Tensor k = ma_split(layernorm_forward(c.t, p.k_w, p.k_b, p.eps).y, N, T, G, d);
  Tensor v = ma_split(layernorm_forward(c.t, p.v_w, p.v_b, p.eps).y, N, T, G, d);
  Tensor sc = matmul(q, k, false, true);
  Tensor a = softmax_forward(axpby(scale, sc, 0.0f, sc));
  c.attn = Tensor::view(a, {N, G, T, T});
  c.o = ma_merge(matmul(a, v, false, false), N, T, G, d);
  const int64_t C = G * d;
  c.z = p.lin_w.defined()
            ? Tensor::view(matmul(Tensor::view(c.o, {N * T, C}), p.lin_w, false, true), {N, T, C})
            : c.o;
  return c;
}

AdaShiftMAForward adashift_ma_forward(const Tensor& x, const AdaShiftMAParams& p,
                                      const MABatchNormInput& bn) {
  RegionGrid g = check_adashift_ma(x, p);
  const int64_t N = g.N, C = g.C, T = g.tokens(), G = p.heads, d = C / G;
  const Device dev = x.device();
  BnApply bk{};
  if (bn.defined()) {
    bk = check_ma_bn(x, bn);
    if (!dev.is_cpu() && x.numel() > 0) return adashift_ma_forward(ma_bn_input(x, bn), p);
  }
  AdaShiftMAForward r;
  const bool keep = p.keep_context;
  if (dev.is_cpu() || x.numel() == 0) {
    // An empty x on either device: the saved tensors are zeros rather than left unwritten.
    const bool empty = x.numel() == 0;
    auto make = [&](std::vector<int64_t> shape) { return saved_tensor(shape, dev, empty); };
    r.y = Tensor(x.shape(), dev);
    if (keep) {
      r.saved.t = make({N, T, C});
      r.saved.attn = make({N, G, T, T});
      r.saved.o = make({N, T, C});
      r.saved.z = p.lin_w.defined() ? make({N, T, C}) : r.saved.o;
    }
    r.saved.s = make({N, T, C});
    r.saved.stats = make({N, 4, T});
    if (!empty)
      cpu::adashift_ma_forward(g, x.data(), ma_ptrs(p), bn.defined() ? &bk : nullptr, r.y.data(),
                               data_or_null(r.saved.t), data_or_null(r.saved.attn), data_or_null(r.saved.o),
                               data_or_null(r.saved.z), r.saved.s.data(), r.saved.stats.data());
    return r;
  }
  MAContext c = ma_context_cuda(x, p, N, T, G, d);
  r.saved.s = layernorm_forward(c.z, p.rect_w, p.rect_b, p.eps).y;
  r.y = gate_forward(x, r.saved.s, p.grid);
  if (keep) {
    r.saved.t = c.t;
    r.saved.attn = c.attn;
    r.saved.o = c.o;
    r.saved.z = c.z;
  }
  return r;
}

AdaShiftMAGrad adashift_ma_backward(const Tensor& x, const Tensor& dy, const AdaShiftMASaved& sv,
                                    const AdaShiftMAParams& p, bool need_dx,
                                    const MABatchNormInput& bn) {
  RegionGrid g = check_adashift_ma(x, p);
  BnApply bk{};
  if (bn.defined()) {
    bk = check_ma_bn(x, bn);
    need_dx = true;
    if (!x.device().is_cpu() && x.numel() > 0) {
      check_same_device(x, dy, "AdaShift-MA backward");
      check_shape(dy, x.shape(), "AdaShift-MA backward: output gradient");
      AdaShiftMAGrad r = adashift_ma_backward(ma_bn_input(x, bn), dy, sv, p, true);
      BnReduce red = batchnorm_act_backward_reduce(x, r.dx, bn.weight, bn.bias, bn.mean, bn.invstd,
                                                   NormAct::None, Tensor(), Tensor());
      r.sum_dz = red.sum_dz;
      r.sum_dz_xhat = red.sum_dz_xhat;
      return r;
    }
  }
  const int64_t N = g.N, C = g.C, T = g.tokens(), G = p.heads, d = C / G;
  check_same_device(x, dy, "AdaShift-MA backward");
  check_shape(dy, x.shape(), "AdaShift-MA backward: output gradient");
  // The forward's context (t, attn, o, z) all given, or none: then recomputed here from x.
  const bool recompute = !sv.t.defined();
  AS_CHECK(sv.attn.defined() != recompute && sv.o.defined() != recompute && sv.z.defined() != recompute, Arg,
           "AdaShift-MA backward: the saved t, attn, o and z go together: all of them (kept by the forward) "
           "or none (the backward recomputes them)");
  AS_CHECK(sv.s.defined(), Arg, "AdaShift-MA backward: the saved shift s is required");
  for (const Tensor* t : {&sv.t, &sv.o, &sv.z, &sv.s}) {
    if (!t->defined()) continue;
    check_same_device(x, *t, "AdaShift-MA backward: saved tensor");
    check_shape(*t, {N, T, C}, "AdaShift-MA backward: saved tensor");
  }
  if (!recompute) {
    check_same_device(x, sv.attn, "AdaShift-MA backward: saved attention");
    check_shape(sv.attn, {N, G, T, T}, "AdaShift-MA backward: saved attention");
  }
  if (x.device().is_cpu()) {
    AS_CHECK(sv.stats.defined(), Arg,
             "AdaShift-MA backward: the saved LayerNorm statistics (stats) are required on the CPU");
    check_same_device(x, sv.stats, "AdaShift-MA backward: saved statistics");
    check_shape(sv.stats, {N, 4, T}, "AdaShift-MA backward: saved statistics");
  }
  const Device dev = x.device();
  AdaShiftMAGrad r;
  const bool lin = p.lin_w.defined();
  if (N == 0 || x.numel() == 0) {  // an empty batch: zero parameter gradients
    if (need_dx) r.dx = full(x.shape(), 0.0f, dev);
    if (bn.defined()) {
      r.sum_dz = full({N, C}, 0.0f, dev);
      r.sum_dz_xhat = full({N, C}, 0.0f, dev);
    }
    for (Tensor* t : {&r.dq_w, &r.dq_b, &r.dk_w, &r.dk_b, &r.dv_w, &r.dv_b, &r.drect_w, &r.drect_b})
      *t = full({C}, 0.0f, dev);
    if (lin) r.dlin_w = full({C, C}, 0.0f, dev);
    return r;
  }
  Tensor dz, o = sv.o;  // o: the attention output, the forward's or recomputed here
  if (dev.is_cpu()) {
    dz = Tensor({N, T, C}, dev);
    Tensor prow({N, 8 * C}, dev);
    if (need_dx) r.dx = Tensor(x.shape(), dev);
    if (bn.defined()) {
      r.sum_dz = Tensor({N, C}, dev);
      r.sum_dz_xhat = Tensor({N, C}, dev);
    }
    // Recomputing, the 'linear' rect's weight gradient needs every sample's o: kept here until
    // the op returns.
    if (recompute && lin) o = Tensor({N, T, C}, dev);
    cpu::adashift_ma_backward(g, x.data(), dy.data(), ma_ptrs(p), bn.defined() ? &bk : nullptr,
                              data_or_null(sv.t), data_or_null(sv.attn), data_or_null(sv.o),
                              data_or_null(sv.z), sv.s.data(), sv.stats.data(), need_dx,
                              need_dx ? r.dx.data() : nullptr, dz.data(), prow.data(),
                              bn.defined() ? r.sum_dz.data() : nullptr,
                              bn.defined() ? r.sum_dz_xhat.data() : nullptr,
                              recompute ? data_or_null(o) : nullptr);
    Tensor sums = sum_rows(prow, N);  // [8 C], samples added in a fixed order
    Tensor* outs[8] = {&r.dq_w, &r.dq_b, &r.dk_w, &r.dk_b, &r.dv_w, &r.dv_b, &r.drect_w, &r.drect_b};
    for (int i = 0; i < 8; ++i) {
      *outs[i] = Tensor({C}, dev);
      std::copy(sums.data() + i * C, sums.data() + (i + 1) * C, outs[i]->data());
    }
  } else {
    const float scale = float(1.0 / std::sqrt(double(d)));
    const MAContext c = recompute ? ma_context_cuda(x, p, N, T, G, d) : MAContext{sv.t, sv.attn, sv.o, sv.z};
    o = c.o;
    Tensor ds = gate_backward_reduce(x, dy, sv.s, p.grid);
    LayerNormOut zl = layernorm_forward(c.z, p.rect_w, p.rect_b, p.eps);
    LayerNormGrad rg = layernorm_backward(ds, c.z, zl.mean, zl.rstd, p.rect_w);
    r.drect_w = rg.dweight;
    r.drect_b = rg.dbias;
    dz = rg.dx;
    Tensor dout = lin ? Tensor::view(matmul(Tensor::view(dz, {N * T, C}), p.lin_w, false, false), {N, T, C}) : dz;
    LayerNormOut ql = layernorm_forward(c.t, p.q_w, p.q_b, p.eps);
    LayerNormOut kl = layernorm_forward(c.t, p.k_w, p.k_b, p.eps);
    LayerNormOut vl = layernorm_forward(c.t, p.v_w, p.v_b, p.eps);
    Tensor q = ma_split(ql.y, N, T, G, d), k = ma_split(kl.y, N, T, G, d), v = ma_split(vl.y, N, T, G, d);
    Tensor a = Tensor::view(c.attn, {N * G, T, T});
    Tensor dos = ma_split(dout, N, T, G, d);
    Tensor da = matmul(dos, v, false, true);
    Tensor dv = ma_merge(matmul(a, dos, true, false), N, T, G, d);
    Tensor dsm = softmax_backward(a, da);
    Tensor dsc = axpby(scale, dsm, 0.0f, dsm);
    Tensor dq = ma_merge(matmul(dsc, k, false, false), N, T, G, d);
    Tensor dk = ma_merge(matmul(dsc, q, true, false), N, T, G, d);
    LayerNormGrad lq = layernorm_backward(dq, c.t, ql.mean, ql.rstd, p.q_w);
    LayerNormGrad lk = layernorm_backward(dk, c.t, kl.mean, kl.rstd, p.k_w);
    LayerNormGrad lv = layernorm_backward(dv, c.t, vl.mean, vl.rstd, p.v_w);
    r.dq_w = lq.dweight; r.dq_b = lq.dbias;
    r.dk_w = lk.dweight; r.dk_b = lk.dbias;
    r.dv_w = lv.dweight; r.dv_b = lv.dbias;
    if (need_dx) {
      Tensor dt = axpby(1.0f, axpby(1.0f, lq.dx, 1.0f, lk.dx), 1.0f, lv.dx);
      r.dx = gate_backward_apply(x, dy, sv.s, dt, p.grid);
    }
  }
  if (lin) r.dlin_w = matmul(Tensor::view(dz, {N * T, C}), Tensor::view(o, {N * T, C}), true, false);
  return r;
}

}  // namespace adashift

// CUDA parity check of AdaShift-B and AdaShift-MA as one op (adashift_b_* / adashift_ma_*, the
// latter also with a BatchNorm input): on
// CUDA each op is a sequence of whole-tensor ops (region pool, LayerNorm, matmul, softmax,
// permute, gate); on the CPU it runs sample by sample. Random awkward shapes (grids that do not
// divide H or W, P clamped to H/W, one and several heads, both rects, proj on and off, N = 1,
// empty inputs), inputs made on the CPU with adashift::rand and copied with adashift::to_device;
// every output compared with |gpu - cpu| <= atol_scale * max|cpu| + rtol * |cpu|; each GPU run
// twice, bit-identical.
//
//   int parity_adashift_ops();   // to be called from native/tests/cuda_check.cc
//
// Tolerances, and why: y, dx (1e-5 scale, 1e-4): the pooled means and shifts differ by float
//   rounding (different summation orders: per-block partials on the GPU, band column sums on
//   the CPU; float products in a different order in the attention), ~1e-6 relative; the gate
//   passes them through sigmoid with a derivative below 1. Saved t/attn/o/z/s (1e-5, 1e-4):
//   the same. Parameter gradients (1e-4 scale, 1e-3): sums over N*T*HW terms of differences
//   (LayerNorm backward, softmax backward), which cancel; the k.bias gradient is exactly zero
//   in exact arithmetic and is compared on the scale of the k.weight gradient.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>
#include "core/backend.h"
#include "parity_common.h"
#include "core/ops/adashift.h"
#include "core/ops/elementwise.h"
#include "ma_params.h"

namespace adashift {
namespace parity_adashift_detail {

const Device kCPU{DeviceType::CPU, 0};
const Device kGPU{DeviceType::CUDA, 0};
uint64_t g_seed = 777;
int g_failures = 0;

std::vector<float> host(const Tensor& t) {
  if (!t.defined()) return {};
  Tensor c = to_device(t, kCPU);
  return std::vector<float>(c.data(), c.data() + c.numel());
}
Tensor nrm(const std::vector<int64_t>& s, float mean, float std) {
  return rand(s, RandKind::Normal, mean, std, g_seed++, 0, kCPU);
}
Tensor rnd(const std::vector<int64_t>& s, float low, float high) {
  return rand(s, RandKind::Uniform, low, high, g_seed++, 0, kCPU);
}

void compare(const std::string& what, const Tensor& gpu, const Tensor& cpu, double atol_scale,
             double rtol, double scale_floor = 0.0) {
  std::vector<float> g = host(gpu), c = host(cpu);
  bool ok = g.size() == c.size();
  double scale = scale_floor, worst = 0.0;
  for (float v : c) scale = std::max(scale, double(std::fabs(v)));
  for (size_t i = 0; ok && i < c.size(); ++i) {
    const double d = std::fabs(double(g[i]) - double(c[i]));
    if (!std::isfinite(g[i]) || d > atol_scale * scale + rtol * std::fabs(double(c[i]))) ok = false;
    worst = std::max(worst, d);
  }
  std::printf("parity_adashift: %-58s %s (max |diff| %.3g, scale %.3g)\n", what.c_str(),
              ok ? "ok" : "FAIL", worst, scale);
  if (!ok) ++g_failures;
}

void same_bits(const std::string& what, const Tensor& a, const Tensor& b,
               const char* how = "two GPU runs, same bits") {
  std::vector<float> x = host(a), y = host(b);
  const bool ok = x.size() == y.size() &&
                  (x.empty() || std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0);
  std::printf("parity_adashift: %-58s %s\n", (what + " (" + how + ")").c_str(),
              ok ? "ok" : "FAIL");
  if (!ok) ++g_failures;
}

AdaShiftMAParams params_on(const AdaShiftMAParams& p, Device d) {
  AdaShiftMAParams q = p;
  for (Tensor* t : {&q.q_w, &q.q_b, &q.k_w, &q.k_b, &q.v_w, &q.v_b, &q.lin_w, &q.rect_w, &q.rect_b})
    if (t->defined()) *t = to_device(*t, d);
  return q;
}
AdaShiftMASaved saved_on(const AdaShiftMASaved& s, Device d) {
  // No statistics: CUDA's backward recomputes them (the CPU's are not carried over).
  return AdaShiftMASaved{to_device(s.t, d), to_device(s.attn, d), to_device(s.o, d),
                         to_device(s.z, d), to_device(s.s, d), Tensor()};
}

void run_case(int64_t N, int64_t C, int64_t H, int64_t W, int64_t grid, int64_t heads, bool lin) {
  char name[128];
  std::snprintf(name, sizeof name, "[%lld,%lld,%lld,%lld] P%lld G%lld %s", (long long)N,
                (long long)C, (long long)H, (long long)W, (long long)grid, (long long)heads,
                lin ? "linear" : "norm");
  AdaShiftMAParams p = random_ma_params(C, grid, heads, lin, nrm);
  Tensor x = nrm({N, C, H, W}, 0.0f, 1.5f), dy = nrm({N, C, H, W}, 0.0f, 1.0f);
  AdaShiftMAParams pg = params_on(p, kGPU);
  Tensor xg = to_device(x, kGPU), dyg = to_device(dy, kGPU);

  AdaShiftMAForward fc = adashift_ma_forward(x, p);
  AdaShiftMAForward fg = adashift_ma_forward(xg, pg);
  AdaShiftMAForward fg2 = adashift_ma_forward(xg, pg);
  const std::string n(name);
  compare(n + " y", fg.y, fc.y, 1e-5, 1e-4);
  compare(n + " t", fg.saved.t, fc.saved.t, 1e-5, 1e-4);
  compare(n + " attn", fg.saved.attn, fc.saved.attn, 1e-5, 1e-4);
  compare(n + " o", fg.saved.o, fc.saved.o, 1e-5, 1e-4);
  compare(n + " z", fg.saved.z, fc.saved.z, 1e-5, 1e-4);
  compare(n + " s", fg.saved.s, fc.saved.s, 1e-5, 1e-4);
  same_bits(n + " forward y", fg.y, fg2.y);

  // Backward from the same (CPU) saved tensors on both sides.
  AdaShiftMAGrad gc = adashift_ma_backward(x, dy, fc.saved, p, true);
  AdaShiftMASaved sg = saved_on(fc.saved, kGPU);
  AdaShiftMAGrad gg = adashift_ma_backward(xg, dyg, sg, pg, true);
  AdaShiftMAGrad gg2 = adashift_ma_backward(xg, dyg, sg, pg, true);
  compare(n + " dx", gg.dx, gc.dx, 1e-5, 1e-4);
  const Tensor* cs[] = {&gc.dq_w, &gc.dq_b, &gc.dk_w, &gc.dk_b, &gc.dv_w, &gc.dv_b, &gc.drect_w, &gc.drect_b, &gc.dlin_w};
  const Tensor* gs[] = {&gg.dq_w, &gg.dq_b, &gg.dk_w, &gg.dk_b, &gg.dv_w, &gg.dv_b, &gg.drect_w, &gg.drect_b, &gg.dlin_w};
  const Tensor* gs2[] = {&gg2.dq_w, &gg2.dq_b, &gg2.dk_w, &gg2.dk_b, &gg2.dv_w, &gg2.dv_b, &gg2.drect_w, &gg2.drect_b, &gg2.dlin_w};
  const char* names[] = {"dq.w", "dq.b", "dk.w", "dk.b", "dv.w", "dv.b", "drect.w", "drect.b", "dlin.w"};
  double kw_scale = 0.0;
  for (float v : host(gc.dk_w)) kw_scale = std::max(kw_scale, double(std::fabs(v)));
  for (int i = 0; i < 9; ++i) {
    if (!cs[i]->defined()) continue;
    compare(n + " " + names[i], *gs[i], *cs[i], 1e-4, 1e-3, i == 3 ? kw_scale : 0.0);
    same_bits(n + " " + names[i], *gs[i], *gs2[i]);
  }
  same_bits(n + " dx", gg.dx, gg2.dx);

  // Without keep_context: each backend's backward recomputes the context from x (CUDA's with its
  // own kernels) from the shift its forward kept; the CPU's gives its kept-context bits.
  {
    AdaShiftMAParams pl = p, pgl = pg;
    pl.keep_context = pgl.keep_context = false;
    AdaShiftMAForward lc = adashift_ma_forward(x, pl);
    AdaShiftMAForward lg = adashift_ma_forward(xg, pgl);
    AdaShiftMAGrad rc = adashift_ma_backward(x, dy, lc.saved, pl, true);
    AdaShiftMAGrad rg = adashift_ma_backward(xg, dyg, lg.saved, pgl, true);
    AdaShiftMAGrad kg = adashift_ma_backward(xg, dyg, fg.saved, pg, true);
    same_bits(n + " recompute: CPU dx as kept", rc.dx, gc.dx, "same bits");
    compare(n + " recompute: dx", rg.dx, rc.dx, 1e-5, 1e-4);
    same_bits(n + " recompute: GPU dx as kept", rg.dx, kg.dx, "same bits");
    const Tensor* rcs[] = {&rc.dq_w, &rc.dq_b, &rc.dk_w, &rc.dk_b, &rc.dv_w, &rc.dv_b, &rc.drect_w, &rc.drect_b, &rc.dlin_w};
    const Tensor* rgs[] = {&rg.dq_w, &rg.dq_b, &rg.dk_w, &rg.dk_b, &rg.dv_w, &rg.dv_b, &rg.drect_w, &rg.drect_b, &rg.dlin_w};
    const Tensor* kgs[] = {&kg.dq_w, &kg.dq_b, &kg.dk_w, &kg.dk_b, &kg.dv_w, &kg.dv_b, &kg.drect_w, &kg.drect_b, &kg.dlin_w};
    for (int i = 0; i < 9; ++i) {
      if (!cs[i]->defined()) continue;
      same_bits(n + " recompute: CPU " + names[i] + " as kept", *rcs[i], *cs[i], "same bits");
      compare(n + " recompute: " + names[i], *rgs[i], *rcs[i], 1e-4, 1e-3, i == 3 ? kw_scale : 0.0);
      same_bits(n + " recompute: GPU " + names[i] + " as kept", *rgs[i], *kgs[i], "same bits");
    }
  }

  // With a BatchNorm input (and a residual for the 'linear' cases): the GPU's BatchNorm pass
  // then the MA op against the CPU's per-sample layout, forward and backward (dz, its plane sums).
  MABatchNormInput bn;
  bn.mean = nrm({C}, 0.2f, 0.3f);
  bn.invstd = rnd({C}, 0.5f, 1.5f);
  bn.weight = nrm({C}, 1.0f, 0.3f);
  bn.bias = nrm({C}, 0.0f, 0.3f);
  if (lin) bn.residual = nrm({N, C, H, W}, 0.0f, 0.8f);
  MABatchNormInput bng{to_device(bn.mean, kGPU), to_device(bn.invstd, kGPU), to_device(bn.weight, kGPU),
                       to_device(bn.bias, kGPU), lin ? to_device(bn.residual, kGPU) : Tensor()};
  AdaShiftMAForward bc = adashift_ma_forward(x, p, bn);
  AdaShiftMAForward bg = adashift_ma_forward(xg, pg, bng);
  compare(n + " bn y", bg.y, bc.y, 1e-5, 1e-4);
  compare(n + " bn s", bg.saved.s, bc.saved.s, 1e-5, 1e-4);
  AdaShiftMAGrad hc = adashift_ma_backward(x, dy, bc.saved, p, false, bn);
  AdaShiftMAGrad hg = adashift_ma_backward(xg, dyg, saved_on(bc.saved, kGPU), pg, false, bng);
  compare(n + " bn dz", hg.dx, hc.dx, 1e-5, 1e-4);
  compare(n + " bn sum dz", hg.sum_dz, hc.sum_dz, 1e-4, 1e-3);
  compare(n + " bn sum dz xhat", hg.sum_dz_xhat, hc.sum_dz_xhat, 1e-4, 1e-3);
  compare(n + " bn drect.w", hg.drect_w, hc.drect_w, 1e-4, 1e-3);
}

void run_case_b(int64_t N, int64_t C, int64_t H, int64_t W, bool proj) {
  char name[128];
  std::snprintf(name, sizeof name, "B [%lld,%lld,%lld,%lld] %s", (long long)N, (long long)C,
                (long long)H, (long long)W, proj ? "proj" : "no proj");
  const std::string n(name);
  Tensor nw = nrm({C}, 1.0f, 0.3f), nb = nrm({C}, 0.0f, 0.3f);
  Tensor pw = proj ? nrm({C, C}, 0.0f, 0.3f) : Tensor(), pb = proj ? nrm({C}, 0.0f, 0.3f) : Tensor();
  Tensor x = nrm({N, C, H, W}, 0.0f, 1.5f), dy = nrm({N, C, H, W}, 0.0f, 1.0f);
  auto on = [](const Tensor& t) { return t.defined() ? to_device(t, kGPU) : Tensor(); };
  Tensor xg = on(x), dyg = on(dy), nwg = on(nw), nbg = on(nb), pwg = on(pw), pbg = on(pb);
  try {
    AdaShiftBForward fc = adashift_b_forward(x, pw, pb, nw, nb, 1e-6f);
    AdaShiftBForward fg = adashift_b_forward(xg, pwg, pbg, nwg, nbg, 1e-6f);
    AdaShiftBForward fg2 = adashift_b_forward(xg, pwg, pbg, nwg, nbg, 1e-6f);
    compare(n + " y", fg.y, fc.y, 1e-5, 1e-4);
    compare(n + " t", fg.saved.t, fc.saved.t, 1e-5, 1e-4);
    compare(n + " s", fg.saved.s, fc.saved.s, 1e-5, 1e-4);
    same_bits(n + " forward y", fg.y, fg2.y);
    // Backward from the same (CPU) saved tensors on both sides.
    const AdaShiftBSaved& sc = fc.saved;
    AdaShiftBSaved sg{on(sc.t), on(sc.u), on(sc.s), on(sc.mean), on(sc.rstd)};
    AdaShiftBGrad gc = adashift_b_backward(x, dy, sc, pw, nw, true);
    AdaShiftBGrad gg = adashift_b_backward(xg, dyg, sg, pwg, nwg, true);
    AdaShiftBGrad gg2 = adashift_b_backward(xg, dyg, sg, pwg, nwg, true);
    compare(n + " dx", gg.dx, gc.dx, 1e-5, 1e-4);
    same_bits(n + " dx", gg.dx, gg2.dx);
    const Tensor* cs[] = {&gc.dnorm_w, &gc.dnorm_b, &gc.dproj_w, &gc.dproj_b};
    const Tensor* gs[] = {&gg.dnorm_w, &gg.dnorm_b, &gg.dproj_w, &gg.dproj_b};
    const Tensor* gs2[] = {&gg2.dnorm_w, &gg2.dnorm_b, &gg2.dproj_w, &gg2.dproj_b};
    const char* names[] = {"dnorm.w", "dnorm.b", "dproj.w", "dproj.b"};
    for (int i = 0; i < 4; ++i) {
      if (!cs[i]->defined()) continue;
      compare(n + " " + names[i], *gs[i], *cs[i], 1e-4, 1e-3);
      same_bits(n + " " + names[i], *gs[i], *gs2[i]);
    }
    // The context network alone (as the fused BatchNorm + AdaShift-B op runs it), on the
    // pooled means.
    AdaShiftBContext kc = adashift_b_context_forward(sc.t, pw, pb, nw, nb, 1e-6f);
    AdaShiftBContext kg = adashift_b_context_forward(on(sc.t), pwg, pbg, nwg, nbg, 1e-6f);
    compare(n + " context s", kg.s, kc.s, 1e-5, 1e-4);
    compare(n + " context rstd", kg.rstd, kc.rstd, 1e-5, 1e-4);
    Tensor ds = nrm({N, 1, C}, 0.0f, 1.0f);
    AdaShiftBContextGrad dc = adashift_b_context_backward(ds, sc.t, kc, pw, nw, true);
    AdaShiftBContextGrad dg = adashift_b_context_backward(
        on(ds), on(sc.t), AdaShiftBContext{Tensor(), on(kc.u), on(kc.mean), on(kc.rstd)}, pwg, nwg, true);
    const Tensor* ccs[] = {&dc.dm, &dc.dnorm_w, &dc.dnorm_b, &dc.dproj_w, &dc.dproj_b};
    const Tensor* cgs[] = {&dg.dm, &dg.dnorm_w, &dg.dnorm_b, &dg.dproj_w, &dg.dproj_b};
    const char* cnames[] = {"context dm", "context dnorm.w", "context dnorm.b", "context dproj.w", "context dproj.b"};
    for (int i = 0; i < 5; ++i)
      if (ccs[i]->defined()) compare(n + " " + cnames[i], *cgs[i], *ccs[i], 1e-4, 1e-3);
  } catch (const std::exception& e) {
    std::printf("parity_adashift: %-58s FAIL (%s)\n", n.c_str(), e.what());
    ++g_failures;
  }
}

}  // namespace parity_adashift_detail
}  // namespace adashift

int parity_adashift_ops() {
  using namespace adashift;
  using namespace adashift::parity_adashift_detail;
  if (parity_skipped("parity_adashift")) return 0;
  g_failures = 0;
  run_case_b(1, 13, 9, 9, false);
  run_case_b(5, 8, 7, 7, true);
  run_case_b(2, 6, 1, 1, true);
  run_case_b(64, 128, 7, 7, false);  // more planes than one grid's worth of blocks
  run_case_b(2, 3, 0, 4, true);      // empty input, N * C > 0
  struct MA { int64_t N, C, H, W, grid, heads; bool lin; };
  for (const MA& c : {MA{2, 4, 0, 5, 3, 2, true},  // empty input, N * C > 0
                      MA{1, 16, 9, 9, 3, 2, false}, MA{3, 12, 10, 7, 4, 3, true},
                      MA{5, 8, 14, 14, 7, 1, true}, MA{2, 6, 1, 1, 7, 2, false},
                      MA{2, 64, 28, 28, 7, 1, false}, MA{1, 5, 13, 3, 5, 5, true}}) {
    try {
      run_case(c.N, c.C, c.H, c.W, c.grid, c.heads, c.lin);
    } catch (const std::exception& e) {
      std::printf("parity_adashift: MA [%lld,%lld,%lld,%lld] FAIL (%s)\n", (long long)c.N,
                  (long long)c.C, (long long)c.H, (long long)c.W, e.what());
      ++g_failures;
    }
  }
  return g_failures;
}

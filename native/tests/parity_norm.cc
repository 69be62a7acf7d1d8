// CUDA parity checks of the norm family: BatchNorm2d (+ fused ReLU / SiLU / AdaShift-B gate),
// pooling (max, average) and the fused cross-entropy. Every CUDA op runs on random awkward
// shapes against the CPU op through the Tensor-level API (inputs made on the CPU with
// adashift::rand, copied with adashift::to_device); every output element is compared with
// |gpu - cpu| <= atol_scale * max|cpu| + rtol * |cpu|; every op runs twice on the GPU and the
// results must be bit-identical. One line per check; returns the number of failures (0 and a
// SKIPPED line when CUDA is not usable).
//
//   int parity_norm();   // called from native/tests/cuda_check.cc
//
// Tolerances, and why:
//   exact (0, 0): max pooling values and indices, its backward (pure copies, and a sum of dy
//     terms added in the same ascending-output order on both sides), the correct count.
//   avg pooling (1e-7 scale, 1e-6): the same additions in the same order and an IEEE division
//     on both sides; a few ulp allowed for the compilers' instruction choices.
//   BN statistics, forward, plane sums, parameter gradients, dx (1e-5 scale, 1e-5 .. 1e-4):
//     the backends add the same terms in different orders (per-thread partials + block sums on
//     the GPU, 4096-element float chunks on the CPU; both the corrected two-pass method for the
//     variance); a float sum of n terms has a statistical rounding error of ~sqrt(n) * 2^-24
//     of its magnitude: for planes up to 224 x 224 (n/256 terms per thread) that stays below
//     ~1e-6 of the tensor's scale; 1e-5 leaves a margin of 10 while any indexing or formula
//     error is O(1). dx, dweight and dbias take rtol 1e-4: they are differences of such sums.
//     Where an output is a near-cancellation (plane_xhat with N = 1, dx with two elements per
//     channel) the scale is that of the cancelling terms (test_batchnorm): the results are then
//     rounding residues on both backends, and the tensor's own maximum is no measure of them.
//     nvcc also contracts a*b + c into FMAs where the host build may not (a few ulp).
//   cross-entropy (1e-6 scale, 1e-5): per-lane float sums of e^(x - max) and a warp tree on
//     the GPU, double sums on the CPU; the loss is a mean of row losses in double.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>
#include "core/backend.h"
#include "parity_common.h"
#include "core/ops/elementwise.h"
#include "core/ops/loss.h"
#include "core/ops/norm.h"
#include "core/ops/pool.h"
#ifdef ADASHIFT_WITH_CUDA
#include "core/cuda/runtime.h"
#endif

namespace adashift {
namespace parity_norm_detail {

const Device kCPU{DeviceType::CPU, 0};
const Device kGPU{DeviceType::CUDA, 0};

struct Tol {
  double atol_scale, rtol;
};
const Tol kExact{0.0, 0.0};
const Tol kAvg{1e-7, 1e-6};
const Tol kStat{1e-5, 1e-5};
const Tol kSum{1e-5, 1e-4};
const Tol kCE{1e-6, 1e-5};

int g_checks = 0, g_failures = 0;
uint64_t g_seed = 424242;

using Shape = std::vector<int64_t>;
using Outs = std::vector<Tensor>;
using OpFn = std::function<Outs(const Outs&, Device)>;

std::vector<float> host(const Tensor& t) {
  if (!t.defined()) return {};
  Tensor c = to_device(t, kCPU);
  return std::vector<float>(c.data(), c.data() + c.numel());
}
Tensor nrm(const Shape& s, float mean = 0.0f, float std = 1.0f) {
  return rand(s, RandKind::Normal, mean, std, g_seed++, 0, kCPU);
}
Tensor uni(const Shape& s, float lo, float hi) {
  return rand(s, RandKind::Uniform, lo, hi, g_seed++, 0, kCPU);
}
Tensor from_host(const Shape& s, const std::vector<float>& v) {
  Tensor t(s, kCPU);
  std::copy(v.begin(), v.end(), t.data());
  return t;
}

void report(const std::string& name, const std::string& desc, const std::vector<float>& g,
            const std::vector<float>& c, Tol tol, double scale_floor = 0.0) {
  ++g_checks;
  double scale = scale_floor;
  for (float v : c)
    if (std::isfinite(v)) scale = std::max(scale, double(std::fabs(v)));
  const double atol = tol.atol_scale * scale;
  double max_abs = 0.0, max_rel = 0.0;
  int64_t bad = 0, first = -1;
  bool ok = g.size() == c.size();
  for (size_t i = 0; ok && i < c.size(); ++i) {
    const double cv = c[i], gv = g[i];
    bool good;
    double d;
    if (!std::isfinite(cv)) {
      good = std::isnan(cv) ? std::isnan(gv) : gv == cv;
      d = good ? 0.0 : INFINITY;
    } else if (!std::isfinite(gv)) {
      good = false;
      d = INFINITY;
    } else {
      d = std::fabs(gv - cv);
      good = d <= atol + tol.rtol * std::fabs(cv);
    }
    max_abs = std::max(max_abs, d);
    if (std::fabs(cv) > atol) max_rel = std::max(max_rel, d / std::fabs(cv));
    if (!good) {
      if (first < 0) first = int64_t(i);
      ++bad;
    }
  }
  ok = ok && bad == 0;
  std::printf("%-34s %-40s n=%-9zu max_abs=%.2e max_rel=%.2e %s\n", name.c_str(), desc.c_str(),
              c.size(), max_abs, max_rel, ok ? "PASS" : "FAIL");
  if (!ok) {
    ++g_failures;
    if (g.size() != c.size())
      std::printf("    size mismatch: gpu %zu, cpu %zu\n", g.size(), c.size());
    else
      std::printf("    %lld bad elements; first at %lld: gpu %.9g cpu %.9g (scale %.3g)\n",
                  (long long)bad, (long long)first, double(g[size_t(first)]),
                  double(c[size_t(first)]), scale);
  }
}

void fail_line(const std::string& name, const std::string& desc, const std::string& why) {
  ++g_checks;
  ++g_failures;
  std::printf("%-34s %-40s FAIL (%s)\n", name.c_str(), desc.c_str(), why.c_str());
}

// Empties the CUDA cache and leaves NaN-filled blocks of the outputs' sizes in it: the op's
// outputs reuse them, so an element a kernel fails to write stays NaN and fails the check.
void poison(const std::vector<Shape>& shapes) {
#ifdef ADASHIFT_WITH_CUDA
  synchronize(kGPU);
  cuda_empty_cache(kGPU.index);
  std::vector<Tensor> held;
  for (const Shape& s : shapes) held.push_back(full(s, NAN, kGPU));
  synchronize(kGPU);
#else
  (void)shapes;
#endif
}

// Runs f on the CPU and twice on the GPU with the same inputs; compares every defined output.
// floors[k] (optional): the least scale of output k (see test_batchnorm).
void check(const std::string& op, const std::string& desc, const Outs& in_cpu, const OpFn& f,
           const std::vector<std::string>& names, const std::vector<Tol>& tols,
           const std::vector<double>& floors = {}) {
  try {
    Outs in_gpu;
    for (const Tensor& t : in_cpu) in_gpu.push_back(t.defined() ? to_device(t, kGPU) : Tensor());
    Outs ref = f(in_cpu, kCPU);
    std::vector<Shape> shapes;
    for (const Tensor& r : ref)
      if (r.defined()) shapes.push_back(r.shape());
    std::vector<std::vector<float>> runs[2];
    for (int rep = 0; rep < 2; ++rep) {
      poison(shapes);
      Outs out = f(in_gpu, kGPU);
      for (const Tensor& o : out) runs[rep].push_back(host(o));
    }
    bool same = runs[0].size() == runs[1].size();
    for (size_t k = 0; k < ref.size(); ++k) {
      if (!ref[k].defined()) continue;
      report(op + "." + names[k], desc, runs[0][k], host(ref[k]), tols[k],
             k < floors.size() ? floors[k] : 0.0);
      same = same && runs[0][k].size() == runs[1][k].size() &&
             std::memcmp(runs[0][k].data(), runs[1][k].data(), runs[0][k].size() * 4) == 0;
    }
    ++g_checks;
    if (!same) ++g_failures;
    std::printf("%-34s %-40s run twice: %s\n", (op + " determinism").c_str(), desc.c_str(),
                same ? "bit-identical PASS" : "results differ FAIL");
  } catch (const std::exception& e) {
    fail_line(op, desc, e.what());
  }
}

// ---- BatchNorm --------------------------------------------------------------------------------
void test_batchnorm() {
  const std::vector<Shape> shapes = {{2, 3, 5, 7},   {3, 17, 9, 9},   {1, 4, 1, 2},
                                     {5, 2, 1, 1},   {4, 16, 28, 28}, {64, 64, 7, 7},
                                     {3, 5, 3, 3},   {8, 64, 56, 56}, {2, 3, 224, 224},
                                     {1, 1000, 2, 2},
                                     // more planes than blocks: a block takes a second plane
                                     {128, 64, 3, 3}, {32, 64, 32, 32}};
  const char* act_names[] = {"none", "relu", "silu", "gate", "gelu", "gelu-tanh"};
  for (const Shape& shape : shapes) {
    const int64_t N = shape[0], C = shape[1];
    // per-channel offsets up to 50 std: the variance must not cancel
    std::vector<float> xv = host(nrm(shape, 0.0f, 1.5f));
    std::vector<float> off = host(nrm({C}, 0.0f, 20.0f));
    const int64_t hw = shape[2] * shape[3];
    for (int64_t i = 0; i < int64_t(xv.size()); ++i) xv[size_t(i)] += off[size_t((i / hw) % C)];
    Tensor x = from_host(shape, xv), dy = nrm(shape);
    Tensor w = nrm({C}, 1.0f, 0.4f), b = nrm({C}, 0.0f, 0.4f);
    Tensor rm = nrm({C}, 0.0f, 5.0f), rv = uni({C}, 0.5f, 3.0f);
    Tensor s = nrm({N, C}, 0.0f, 0.7f), dm = nrm({N, C});
    // a residual added before the activation (a ResNet block's shortcut), on a few shapes:
    // unaligned planes (odd H*W), the ResNet-20 shapes and more planes than blocks
    Tensor res = nrm(shape, 0.0f, 1.5f);
    const bool with_res = shape == Shape{2, 3, 5, 7} || shape == Shape{3, 17, 9, 9} ||
                          shape == Shape{4, 16, 28, 28} || shape == Shape{64, 64, 7, 7} ||
                          shape == Shape{128, 64, 3, 3};
    for (int training = 1; training >= 0; --training) {
      // Two outputs are small differences of large terms on some shapes, and their rounding
      // error follows the terms, not the result: plane_xhat = (plane mean - mean) * invstd is 0
      // up to rounding when a channel has one plane (N = 1), and dx = scale * (dz - k1 - xhat k2)
      // nearly cancels with two elements per channel. Their scale is at least the terms':
      // max |mean * invstd| and max |dy| * max |weight * invstd|.
      double px_floor = 0.0, dx_floor = 0.0;
      {
        Tensor rmc = clone(rm), rvc = clone(rv);
        BnStats st = batchnorm_stats(x, w, b, rmc, rvc, bool(training), 0.1f, 1e-5f, false);
        const std::vector<float> mv = host(st.mean), iv = host(st.invstd), wv = host(w);
        double dy_max = 0.0;
        for (float v : host(dy)) dy_max = std::max(dy_max, double(std::fabs(v)));
        for (int64_t c = 0; c < C; ++c) {
          px_floor = std::max(px_floor, std::fabs(double(mv[size_t(c)]) * iv[size_t(c)]));
          dx_floor = std::max(dx_floor, dy_max * std::fabs(double(wv[size_t(c)]) * iv[size_t(c)]));
        }
      }
      std::vector<double> floors(17, 0.0);
      floors[2] = px_floor;   // plane_xhat
      floors[12] = dx_floor;  // dx
      floors[15] = dx_floor;  // dx from the reduce pass's dz
      for (int a = 0; a < 6; ++a)
        for (int with_r = 0; with_r < (with_res ? 2 : 1); ++with_r) {
          const NormAct act = NormAct(a);
          const bool gate = act == NormAct::Gate;
          const std::string desc = shape_str(shape) + (training ? " train " : " eval ") +
                                   act_names[a] + (with_r ? " +residual" : "");
          check("batchnorm", desc, {x, dy, w, b, rm, rv, s, dm, res},
                [&](const Outs& in, Device dev) {
                  Tensor rmc = clone(in[4]), rvc = clone(in[5]);
                  Tensor r_in = with_r ? in[8] : Tensor();
                  BnStats st = batchnorm_stats(in[0], in[2], in[3], rmc, rvc, bool(training),
                                               0.1f, 1e-5f, gate, gate ? r_in : Tensor());
                  Tensor sg = gate ? in[6] : Tensor();
                  Tensor y =
                      batchnorm_act_forward(in[0], in[2], in[3], st.mean, st.invstd, act, sg, r_in);
                  BnReduce r = batchnorm_act_backward_reduce(in[0], in[1], in[2], in[3], st.mean,
                                                             st.invstd, act, sg, r_in, true);
                  Tensor dmg = gate ? in[7] : Tensor();
                  BnParamGrad pg = batchnorm_backward_params(r.sum_dz, r.sum_dz_xhat, dmg,
                                                             gate ? st.plane_xhat : Tensor());
                  BnApplyGrad g = batchnorm_act_backward_apply(
                      in[0], in[1], in[2], in[3], st.mean, st.invstd, act, sg, dmg, pg.dweight,
                      pg.dbias, bool(training), r_in);
                  // The apply pass from the reduce pass's direct gradient (act None, the
                  // pooled path's dm added per plane), as the CPU's SiLU and gate backward run.
                  BnApplyGrad g2 = batchnorm_act_backward_apply(
                      in[0], r.dz, in[2], in[3], st.mean, st.invstd, NormAct::None, Tensor(), dmg,
                      pg.dweight, pg.dbias, bool(training), r_in);
                  (void)dev;
                  return Outs{st.mean, st.invstd, st.plane_xhat, st.pooled, rmc,
                              rvc, y, r.sum_dz, r.sum_dz_xhat, r.ds,
                              pg.dweight, pg.dbias, g.dx, g.dresidual, r.dz,
                              g2.dx, g2.dresidual};
                },
                {"mean", "invstd", "plane_xhat", "pooled", "running_mean", "running_var", "y",
                 "sum_dz", "sum_dz_xhat", "ds", "dweight", "dbias", "dx", "dresidual", "dz",
                 "dx (from dz)", "dresidual (from dz)"},
                {kStat, kStat, kStat, kStat, kStat, kStat, kStat, kSum, kSum, kSum, kSum, kSum,
                 kSum, kSum, kSum, kSum, kSum},
                floors);
        }
    }
  }
}

// Training statistics when a plane's first element is far from its mean (1000 std): a single-
// pass shifted sum (shift = the first element) loses the variance to cancellation; both
// backends must give the two-pass result.
void test_batchnorm_outlier_first() {
  for (const Shape& shape : std::vector<Shape>{{4, 3, 64, 64}, {2, 2, 224, 224}}) {
    std::vector<float> xv = host(nrm(shape, 3.0f, 1.0f));
    const int64_t hw = shape[2] * shape[3];
    for (int64_t p = 0; p < shape[0] * shape[1]; ++p) xv[size_t(p * hw)] = 3.0f + 1000.0f;
    const int64_t C = shape[1];
    Tensor x = from_host(shape, xv), w = nrm({C}, 1.0f, 0.4f), b = nrm({C}, 0.0f, 0.4f);
    Tensor rm = nrm({C}, 0.0f, 1.0f), rv = uni({C}, 0.5f, 3.0f);
    check("batchnorm.outlier_first", shape_str(shape) + " train", {x, w, b, rm, rv},
          [&](const Outs& in, Device) {
            Tensor rmc = clone(in[3]), rvc = clone(in[4]);
            BnStats st = batchnorm_stats(in[0], in[1], in[2], rmc, rvc, true, 0.1f, 1e-5f, false);
            return Outs{st.mean, st.invstd, rmc, rvc};
          },
          {"mean", "invstd", "running_mean", "running_var"}, {kStat, kStat, kStat, kStat});
  }
}

// ---- pooling ----------------------------------------------------------------------------------
void test_pooling() {
  struct Win { int64_t kh, kw, sh, sw, ph, pw; };
  const std::vector<Win> wins = {{2, 2, 2, 2, 0, 0}, {3, 3, 2, 2, 1, 1}, {3, 3, 1, 1, 1, 1},
                                 {2, 3, 1, 2, 1, 1}, {1, 1, 1, 1, 0, 0}, {5, 5, 3, 3, 2, 2}};
  const std::vector<Shape> shapes = {{2, 3, 7, 7}, {1, 2, 28, 28}, {2, 3, 9, 12},
                                     {4, 16, 56, 56}, {1, 1, 5, 5}, {3, 5, 11, 6},
                                     {8, 64, 56, 56}};  // past one grid: a second pass
  for (const Shape& shape : shapes) {
    for (int ties = 0; ties < 2; ++ties) {
      Tensor x = ties ? uni(shape, 0.0f, 3.0f) : nrm(shape, 0.0f, 1.5f);
      if (ties) {  // small integers: many ties in every window
        std::vector<float> v = host(x);
        for (float& e : v) e = std::floor(e);
        x = from_host(shape, v);
      }
      for (const Win& k : wins) {
        Pool2d g;
        try {
          g = pool2d_geometry(shape, k.kh, k.kw, k.sh, k.sw, k.ph, k.pw, true, "parity");
        } catch (const std::exception&) {
          continue;  // the window does not fit this input
        }
        const Shape oshape = {g.N, g.C, g.Ho, g.Wo};
        Tensor dy = nrm(oshape);
        const std::string desc = shape_str(shape) + " k" + std::to_string(k.kh) + "x" +
                                 std::to_string(k.kw) + " s" + std::to_string(k.sh) + "x" +
                                 std::to_string(k.sw) + " p" + std::to_string(k.ph) + "x" +
                                 std::to_string(k.pw) + (ties ? " ties" : "");
        check("max_pool2d", desc, {x, dy},
              [&](const Outs& in, Device) {
                MaxPoolOut o = max_pool2d_forward(in[0], k.kh, k.kw, k.sh, k.sw, k.ph, k.pw);
                Tensor dx = max_pool2d_backward(in[1], o.indices, shape, k.kh, k.kw, k.sh, k.sw,
                                                k.ph, k.pw);
                return Outs{o.y, o.indices, dx};
              },
              {"y", "indices", "dx"}, {kExact, kExact, kExact});
        if (ties) continue;
        for (int cip = 0; cip < 2; ++cip) {
          check("avg_pool2d", desc + (cip ? " incl-pad" : " excl-pad"), {x, dy},
                [&](const Outs& in, Device) {
                  Tensor y = avg_pool2d_forward(in[0], k.kh, k.kw, k.sh, k.sw, k.ph, k.pw, cip);
                  Tensor dx = avg_pool2d_backward(in[1], shape, k.kh, k.kw, k.sh, k.sw, k.ph,
                                                  k.pw, cip);
                  return Outs{y, dx};
                },
                {"y", "dx"}, {kAvg, kAvg});
        }
      }
    }
  }
}

// ---- cross-entropy ----------------------------------------------------------------------------
void test_cross_entropy() {
  const std::vector<std::pair<int64_t, int64_t>> dims = {
      {1, 10}, {8, 10}, {33, 7}, {256, 10}, {3, 1}, {5, 33}, {4096, 1000}, {100000, 10}};
  for (const auto& nk : dims) {
    const int64_t N = nk.first, K = nk.second;
    Tensor logits = nrm({N, K}, 0.0f, 3.0f);
    std::vector<float> lab = host(uni({N}, 0.0f, float(K)));
    for (float& v : lab) v = std::min(std::floor(v), float(K - 1));
    Tensor labels = from_host({N}, lab), grad = uni({1}, 0.5f, 2.0f);
    for (float eps : {0.0f, 0.1f}) {
      const std::string desc = shape_str({N, K}) + " smoothing " + (eps > 0 ? "0.1" : "0");
      check("cross_entropy", desc, {logits, labels, grad},
            [&](const Outs& in, Device) {
              CrossEntropyOut o = cross_entropy_forward(in[0], in[1], eps);
              Tensor dl = cross_entropy_backward(in[0], in[1], o.lse, in[2], eps);
              return Outs{o.loss, o.lse, o.correct, dl};
            },
            {"loss", "lse", "correct", "dlogits"}, {kCE, kCE, kExact, kCE});
    }
  }
  // A label outside [0, K) (the GPU path is not validated natively): NaN, no out-of-bounds read.
  try {
    Tensor logits = to_device(nrm({4, 5}), kGPU);
    Tensor labels = to_device(from_host({4}, {0.0f, 7.0f, 2.0f, 1.0f}), kGPU);
    CrossEntropyOut o = cross_entropy_forward(logits, labels, 0.0f);
    std::vector<float> l = host(o.loss);
    ++g_checks;
    const bool ok = std::isnan(l[0]);
    if (!ok) ++g_failures;
    std::printf("%-34s %-40s loss=%g %s\n", "cross_entropy.bad_label", "[4, 5] label 7",
                double(l[0]), ok ? "NaN PASS" : "FAIL");
  } catch (const std::exception& e) {
    fail_line("cross_entropy.bad_label", "[4, 5] label 7", e.what());
  }
  // NaN logits and exact ties, placed so that the warp's lanes meet them in their merge: the
  // accuracy count follows one arg-max rule on both backends (math::argmax_takes: NaN is the
  // largest value, ties go to the smaller index). Each row's label is its arg-max: 6 of 6.
  try {
    const int64_t N = 6, K = 40;
    std::vector<float> v(size_t(N * K), 0.0f);
    auto at = [&](int64_t i, int64_t k) -> float& { return v[size_t(i * K + k)]; };
    at(0, 8) = NAN;  at(0, 24) = 5.0f;  // NaN in lane 8, the largest number in lane 24
    at(1, 3) = NAN;  at(1, 30) = NAN;   // the first NaN
    at(2, 37) = 2.0f; at(2, 5) = 2.0f;  // a tie within lane 5 (columns 5 and 37)
    at(3, 33) = 1.0f; at(3, 2) = 1.0f;  // a tie across lanes 1 and 2
    at(4, 39) = NAN;                    // NaN in the last column
    const Tensor logits = from_host({N, K}, v), labels = from_host({N}, {8, 3, 5, 2, 39, 0});
    const float cpu = host(cross_entropy_forward(logits, labels, 0.0f).correct)[0];
    const float gpu = host(cross_entropy_forward(to_device(logits, kGPU), to_device(labels, kGPU), 0.0f).correct)[0];
    ++g_checks;
    const bool ok = cpu == 6.0f && gpu == 6.0f;
    if (!ok) ++g_failures;
    std::printf("%-34s %-40s correct cpu %g gpu %g %s\n", "cross_entropy.argmax_rule",
                "[6, 40] NaN and ties", double(cpu), double(gpu), ok ? "PASS" : "FAIL");
  } catch (const std::exception& e) {
    fail_line("cross_entropy.argmax_rule", "[6, 40] NaN and ties", e.what());
  }
}

}  // namespace parity_norm_detail

}  // namespace adashift

int parity_norm() {
  using namespace adashift;
  using namespace adashift::parity_norm_detail;
  if (parity_skipped("parity_norm")) return 0;
  g_checks = 0;
  g_failures = 0;
  test_batchnorm();
  test_batchnorm_outlier_first();
  test_pooling();
  test_cross_entropy();
  std::printf("parity_norm: %d checks, %d failures\n", g_checks, g_failures);
  return g_failures;
}

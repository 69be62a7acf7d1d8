// CUDA parity of the conv family: conv2d_forward and conv2d_backward (dx, dw, db) on CUDA
// against the CPU op, through the Tensor-level API, on random awkward shapes (odd channel
// counts, non-square inputs and kernels, strides and paddings, a 1x1 pointwise conv, one big
// enough to run in two sample chunks), plus timings of the ResNet-20 shapes. Called from
// native/tests/cuda_check.cc; returns the number of failed checks.
//
// Poisoning: before each CUDA run the CUDA cache is emptied and NaN-filled blocks of the output
// sizes are left in it, so an output element a kernel fails to write stays NaN and fails.
//
// Tolerance, per element: |gpu - cpu| <= 1e-6 + 1e-5 |cpu| + (4 sqrt(n) + 4) 2^-24 S, where n
// is the number of products summed into the element and S the sum of their magnitudes,
// computed exactly as the same op on |inputs| on the CPU (conv of |x| with |w| for y, the
// backward of |dy| for dx and dw, the sum of |dy| for db). Both sides add the same products in
// different groupings (the CPU in blocks of 256 with FMAs, the GPU one FMA chain, then dw over
// samples in double), so they differ by float rounding of an n-term sum: about sqrt(n) u S
// statistically; the factor 4 is the margin, and any indexing error is O(S).
// Determinism: every output of the CUDA backward and forward is computed twice from the same
// inputs and must be bit-identical (no atomics; fixed reduction orders).
//
// TF32 (set_conv_allow_tf32): the cases run again with the tensor-core products, whose operands
// are rounded to a 10-bit mantissa (relative error at most 2^-11 each), so each product is off by
// at most 2^-10 of its magnitude: the bound above gains 2^-10 S. An indexing error is still O(S).
// A smaller scratch budget then makes the chunks of samples hold two, so that the weight
// gradient's later chunks (added to the first) and dX's run on the tensor cores too.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>
#include "core/backend.h"
#include "parity_common.h"
#include "core/ops/conv.h"
#include "core/ops/elementwise.h"
#include "cuda_emu_mode.h"
#ifdef ADASHIFT_WITH_CUDA
#include "core/cuda/runtime.h"
#endif

using namespace adashift;

namespace {
namespace conv_parity {

const Device kCPU{DeviceType::CPU, 0};
const Device kGPU{DeviceType::CUDA, 0};
constexpr double kU = 5.9604644775390625e-08;  // 2^-24

struct Case {
  const char* name;
  int64_t N, Cin, Cout, H, W, kh, kw;
  int sh, sw, ph, pw;
  bool bias;
};

struct Parity {
  int checks = 0, failures = 0;
  uint64_t seed = 99001;
  bool tf32 = false;  // the tolerance of TF32 products (the mode itself is the op's setting)

  std::vector<float> host(const Tensor& t) {
    if (!t.defined()) return {};
    Tensor c = to_device(t, kCPU);
    return std::vector<float>(c.data(), c.data() + c.numel());
  }
  Tensor nrm(const std::vector<int64_t>& s) {
    return rand(s, RandKind::Normal, 0.0f, 1.0f, seed++, 0, kCPU);
  }
  Tensor abs_of(const Tensor& t) {
    Tensor o(t.shape(), kCPU);
    for (int64_t i = 0; i < t.numel(); ++i) o.data()[i] = std::fabs(t.data()[i]);
    return o;
  }

  void poison(const std::vector<std::vector<int64_t>>& shapes) {
#ifdef ADASHIFT_WITH_CUDA
    synchronize(kGPU);
    cuda_empty_cache(kGPU.index);
    std::vector<Tensor> held;
    for (const auto& s : shapes) held.push_back(full(s, NAN, kGPU));
    synchronize(kGPU);
#else
    (void)shapes;
#endif
  }

  void compare(const std::string& what, const std::string& desc, const Tensor& gpu,
               const Tensor& cpu, const Tensor& mag, double terms) {
    ++checks;
    std::vector<float> g = host(gpu), c = host(cpu), m = host(mag);
    bool ok = g.size() == c.size() && m.size() == c.size();
    double max_abs = 0.0, max_rel = 0.0, err2 = 0.0, ref2 = 0.0;
    int64_t bad = 0, first = -1;
    const double stat = (4.0 * std::sqrt(terms) + 4.0) * kU + (tf32 ? 1.0 / 1024.0 : 0.0);
    for (size_t i = 0; ok && i < c.size(); ++i) {
      const double d = std::fabs(double(g[i]) - double(c[i]));
      const double lim = 1e-6 + 1e-5 * std::fabs(double(c[i])) + stat * double(m[i]);
      const bool good = std::isfinite(g[i]) && std::isfinite(c[i]) && d <= lim;
      max_abs = std::max(max_abs, std::isfinite(d) ? d : INFINITY);
      max_rel = std::max(max_rel, d / std::max(std::fabs(double(c[i])), 1e-6));
      err2 += d * d;
      ref2 += double(c[i]) * double(c[i]);
      if (!good) {
        if (first < 0) first = int64_t(i);
        ++bad;
      }
    }
    // ||gpu - cpu|| / ||cpu||: float32 lands far under 1e-5 here, TF32 near 3e-4 on random data;
    // over 2e-3 means the products lost more than TF32's rounding (e.g. operands truncated).
    const double rel_l2 = ref2 > 0.0 ? std::sqrt(err2 / ref2) : std::sqrt(err2);
    const bool l2_ok = !tf32 || !(rel_l2 > 2e-3);
    ok = ok && bad == 0 && l2_ok;
    std::printf("%-22s %-44s n=%-9zu max_abs=%.2e max_rel=%.2e rel_l2=%.1e %s\n", what.c_str(),
                desc.c_str(), c.size(), max_abs, max_rel, rel_l2, ok ? "PASS" : "FAIL");
    if (!ok) {
      ++failures;
      if (!l2_ok) std::printf("    relative L2 error %.2e over TF32's 2e-3\n", rel_l2);
      if (g.size() != c.size())
        std::printf("    size mismatch: gpu %zu, cpu %zu\n", g.size(), c.size());
      else if (first >= 0)
        std::printf("    %lld bad elements; first at %lld: gpu %.9g cpu %.9g\n", (long long)bad,
                    (long long)first, double(g[size_t(first)]), double(c[size_t(first)]));
    }
  }

  void same_bits(const std::string& what, const std::string& desc,
                 const std::vector<Tensor>& a, const std::vector<Tensor>& b) {
    ++checks;
    bool same = a.size() == b.size();
    for (size_t k = 0; same && k < a.size(); ++k) {
      std::vector<float> x = host(a[k]), y = host(b[k]);
      same = x.size() == y.size() && std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0;
    }
    if (!same) ++failures;
    std::printf("%-22s %-44s %s\n", what.c_str(), desc.c_str(),
                same ? "bit-identical PASS" : "results differ FAIL");
  }

  void run(const Case& c) {
    char desc[160];
    std::snprintf(desc, sizeof desc, "%s%s N%lld %lld->%lld %lldx%lld k%lldx%lld s%d,%d p%d,%d%s",
                  tf32 ? "tf32 " : "", c.name, (long long)c.N, (long long)c.Cin, (long long)c.Cout, (long long)c.H,
                  (long long)c.W, (long long)c.kh, (long long)c.kw, c.sh, c.sw, c.ph, c.pw,
                  c.bias ? " +b" : "");
    try {
      Tensor x = nrm({c.N, c.Cin, c.H, c.W}), w = nrm({c.Cout, c.Cin, c.kh, c.kw});
      Tensor b = c.bias ? nrm({c.Cout}) : Tensor();
      Tensor y = conv2d_forward(x, w, b, c.sh, c.sw, c.ph, c.pw);
      Tensor dy = nrm(y.shape());
      Conv2dGrad g = conv2d_backward(dy, x, w, c.sh, c.sw, c.ph, c.pw, true, true, c.bias);
      // magnitudes: the same ops on |inputs| (bias magnitude added to y's)
      Tensor ax = abs_of(x), aw = abs_of(w), ady = abs_of(dy);
      Tensor my = conv2d_forward(ax, aw, c.bias ? abs_of(b) : Tensor(), c.sh, c.sw, c.ph, c.pw);
      Conv2dGrad mg = conv2d_backward(ady, ax, aw, c.sh, c.sw, c.ph, c.pw, true, true, c.bias);

      Tensor gx = to_device(x, kGPU), gw = to_device(w, kGPU), gdy = to_device(dy, kGPU);
      Tensor gb = c.bias ? to_device(b, kGPU) : Tensor();
      poison({y.shape()});
      Tensor gy = conv2d_forward(gx, gw, gb, c.sh, c.sw, c.ph, c.pw);
      std::vector<std::vector<int64_t>> gshapes = {x.shape(), w.shape()};
      if (c.bias) gshapes.push_back({c.Cout});
      poison(gshapes);
      Conv2dGrad gg = conv2d_backward(gdy, gx, gw, c.sh, c.sw, c.ph, c.pw, true, true, c.bias);

      const double P = double(y.size(2) * y.size(3));
      compare("conv2d.y", desc, gy, y, my, double(c.Cin * c.kh * c.kw) + (c.bias ? 1 : 0));
      compare("conv2d.dx", desc, gg.dx, g.dx, mg.dx, double(c.Cout * c.kh * c.kw));
      compare("conv2d.dw", desc, gg.dw, g.dw, mg.dw, double(c.N) * P);
      if (c.bias) compare("conv2d.db", desc, gg.db, g.db, mg.db, double(c.N) * P);

      // One gradient asked for at a time: the others stay undefined, the asked one has the
      // bits of the full backward's.
      for (int which = 0; which < (c.bias ? 3 : 2); ++which) {
        const char* names[] = {"dx", "dw", "db"};
        Conv2dGrad one = conv2d_backward(gdy, gx, gw, c.sh, c.sw, c.ph, c.pw, which == 0, which == 1, which == 2);
        const Tensor* got[] = {&one.dx, &one.dw, &one.db};
        const Tensor* full_run[] = {&gg.dx, &gg.dw, &gg.db};
        ++checks;
        bool ok = true;
        for (int k = 0; k < 3; ++k) ok = ok && got[k]->defined() == (k == which);
        if (!ok) ++failures;
        const std::string what = std::string("conv2d.") + names[which] + " only";
        std::printf("%-22s %-44s %s\n", what.c_str(), desc, ok ? "PASS" : "FAIL");
        if (ok) same_bits(what, desc, {*got[which]}, {*full_run[which]});
      }

      // A gradient folded into dx: the bits of the separate add on the device.
      {
        Tensor gadd = to_device(nrm(x.shape()), kGPU);
        poison({x.shape()});
        Conv2dGrad fold = conv2d_backward(gdy, gx, gw, c.sh, c.sw, c.ph, c.pw, true, false, false, gadd);
        same_bits("conv2d.dx + dx_add", desc, {fold.dx}, {binary(Binary::Add, gg.dx, gadd)});
      }

      poison({y.shape()});
      Tensor gy2 = conv2d_forward(gx, gw, gb, c.sh, c.sw, c.ph, c.pw);
      poison(gshapes);
      Conv2dGrad gg2 = conv2d_backward(gdy, gx, gw, c.sh, c.sw, c.ph, c.pw, true, true, c.bias);
      std::vector<Tensor> first = {gy, gg.dx, gg.dw}, second = {gy2, gg2.dx, gg2.dw};
      if (c.bias) {
        first.push_back(gg.db);
        second.push_back(gg2.db);
      }
      same_bits("conv2d determinism", desc, first, second);
    } catch (const std::exception& e) {
      ++checks;
      ++failures;
      std::printf("%-22s %-44s FAIL (%s)\n", "conv2d", desc, e.what());
    }
  }

  // The folded float32 kernel (set_conv_f32_kernel(1)) gives the bits of the default one.
  void folded_same_bits(const Case& c) {
    char desc[160];
    std::snprintf(desc, sizeof desc, "%s N%lld %lld->%lld", c.name, (long long)c.N,
                  (long long)c.Cin, (long long)c.Cout);
    try {
      Tensor gx = to_device(nrm({c.N, c.Cin, c.H, c.W}), kGPU);
      Tensor gw = to_device(nrm({c.Cout, c.Cin, c.kh, c.kw}), kGPU);
      Tensor gb = c.bias ? to_device(nrm({c.Cout}), kGPU) : Tensor();
      std::vector<Tensor> out[2];
      for (int k = 0; k < 2; ++k) {
        cuda::set_conv_f32_kernel(k);
        Tensor y = conv2d_forward(gx, gw, gb, c.sh, c.sw, c.ph, c.pw);
        Tensor gdy = to_device(rand(y.shape(), RandKind::Normal, 0.0f, 1.0f, 4242, 0, kCPU), kGPU);
        Conv2dGrad g = conv2d_backward(gdy, gx, gw, c.sh, c.sw, c.ph, c.pw, true, true, c.bias);
        out[k] = {y, g.dx, g.dw};
      }
      cuda::set_conv_f32_kernel(0);
      same_bits("conv2d folded fp32", desc, out[1], out[0]);
    } catch (const std::exception& e) {
      cuda::set_conv_f32_kernel(0);
      ++checks;
      ++failures;
      std::printf("%-22s %-44s FAIL (%s)\n", "conv2d folded fp32", desc, e.what());
    }
  }

  // Median of 5 timed runs after a warm-up; host clock around a device synchronise.
  template <typename F>
  double time_ms(F f) {
    f();
    synchronize(kGPU);
    std::vector<double> t;
    for (int r = 0; r < 5; ++r) {
      auto t0 = std::chrono::steady_clock::now();
      f();
      synchronize(kGPU);
      const auto t1 = std::chrono::steady_clock::now();
      t.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
    }
    std::sort(t.begin(), t.end());
    return t[2];
  }

  // ResNet-20's 3x3 convolutions at batch 64 and ResNet-50's (224x224 input) at batch 128, in
  // float32 and then TF32 (each kernel variant): forward, and the backward's dX and dW together.
  void timings() {
    struct S { const char* name; int64_t N, Cin, Cout, H, k; };
    const S shapes[] = {
        {"r20 3x3 16ch 28x28", 64, 16, 16, 28, 3},    {"r20 3x3 32ch 14x14", 64, 32, 32, 14, 3},
        {"r20 3x3 64ch 7x7", 64, 64, 64, 7, 3},       {"r50 3x3 64ch 56x56", 128, 64, 64, 56, 3},
        {"r50 3x3 128ch 28x28", 128, 128, 128, 28, 3}, {"r50 3x3 256ch 14x14", 128, 256, 256, 14, 3},
        {"r50 3x3 512ch 7x7", 128, 512, 512, 7, 3},   {"r50 1x1 256->64 56x56", 128, 256, 64, 56, 1},
        {"r50 1x1 1024->256 14x14", 128, 1024, 256, 14, 1}};
    // float32 with the per-sample and the folded kernel, then TF32 with each kernel variant
    for (int mode = -2; mode < cuda::conv_tf32_variants(); ++mode) {
      set_conv_allow_tf32(mode >= 0);
      if (mode >= 0) cuda::set_conv_tf32_variant(mode);
      cuda::set_conv_f32_kernel(mode == -1 ? 1 : 0);
      char tag[16];
      if (mode < 0) std::snprintf(tag, sizeof tag, "fp32/%d", mode + 2);
      else std::snprintf(tag, sizeof tag, "tf32/%d", mode);
      for (const S& s : shapes) {
        try {
          const int pad = int(s.k / 2);
          Tensor x = to_device(nrm({s.N, s.Cin, s.H, s.H}), kGPU);
          Tensor w = to_device(nrm({s.Cout, s.Cin, s.k, s.k}), kGPU);
          Tensor dy = to_device(nrm({s.N, s.Cout, s.H, s.H}), kGPU);
          const double flops = 2.0 * s.N * s.Cout * s.H * s.H * s.Cin * s.k * s.k;
          const double f = time_ms([&] { conv2d_forward(x, w, Tensor(), 1, 1, pad, pad); });
          const double b =
              time_ms([&] { conv2d_backward(dy, x, w, 1, 1, pad, pad, true, true, false); });
          std::printf("time conv2d %-7s batch %-3lld %-24s fwd %8.3f ms (%6.0f GFLOP/s)  "
                      "bwd dx+dw %8.3f ms (%6.0f GFLOP/s)\n",
                      tag, (long long)s.N, s.name, f, flops / f / 1e6, b, 2 * flops / b / 1e6);
        } catch (const std::exception& e) {
          std::printf("time conv2d %s %s: failed (%s)\n", tag, s.name, e.what());
        }
      }
    }
    set_conv_allow_tf32(false);
    cuda::set_conv_tf32_variant(0);
    cuda::set_conv_f32_kernel(0);
  }
};

}  // namespace conv_parity
}  // namespace

int parity_conv() {
  if (parity_skipped("parity_conv")) return 0;
  using conv_parity::Case;
  conv_parity::Parity t;
  const Case cases[] = {
      {"3x3 same", 3, 17, 5, 13, 11, 3, 3, 1, 1, 1, 1, true},
      {"7x7 stem", 2, 3, 33, 29, 31, 7, 7, 2, 2, 3, 3, false},
      {"resnet-like", 5, 64, 64, 7, 7, 3, 3, 1, 1, 1, 1, true},
      {"1x1 pointwise", 4, 20, 130, 9, 9, 1, 1, 1, 1, 0, 0, true},
      {"1x1 strided", 3, 20, 9, 9, 10, 1, 1, 2, 2, 0, 0, false},
      {"wide K (128x128 tile)", 2, 150, 7, 12, 12, 3, 3, 1, 1, 1, 1, true},
      {"3x1 mixed", 3, 8, 40, 10, 14, 3, 1, 2, 1, 1, 0, true},
      {"one pixel", 1, 5, 3, 1, 1, 3, 3, 2, 2, 1, 1, true},
      {"pad > kernel reach", 2, 3, 17, 5, 5, 3, 3, 1, 1, 3, 3, false},
      {"two sample chunks", 20, 64, 8, 56, 56, 3, 3, 1, 1, 1, 1, true},
      {"128x128 tile fwd and dw", 2, 15, 130, 12, 12, 3, 3, 1, 1, 1, 1, true},
      {"tiny pointwise", 2, 7, 5, 6, 6, 1, 1, 1, 1, 0, 0, true},
      // Cout x K = 9.4M weights: the dW partials limit a chunk to 3 samples (columns alone: 8)
      {"dW chunks by partials", 8, 1024, 1024, 1, 1, 3, 3, 1, 1, 1, 1, false},
      {"empty batch", 0, 3, 4, 5, 5, 3, 3, 1, 1, 1, 1, true},
  };
  for (const Case& c : cases) t.run(c);
  // The 1024-channel case is left to a GPU in the TF32 and folded passes: on the emulation its
  // weight gradient alone would take minutes.
  auto affordable = [](const Case& c) { return !(cuda_emulated() && c.Cin >= 1024); };
  // The folded float32 kernel: the same bits as the default on every case with a product of 64
  // or more rows (forward with 64+ output channels, dX with 64+ rows of taps).
  std::printf("parity_conv: the folded float32 kernel\n");
  for (const Case& c : cases)
    if (affordable(c)) t.folded_same_bits(c);
  // The same on the tensor cores (the cases with a product of 64 or more rows use them), then
  // with chunks of two samples.
  const Case tf32_cases[] = {
      {"strided, 72 rows", 3, 70, 72, 11, 13, 3, 3, 2, 2, 1, 1, true},
      {"pointwise, 80 rows", 5, 96, 80, 7, 5, 1, 1, 1, 1, 0, 0, false},
      {"two row tiles", 2, 40, 200, 9, 6, 3, 3, 1, 1, 1, 1, true},
      // depth 2 (one k-step, mostly zero padding); 437 pixels per sample (column tiles that
      // straddle samples, dW over 14 k-steps per sample)
      {"depth 2", 3, 2, 70, 5, 7, 1, 1, 1, 1, 0, 0, true},
      {"wide maps", 2, 8, 64, 23, 19, 3, 3, 1, 1, 1, 1, false},
  };
  set_conv_allow_tf32(true);
  t.tf32 = true;
  for (const Case& c : cases)
    if (affordable(c)) t.run(c);
  // Every kernel variant (k-step, register budget) on the TF32 cases; the default last.
  for (int v = cuda::conv_tf32_variants() - 1; v >= 0; --v) {
    cuda::set_conv_tf32_variant(v);
    std::printf("parity_conv: TF32 kernel variant %d\n", v);
    for (const Case& c : tf32_cases) t.run(c);
    const int64_t budget = cuda::conv_scratch_floats();
    cuda::set_conv_scratch_floats(2 * 64 * 9 * 49);  // "resnet-like": chunks of 2, 2 and 1
    t.run(cases[2]);
    cuda::set_conv_scratch_floats(2 * 70 * 9 * 42);  // "strided, 72 rows": chunks of 2 and 1
    t.run(tf32_cases[0]);
    cuda::set_conv_scratch_floats(budget);
  }
  set_conv_allow_tf32(false);
  t.tf32 = false;
  if (!cuda_emulated()) t.timings();  // timings mean nothing on the CPU emulation
  std::printf("parity_conv: %d checks, %d failures\n", t.checks, t.failures);
  return t.failures;
}

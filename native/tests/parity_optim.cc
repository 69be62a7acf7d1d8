// CUDA parity of the optim family: every CUDA update (sgd_step in each mode, adamw_step,
// lamb_grad_clip, lamb_step with and without adaptation, decoupled decay, trust clipping) runs
// on the same random inputs as the CPU update, through the Tensor-level API, and every element
// of every written tensor (parameter and state buffers) is compared. Called from
// native/tests/cuda_check.cc; returns the number of failed checks.
//
// Writes are in place, so an element a kernel fails to update keeps its old value; every update
// here changes every element by far more than the tolerance (lr 0.05..0.1, random gradients),
// so a skipped element fails the comparison.
//
// Tolerances (|gpu - cpu| <= atol + rtol |cpu|):
//   element-wise updates: atol 1e-6, rtol 1e-5. Both sides evaluate the same formulas from
//     ops/optim.h (sqrtf and division are correctly rounded on both), but nvcc contracts
//     a*b + c into FMAs where the host build may round twice, so results differ by a few ulp of
//     the operands (values are O(1): ~1e-7); 1e-5 leaves a wide margin while an indexing or
//     formula error shows up as O(lr).
//   lamb_grad_clip: both sides sum squares in double (different orders: ~1e-16 relative) and
//     round once to float: atol 0, rtol 1e-6.
//   lamb_step with adaptation: the norms are double sums rounded to float (equal or 1 ulp
//     apart), the trust ratio inherits ~1e-7 relative: within the element-wise tolerance.
// Determinism: lamb_grad_clip and the adaptive lamb_step (their reductions) run twice on CUDA
// from identical inputs and must give bit-identical results.
// Timing: one line per fused update on 2^24 elements (median of 5 after a warm-up; host clock
// around a device synchronise), with GB/s from the bytes each pass moves (ops/optim.h).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>
#include "core/backend.h"
#include "parity_common.h"
#include "core/ops/elementwise.h"
#include "core/ops/optim.h"
#include "cuda_emu_mode.h"

using namespace adashift;

namespace {

const Device kOptCPU{DeviceType::CPU, 0};
const Device kOptGPU{DeviceType::CUDA, 0};

struct OptTol {
  double atol, rtol;
};
const OptTol kOptEw{1e-6, 1e-5};
const OptTol kOptSum{0.0, 1e-6};

struct OptimParity {
  int checks = 0, failures = 0;
  uint64_t seed = 77001;

  std::vector<float> host(const Tensor& t) {
    Tensor c = to_device(t, kOptCPU);
    return std::vector<float>(c.data(), c.data() + c.numel());
  }
  Tensor uni(const std::vector<int64_t>& s, float lo, float hi) {
    return rand(s, RandKind::Uniform, lo, hi, seed++, 0, kOptCPU);
  }
  Tensor nrm(const std::vector<int64_t>& s, float std) {
    return rand(s, RandKind::Normal, 0.0f, std, seed++, 0, kOptCPU);
  }

  bool compare(const std::string& name, const std::string& desc, const Tensor& gpu, const Tensor& cpu,
               OptTol tol) {
    ++checks;
    std::vector<float> g = host(gpu), c = host(cpu);
    double max_abs = 0.0, max_rel = 0.0;
    int64_t bad = 0, first = -1;
    bool ok = g.size() == c.size();
    for (size_t i = 0; ok && i < c.size(); ++i) {
      const double d = std::fabs(double(g[i]) - double(c[i]));
      const bool good = std::isfinite(g[i]) && std::isfinite(c[i]) && d <= tol.atol + tol.rtol * std::fabs(c[i]);
      max_abs = std::max(max_abs, std::isfinite(d) ? d : INFINITY);
      max_rel = std::max(max_rel, d / std::max(std::fabs(double(c[i])), 1e-6));
      if (!good) {
        if (first < 0) first = int64_t(i);
        ++bad;
      }
    }
    ok = ok && bad == 0;
    std::printf("%-30s %-34s n=%-9zu max_abs=%.2e max_rel=%.2e %s\n", name.c_str(), desc.c_str(), c.size(),
                max_abs, max_rel, ok ? "PASS" : "FAIL");
    if (!ok) {
      ++failures;
      if (g.size() != c.size())
        std::printf("    size mismatch: gpu %zu, cpu %zu\n", g.size(), c.size());
      else
        std::printf("    %lld bad elements; first at %lld: gpu %.9g cpu %.9g\n", (long long)bad, (long long)first,
                    double(g[size_t(first)]), double(c[size_t(first)]));
    }
    return ok;
  }

  bool identical(const std::string& name, const std::string& desc, const Tensor& a, const Tensor& b) {
    ++checks;
    std::vector<float> x = host(a), y = host(b);
    const bool ok = x.size() == y.size() && std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0;
    std::printf("%-30s %-34s n=%-9zu %s\n", name.c_str(), desc.c_str(), x.size(), ok ? "PASS (bit-identical)" : "FAIL (runs differ)");
    if (!ok) ++failures;
    return ok;
  }

  // ---- SGD ------------------------------------------------------------------------------------
  void sgd(const std::vector<int64_t>& shape) {
    struct Mode {
      const char* name;
      float momentum, dampening;
      bool nesterov, first;
    };
    const Mode modes[] = {{"plain", 0.0f, 0.0f, false, false},
                          {"momentum first", 0.9f, 0.0f, false, true},
                          {"momentum", 0.9f, 0.0f, false, false},
                          {"nesterov", 0.9f, 0.0f, true, false},
                          {"dampening", 0.8f, 0.25f, false, false}};
    for (const Mode& md : modes) {
      Tensor p = nrm(shape, 1.0f), g = nrm(shape, 1.0f), buf = nrm(shape, 0.5f);
      Tensor pc = clone(p), bc = clone(buf);
      Tensor pg = to_device(p, kOptGPU), bg = to_device(buf, kOptGPU), gg = to_device(g, kOptGPU);
      Tensor none;
      Tensor& bcr = md.momentum != 0.0f ? bc : none;
      Tensor& bgr = md.momentum != 0.0f ? bg : none;
      sgd_step(pc, g, bcr, 0.1f, md.momentum, md.dampening, md.nesterov, 5e-4f, md.first);
      sgd_step(pg, gg, bgr, 0.1f, md.momentum, md.dampening, md.nesterov, 5e-4f, md.first);
      const std::string desc = std::string(md.name) + " " + shape_str(shape);
      compare("sgd_step p", desc, pg, pc, kOptEw);
      if (md.momentum != 0.0f) compare("sgd_step buf", desc, bg, bc, kOptEw);
    }
  }

  // ---- AdamW ------------------------------------------------------------------------------------
  void adamw(const std::vector<int64_t>& shape) {
    for (int64_t step : {int64_t(1), int64_t(7)}) {
      Tensor p = nrm(shape, 1.0f), g = nrm(shape, 1.0f), m = nrm(shape, 0.1f), v = uni(shape, 0.0f, 0.5f);
      Tensor pc = clone(p), mc = clone(m), vc = clone(v);
      Tensor pg = to_device(p, kOptGPU), gg = to_device(g, kOptGPU), mg = to_device(m, kOptGPU), vg = to_device(v, kOptGPU);
      adamw_step(pc, g, mc, vc, 0.05f, 0.9f, 0.999f, 1e-8f, 1e-2f, step);
      adamw_step(pg, gg, mg, vg, 0.05f, 0.9f, 0.999f, 1e-8f, 1e-2f, step);
      const std::string desc = "step " + std::to_string(step) + " " + shape_str(shape);
      compare("adamw_step p", desc, pg, pc, kOptEw);
      compare("adamw_step m", desc, mg, mc, kOptEw);
      compare("adamw_step v", desc, vg, vc, kOptEw);
    }
  }

  // ---- LAMB -------------------------------------------------------------------------------------
  void lamb_clip(const std::vector<std::vector<int64_t>>& shapes) {
    std::vector<Tensor> gc, gg;
    std::string desc;
    for (const auto& s : shapes) {
      gc.push_back(nrm(s, 0.7f));
      gg.push_back(to_device(gc.back(), kOptGPU));
      desc += shape_str(s);
    }
    if (desc.size() > 34) desc = std::to_string(shapes.size()) + " tensors";
    Tensor c = lamb_grad_clip(gc, 1.0f);
    Tensor g1 = lamb_grad_clip(gg, 1.0f), g2 = lamb_grad_clip(gg, 1.0f);
    compare("lamb_grad_clip", desc, g1, c, kOptSum);
    identical("lamb_grad_clip determinism", desc, g1, g2);
    // a max norm above the total: the factor is exactly 1 on both
    Tensor one = lamb_grad_clip(gg, 1e30f);
    compare("lamb_grad_clip (no clip)", desc, one, full({1}, 1.0f, kOptCPU), OptTol{0.0, 0.0});
  }

  void lamb(const std::vector<int64_t>& shape) {
    struct Mode {
      const char* name;
      float wd;
      bool decoupled, trust_clip, always_adapt, clip;
    };
    const Mode modes[] = {{"adapt", 0.02f, false, false, false, true},
                          {"no adapt", 0.0f, false, false, false, true},
                          {"always adapt", 0.0f, false, false, true, false},
                          {"decoupled trust-clip", 0.1f, true, true, false, true}};
    for (const Mode& md : modes) {
      Tensor p = nrm(shape, 1.0f), g = nrm(shape, 3.0f), m = nrm(shape, 0.1f), v = uni(shape, 0.0f, 0.5f);
      Tensor clip_c, clip_g;
      if (md.clip) {
        clip_c = lamb_grad_clip({g}, 1.0f);
        clip_g = lamb_grad_clip({to_device(g, kOptGPU)}, 1.0f);
      }
      LambOptions o;
      o.lr = 0.05f;
      o.weight_decay = md.wd;
      o.step = 3;
      o.decoupled_decay = md.decoupled;
      o.trust_clip = md.trust_clip;
      o.always_adapt = md.always_adapt;
      Tensor pc = clone(p), mc = clone(m), vc = clone(v);
      lamb_step(pc, g, mc, vc, clip_c, o);
      Tensor gg = to_device(g, kOptGPU);
      Tensor pg[2], mg[2], vg[2];
      for (int r = 0; r < 2; ++r) {
        pg[r] = to_device(p, kOptGPU);
        mg[r] = to_device(m, kOptGPU);
        vg[r] = to_device(v, kOptGPU);
        lamb_step(pg[r], gg, mg[r], vg[r], clip_g, o);
      }
      const std::string desc = std::string(md.name) + " " + shape_str(shape);
      compare("lamb_step p", desc, pg[0], pc, kOptEw);
      compare("lamb_step m", desc, mg[0], mc, kOptEw);
      compare("lamb_step v", desc, vg[0], vc, kOptEw);
      identical("lamb_step determinism", desc, pg[0], pg[1]);
    }
  }

  // ---- capturable updates: the schedule tensor ------------------------------------------------
  // On each device a schedule made at step 4 with lr 0.05 is advanced once (on that device) and
  // drives the update; the eager CPU update at step 5 is the reference. Then the lr is rewritten
  // to 0.02 and the schedule advanced again: the scalars follow both, and the schedules agree.
  void scheduled(const std::vector<int64_t>& shape) {
    const std::string desc = shape_str(shape);
    for (const char* kind : {"sgd", "adamw", "lamb"}) {
      const std::string k = kind;
      Tensor p = nrm(shape, 1.0f), g = nrm(shape, 1.0f), m = nrm(shape, 0.1f), v = uni(shape, 0.0f, 0.5f);
      Tensor pc = clone(p), mc = clone(m), vc = clone(v);      // eager, CPU
      Tensor ps = clone(p), ms = clone(m), vs = clone(v);      // scheduled, CPU
      Tensor pg = to_device(p, kOptGPU), gg = to_device(g, kOptGPU), mg = to_device(m, kOptGPU), vg = to_device(v, kOptGPU);
      Tensor sc = optim_sched_new(kOptCPU, 0.05f, 4), sg = optim_sched_new(kOptGPU, 0.05f, 4);
      SchedConst c{k == "sgd" ? OptimKind::Sgd : k == "adamw" ? OptimKind::AdamW : OptimKind::Lamb, 0.9f, 0.999f, 0.1f, true, true};
      LambOptions o;
      o.weight_decay = 0.1f;
      o.decoupled_decay = true;
      for (int round = 0; round < 2; ++round) {
        const float lr = round == 0 ? 0.05f : 0.02f;
        const int64_t step = 5 + round;
        if (round == 1) {
          optim_sched_write(sc, 0, lr);
          optim_sched_write(sg, 0, lr);
        }
        optim_advance(sc, c);
        optim_advance(sg, c);
        // The lr and step arguments of the scheduled calls are deliberately wrong: the schedule wins.
        if (k == "sgd") {
          sgd_step(pc, g, mc, lr, 0.9f, 0.0f, false, 0.1f, false);
          sgd_step(ps, g, ms, 9.0f, 0.9f, 0.0f, false, 0.1f, false, sc);
          sgd_step(pg, gg, mg, 9.0f, 0.9f, 0.0f, false, 0.1f, false, sg);
        } else if (k == "adamw") {
          adamw_step(pc, g, mc, vc, lr, 0.9f, 0.999f, 1e-8f, 0.1f, step);
          adamw_step(ps, g, ms, vs, 9.0f, 0.9f, 0.999f, 1e-8f, 0.1f, 1, sc);
          adamw_step(pg, gg, mg, vg, 9.0f, 0.9f, 0.999f, 1e-8f, 0.1f, 1, sg);
        } else {
          o.lr = lr;
          o.step = step;
          lamb_step(pc, g, mc, vc, Tensor(), o);
          LambOptions wrong = o;
          wrong.lr = 9.0f;
          wrong.step = 1;
          lamb_step(ps, g, ms, vs, Tensor(), wrong, sc);
          lamb_step(pg, gg, mg, vg, Tensor(), wrong, sg);
        }
        const std::string d = k + " round " + std::to_string(round) + " " + desc;
        identical("scheduled = eager (CPU)", d, ps, pc);
        compare("scheduled p (CUDA)", d, pg, pc, kOptEw);
        compare("scheduled m (CUDA)", d, mg, mc, kOptEw);
        if (k != "sgd") compare("scheduled v (CUDA)", d, vg, vc, kOptEw);
      }
      compare("schedule (CUDA)", k + " " + desc, sg, sc, OptTol{0.0, 1e-6});
    }
  }

  // ---- timing -------------------------------------------------------------------------------------
  void time_it(const char* name, double bytes_per_elem, int64_t n, const std::function<void()>& fn) {
    fn();
    synchronize(kOptGPU);
    std::vector<double> ms;
    for (int r = 0; r < 5; ++r) {
      auto t0 = std::chrono::steady_clock::now();
      fn();
      synchronize(kOptGPU);
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(ms.begin(), ms.end());
    const double med = ms[2];
    std::printf("%-30s n=%-9lld median %.3f ms  %.0f GB/s (%.0f B/elem)\n", name, (long long)n, med,
                bytes_per_elem * double(n) / (med * 1e6), bytes_per_elem);
  }

  void timings() {
    const int64_t n = int64_t(1) << 24;
    Tensor p = to_device(nrm({n}, 1.0f), kOptGPU), g = to_device(nrm({n}, 1.0f), kOptGPU);
    Tensor m = full({n}, 0.0f, kOptGPU), v = full({n}, 0.0f, kOptGPU), buf = full({n}, 0.0f, kOptGPU);
    int64_t step = 0;
    time_it("time sgd_step momentum", 20, n, [&] { sgd_step(p, g, buf, 1e-3f, 0.9f, 0.0f, true, 5e-4f, false); });
    time_it("time adamw_step", 28, n, [&] { adamw_step(p, g, m, v, 1e-3f, 0.9f, 0.999f, 1e-8f, 1e-2f, ++step); });
    time_it("time lamb_grad_clip", 4, n, [&] { lamb_grad_clip({g}, 1.0f); });
    LambOptions o;
    o.weight_decay = 0.01f;
    time_it("time lamb_step adapt (2 passes)", 40, n, [&] { o.step++; lamb_step(p, g, m, v, Tensor(), o); });
  }
};

}  // namespace

int parity_optim() {
  if (parity_skipped("parity_optim")) return 0;
  OptimParity t;
  const std::vector<std::vector<int64_t>> shapes = {{1}, {3}, {7, 5}, {13, 3, 3}, {4099}, {3, 1537}, {(1 << 20) + 3}};
  for (const auto& s : shapes) {
    t.sgd(s);
    t.adamw(s);
    t.lamb(s);
    t.scheduled(s);
  }
  t.lamb_clip({{1}});
  t.lamb_clip({{7, 5}, {13}, {4099}});
  t.lamb_clip({{(1 << 22) + 1}, {3}, {64, 3, 7, 7}, {1000}});
  if (!cuda_emulated()) t.timings();  // timings mean nothing on the CPU emulation
  std::printf("parity_optim: %d checks, %d failures\n", t.checks, t.failures);
  return t.failures;
}

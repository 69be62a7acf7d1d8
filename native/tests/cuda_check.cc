// CUDA parity check: runs every CUDA op and its CPU reference on the same random inputs and
// compares every output element, then times the AdaShift passes and the activations.
//
//   cuda_check [timings.json]
//
// Without a usable GPU it prints "cuda_check: SKIPPED (<reason>)" and exits 0. Otherwise it
// prints one line per op, shape and output (max abs error, max rel error, PASS/FAIL) and exits
// non-zero when any check fails. Built as cuda_emu_check it runs on the CPU emulation of CUDA
// (native/tests/cuda_emu), which sets ADASHIFT_CUDA_EMU=1: the benchmarks and timings are then
// skipped (cuda_emu_mode.h); every check still runs.
//
// How outputs are poisoned: ops allocate their outputs inside the Tensor API, from the CUDA
// caching allocator. Before each CUDA run the cache is emptied, tensors of the outputs' sizes
// are allocated and filled with NaN, and released; the op's outputs then reuse exactly those
// blocks, so an element the kernel fails to write stays NaN and fails the comparison.
//
// Tolerances (|gpu - cpu| <= atol + rtol * |cpu| [+ a per-element summation bound]):
//   element-wise arithmetic and activations: atol 1e-6..1e-5, rtol 1e-5. Both sides evaluate
//     the same math.h expressions (vexp/verf/vtanh are plain float arithmetic), but nvcc
//     contracts a*b + c into one FMA where the host build may round twice (or contract in other
//     places, per instruction set), so results differ by a few ulp (~1e-7 relative, more near
//     cancellations such as 1 + erf(x) for x << 0, hence the absolute term); 1e-5 relative leaves
//     a wide margin while any indexing or formula error shows up as O(1).
//   rand: uniform within 1e-6 absolute (FMA contraction in lo + (hi-lo)*(1-u)), normal within
//     1e-5 relative (CUDA's logf/sinf/cosf are within 1-2 ulp of glibc's, not identical); the
//     count of bit-identical elements is printed.
//   fill, permute: exact (pure copies).
//   sums accumulated in double on both sides (sum_all, sum_rows, LayerNorm mean/rstd/dweight/
//     dbias): the double results differ by ~1e-16 relative, so the float results agree to one
//     rounding: atol 1e-6, rtol 1e-6.
//   float sums in different orders (region pooling, gate_backward_reduce, matmul): besides
//     atol 1e-6 and rtol 1e-5, each output gets (4*sqrt(n) + 4) * 2^-24 * sum|terms| where n is
//     the number of terms and sum|terms| is computed on the host -- the usual statistical bound
//     for the rounding error of an n-term float sum (sqrt(n) u times the largest partial sum
//     magnitude) plus a few ulp per term, with a factor 4 margin.
// Determinism: every reduction op runs twice on CUDA and the two results must be bit-identical.
#include <utility>
#include <cuda_runtime_api.h>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>
#include "core/backend.h"
#include "core/cuda/runtime.h"
#include "core/math.h"
#include "core/ops/adashift.h"
#include "core/ops/dense.h"
#include "core/ops/elementwise.h"
#include "cuda_emu_mode.h"

using namespace adashift;

namespace {

const Device kCPU{DeviceType::CPU, 0};
const Device kGPU{DeviceType::CUDA, 0};
constexpr double kU = 5.9604644775390625e-08;  // 2^-24, float unit roundoff

int g_checks = 0, g_failures = 0;
uint64_t g_seed = 20240611;

struct Tol {
  double atol, rtol;
};
const Tol kExact{0.0, 0.0};
const Tol kEw{1e-6, 1e-5};       // element-wise arithmetic
const Tol kAct{1e-5, 1e-5};      // transcendental activations (inputs up to |x| ~ 12)
const Tol kDoubleSum{1e-6, 1e-6};
const Tol kFloatSum{1e-6, 1e-5};  // plus the per-element summation bound

using Shape = std::vector<int64_t>;

std::vector<float> host(const Tensor& t) {
  if (!t.defined()) return {};
  Tensor c = to_device(t, kCPU);
  return std::vector<float>(c.data(), c.data() + c.numel());
}
Tensor from_host(const Shape& shape, const std::vector<float>& v) {
  Tensor t(shape, kCPU);
  std::copy(v.begin(), v.end(), t.data());
  return t;
}
Tensor uni(const Shape& s, float lo = -1.0f, float hi = 1.0f) {
  return rand(s, RandKind::Uniform, lo, hi, g_seed++, 0, kCPU);
}
Tensor nrm(const Shape& s, float mean = 0.0f, float std = 1.0f) {
  return rand(s, RandKind::Normal, mean, std, g_seed++, 0, kCPU);
}
Tensor on_gpu(const Tensor& t) { return t.defined() ? to_device(t, kGPU) : Tensor(); }
Tensor abs_of(const Tensor& t) {
  std::vector<float> v = host(t);
  for (float& x : v) x = std::fabs(x);
  return from_host(t.shape(), v);
}
std::string str(const Shape& s) { return shape_str(s); }

// Every element of gpu against cpu; extra: an additional absolute tolerance per element.
bool report(const std::string& name, const std::string& desc, const std::vector<float>& g,
            const std::vector<float>& c, Tol tol, const std::vector<double>* extra = nullptr) {
  ++g_checks;
  double max_abs = 0.0, max_rel = 0.0;
  int64_t bad = 0, first_bad = -1;
  bool ok = g.size() == c.size();
  if (ok) {
    for (size_t i = 0; i < c.size(); ++i) {
      const double cv = c[i], gv = g[i];
      bool good;
      double d;
      if (!std::isfinite(cv)) {
        good = gv == cv;
        d = good ? 0.0 : INFINITY;
      } else if (!std::isfinite(gv)) {
        good = false;
        d = INFINITY;
      } else {
        d = std::fabs(gv - cv);
        double lim = tol.atol + tol.rtol * std::fabs(cv) + (extra ? (*extra)[i] : 0.0);
        good = d <= lim;
      }
      max_abs = std::max(max_abs, d);
      max_rel = std::max(max_rel, d / std::max(std::fabs(cv), 1e-6));
      if (!good) {
        if (first_bad < 0) first_bad = int64_t(i);
        ++bad;
      }
    }
    ok = bad == 0;
  }
  std::printf("%-36s %-34s n=%-9zu max_abs=%.2e max_rel=%.2e %s\n", name.c_str(), desc.c_str(),
              c.size(), max_abs, max_rel, ok ? "PASS" : "FAIL");
  if (!ok) {
    ++g_failures;
    if (g.size() != c.size())
      std::printf("    size mismatch: gpu %zu, cpu %zu\n", g.size(), c.size());
    else
      std::printf("    %lld bad elements; first at %lld: gpu %.9g cpu %.9g\n", (long long)bad,
                  (long long)first_bad, double(g[size_t(first_bad)]),
                  double(c[size_t(first_bad)]));
  }
  return ok;
}

void fail_line(const std::string& name, const std::string& desc, const std::string& why) {
  ++g_checks;
  ++g_failures;
  std::printf("%-36s %-34s FAIL (%s)\n", name.c_str(), desc.c_str(), why.c_str());
}

// Empties the CUDA cache and leaves NaN-filled blocks of exactly these sizes in it.
void poison_outputs(const std::vector<Shape>& shapes) {
  synchronize(kGPU);
  cuda_empty_cache(kGPU.index);
  std::vector<Tensor> held;
  for (const Shape& s : shapes) held.push_back(full(s, NAN, kGPU));
  synchronize(kGPU);
}  // held released here: the blocks wait in the cache for the op's outputs

using OpFn = std::function<std::vector<Tensor>(const std::vector<Tensor>&, Device)>;

// Runs f on CPU and CUDA with the same inputs and compares every output.
void check(const std::string& op, const std::string& desc, const std::vector<Tensor>& in_cpu,
           const OpFn& f, const std::vector<std::string>& names, const std::vector<Tol>& tols,
           bool determinism, const std::vector<std::vector<double>>& extra = {}) {
  try {
    std::vector<Tensor> in_gpu;
    for (const Tensor& t : in_cpu) in_gpu.push_back(on_gpu(t));
    std::vector<Tensor> ref = f(in_cpu, kCPU);
    std::vector<Shape> shapes;
    for (const Tensor& r : ref) shapes.push_back(r.shape());
    poison_outputs(shapes);
    std::vector<Tensor> out = f(in_gpu, kGPU);
    std::vector<std::vector<float>> got;
    for (const Tensor& o : out) got.push_back(host(o));
    out.clear();
    for (size_t k = 0; k < ref.size(); ++k) {
      const std::string name = names[k].empty() ? op : op + "." + names[k];
      const std::vector<double>* ex = k < extra.size() && !extra[k].empty() ? &extra[k] : nullptr;
      report(name, desc, got[k], host(ref[k]), tols[k], ex);
    }
    if (determinism) {
      poison_outputs(shapes);
      std::vector<Tensor> again = f(in_gpu, kGPU);
      bool same = again.size() == got.size();
      for (size_t k = 0; same && k < again.size(); ++k) {
        std::vector<float> h = host(again[k]);
        same = h.size() == got[k].size() &&
               std::memcmp(h.data(), got[k].data(), h.size() * sizeof(float)) == 0;
      }
      ++g_checks;
      if (!same) ++g_failures;
      std::printf("%-36s %-34s run twice: %s\n", (op + " determinism").c_str(), desc.c_str(),
                  same ? "bit-identical PASS" : "results differ FAIL");
    }
  } catch (const std::exception& e) {
    fail_line(op, desc, e.what());
  }
}

// ---- element-wise ops ---------------------------------------------------------------------------
void test_elementwise() {
  // 4194307: past one grid of blocks on 132 SMs (the grid-stride loops take a second pass)
  const std::vector<int64_t> sizes = {1, 3, 4, 5, 7, 1023, 4096, 4099, 1000003, 4194307};
  for (int64_t n : sizes) {
    const std::string d = str({n});
    check("fill", d, {}, [n](const std::vector<Tensor>&, Device dev) {
      return std::vector<Tensor>{full({n}, 0.37f, dev)};
    }, {""}, {kExact}, false);

    Tensor a = uni({n}), b = uni({n}, 0.5f, 2.0f);
    const char* bin_names[] = {"add", "sub", "mul", "div"};
    for (int op = 0; op < 4; ++op)
      check(std::string("binary.") + bin_names[op], d, {a, b},
            [op](const std::vector<Tensor>& in, Device) {
              return std::vector<Tensor>{binary(Binary(op), in[0], in[1])};
            }, {""}, {kEw}, false);
    check("axpby", d, {a, b}, [](const std::vector<Tensor>& in, Device) {
      return std::vector<Tensor>{axpby(0.7f, in[0], -1.3f, in[1])};
    }, {""}, {kEw}, false);
    check("axpby(b=none)", d, {a}, [](const std::vector<Tensor>& in, Device) {
      return std::vector<Tensor>{axpby(0.7f, in[0], -1.3f, Tensor())};
    }, {""}, {kEw}, false);
    check("axpy_(in place)", d, {a, b}, [](const std::vector<Tensor>& in, Device) {
      Tensor y = clone(in[0]);
      axpy_(y, 0.3f, in[1]);
      return std::vector<Tensor>{y};
    }, {""}, {kEw}, false);

    Tensor x = nrm({n}, 0.0f, 3.0f), dy = nrm({n});
    const char* act_names[] = {"relu", "gelu", "gelu_tanh", "silu"};
    for (int ai = 0; ai < 4; ++ai) {
      check(std::string("act_forward.") + act_names[ai], d, {x},
            [ai](const std::vector<Tensor>& in, Device) {
              return std::vector<Tensor>{act_forward(Act(ai), in[0])};
            }, {""}, {kAct}, false);
      check(std::string("act_backward.") + act_names[ai], d, {x, dy},
            [ai](const std::vector<Tensor>& in, Device) {
              return std::vector<Tensor>{act_backward(Act(ai), in[0], in[1])};
            }, {""}, {kAct}, false);
    }
  }

  // rand: the same Philox stream on both devices.
  for (int64_t n : {int64_t(1), int64_t(7), int64_t(4099), int64_t(1000003)}) {
    for (uint64_t offset : {uint64_t(0), uint64_t(5), (uint64_t(1) << 32) + 3}) {
      for (int kind = 0; kind < 2; ++kind) {
        const std::string name = kind == 0 ? "rand.uniform" : "rand.normal";
        const std::string d = str({n}) + " off=" + std::to_string(offset);
        try {
          const float a = kind == 0 ? -2.0f : 0.5f, b = kind == 0 ? 3.0f : 2.0f;
          Tensor c = rand({n}, RandKind(kind), a, b, 42, offset, kCPU);
          poison_outputs({{n}});
          Tensor g = rand({n}, RandKind(kind), a, b, 42, offset, kGPU);
          std::vector<float> gv = host(g), cv = host(c);
          int64_t same = 0;
          for (size_t i = 0; i < cv.size(); ++i) same += std::memcmp(&gv[i], &cv[i], 4) == 0;
          report(name, d, gv, cv, kind == 0 ? Tol{1e-6, 1e-6} : Tol{1e-6, 1e-5});
          std::printf("    %lld of %lld elements bit-identical\n", (long long)same, (long long)n);
        } catch (const std::exception& e) {
          fail_line(name, d, e.what());
        }
      }
    }
  }

  for (int64_t n : {int64_t(1), int64_t(5), int64_t(4097), int64_t(3000001)}) {
    check("sum_all", str({n}), {nrm({n})}, [](const std::vector<Tensor>& in, Device) {
      return std::vector<Tensor>{sum_all(in[0])};
    }, {""}, {kDoubleSum}, true);
  }

  const std::vector<std::pair<int64_t, int64_t>> mats = {
      {1, 1}, {1, 7}, {7, 3}, {5, 4}, {1000, 13}, {64, 4096}, {10007, 5}, {3, 100003}, {4096, 1},
      {33, 1001}};
  for (const auto& rc : mats) {
    const int64_t rows = rc.first, cols = rc.second;
    const std::string d = str({rows, cols});
    Tensor x = nrm({rows, cols});
    check("sum_rows", d, {x}, [rows](const std::vector<Tensor>& in, Device) {
      return std::vector<Tensor>{sum_rows(in[0], rows)};
    }, {""}, {kDoubleSum}, true);
    check("add_rowvec", d, {x, nrm({cols})}, [](const std::vector<Tensor>& in, Device) {
      return std::vector<Tensor>{add_rowvec(in[0], in[1])};
    }, {""}, {kEw}, false);
  }
}

// The scalar (unaligned) paths: raw launchers on pointers offset by one float. Outputs live in
// NaN-filled buffers with one guard element on each side that must stay NaN.
void test_unaligned() {
  cudaStream_t st = cuda_stream(kGPU);
  for (int64_t n : {int64_t(5), int64_t(1001), int64_t(4099)}) {
    const std::string d = str({n}) + " ptr+1";
    try {
      Tensor a = uni({n + 2}), b = uni({n + 2}, 0.5f, 2.0f), x = nrm({n + 2}, 0.0f, 3.0f);
      Tensor ga = on_gpu(a), gb = on_gpu(b), gx = on_gpu(x);
      auto run = [&](const std::string& name, Tol tol,
                     const std::function<void(float*)>& cpu_fn,
                     const std::function<void(float*)>& gpu_fn) {
        Tensor co = full({n + 2}, NAN, kCPU), go = full({n + 2}, NAN, kGPU);
        cpu_fn(co.data() + 1);
        gpu_fn(go.data() + 1);
        std::vector<float> gv = host(go), cv = host(co);
        bool guards = std::isnan(gv[0]) && std::isnan(gv[size_t(n + 1)]);
        report(name, d, std::vector<float>(gv.begin() + 1, gv.end() - 1),
               std::vector<float>(cv.begin() + 1, cv.end() - 1), tol);
        if (!guards) fail_line(name, d, "wrote outside [0, n)");
      };
      const float* A = a.data() + 1;
      const float* B = b.data() + 1;
      const float* X = x.data() + 1;
      const float* gA = ga.data() + 1;
      const float* gB = gb.data() + 1;
      const float* gX = gx.data() + 1;
      run("fill", kExact, [&](float* o) { cpu::fill(o, -2.5f, n); },
          [&](float* o) { cuda::fill(st, o, -2.5f, n); });
      run("rand.uniform", Tol{1e-6, 1e-6},
          [&](float* o) { cpu::rand(o, n, RandKind::Uniform, -1.0f, 1.0f, 7, 3); },
          [&](float* o) { cuda::rand(st, o, n, RandKind::Uniform, -1.0f, 1.0f, 7, 3); });
      run("rand.normal", Tol{1e-6, 1e-5},
          [&](float* o) { cpu::rand(o, n, RandKind::Normal, 0.0f, 1.0f, 7, 3); },
          [&](float* o) { cuda::rand(st, o, n, RandKind::Normal, 0.0f, 1.0f, 7, 3); });
      run("binary.div", kEw, [&](float* o) { cpu::binary(Binary::Div, A, B, o, n); },
          [&](float* o) { cuda::binary(st, Binary::Div, gA, gB, o, n); });
      run("axpby", kEw, [&](float* o) { cpu::axpby(0.5f, A, 2.0f, B, o, n); },
          [&](float* o) { cuda::axpby(st, 0.5f, gA, 2.0f, gB, o, n); });
      run("axpby(b=none)", kEw, [&](float* o) { cpu::axpby(0.5f, A, 2.0f, nullptr, o, n); },
          [&](float* o) { cuda::axpby(st, 0.5f, gA, 2.0f, nullptr, o, n); });
      run("act_forward.silu", kAct, [&](float* o) { cpu::act_forward(Act::SiLU, X, o, n); },
          [&](float* o) { cuda::act_forward(st, Act::SiLU, gX, o, n); });
      run("act_backward.gelu", kAct,
          [&](float* o) { cpu::act_backward(Act::GELU, X, A, o, n); },
          [&](float* o) { cuda::act_backward(st, Act::GELU, gX, gA, o, n); });
      run("add_rowvec", kEw, [&](float* o) { cpu::add_rowvec(A, B, o, 1, n); },
          [&](float* o) { cuda::add_rowvec(st, gA, gB, o, 1, n); });
      // sum_all into a one-element slot of the guarded buffer is awkward; use a plain output.
      Tensor cs = full({1}, NAN, kCPU), gs = full({1}, NAN, kGPU);
      cpu::sum_all(X, n, cs.data());
      cuda::sum_all(st, gX, n, gs.data());
      report("sum_all", d, host(gs), host(cs), kDoubleSum);
    } catch (const std::exception& e) {
      fail_line("unaligned", d, e.what());
    }
  }
}

// ---- AdaShift -----------------------------------------------------------------------------------
struct CellInfo {
  std::vector<double> abs_pool;    // mean |x| per [N, T, C] entry
  std::vector<double> abs_reduce;  // sum |d(gate)/ds term| per entry
  int64_t max_count = 1;
};

CellInfo cell_info(const RegionGrid& g, const std::vector<float>& x, const std::vector<float>& dy,
                   const std::vector<float>& s) {
  CellInfo ci;
  const int64_t T = g.tokens();
  ci.abs_pool.assign(size_t(g.N * T * g.C), 0.0);
  ci.abs_reduce.assign(size_t(g.N * T * g.C), 0.0);
  std::vector<int64_t> count(size_t(T), 0);
  for (int h = 0; h < int(g.H); ++h)
    for (int w = 0; w < int(g.W); ++w)
      ++count[size_t(math::cell_of(h, int(g.H), g.Ph) * g.Pw + math::cell_of(w, int(g.W), g.Pw))];
  for (int64_t c : count) ci.max_count = std::max(ci.max_count, c);
  for (int64_t n = 0; n < g.N; ++n)
    for (int64_t c = 0; c < g.C; ++c)
      for (int h = 0; h < int(g.H); ++h)
        for (int w = 0; w < int(g.W); ++w) {
          const int64_t p = math::cell_of(h, int(g.H), g.Ph) * g.Pw +
                            math::cell_of(w, int(g.W), g.Pw);
          const size_t ti = size_t((n * T + p) * g.C + c);
          const size_t xi = size_t(((n * g.C + c) * g.H + h) * g.W + w);
          ci.abs_pool[ti] += std::fabs(x[xi]) / double(count[size_t(p)]);
          ci.abs_reduce[ti] += std::fabs(math::gate_grad(x[xi], s[ti], dy[xi]).ds);
        }
  return ci;
}

void test_adashift() {
  struct Case { Shape shape; int64_t grid; };
  const std::vector<Case> cases = {
      {{1, 3, 1, 1}, 1},   {{1, 3, 1, 1}, 7},   {{1, 5, 3, 3}, 1},    {{1, 5, 3, 3}, 3},
      {{1, 5, 3, 3}, 7},   {{2, 7, 7, 7}, 1},   {{2, 7, 7, 7}, 7},    {{2, 7, 7, 7}, 3},
      {{1, 13, 9, 9}, 7},  {{1, 13, 9, 9}, 3},  {{2, 3, 14, 14}, 1},  {{2, 3, 14, 14}, 7},
      {{2, 5, 28, 28}, 1}, {{2, 5, 28, 28}, 3}, {{2, 5, 28, 28}, 7},  {{1, 3, 56, 56}, 7},
      {{3, 7, 9, 14}, 7},  {{3, 7, 9, 14}, 3},  {{2, 3, 14, 9}, 7},   {{1, 2, 1, 56}, 7},
      {{4, 16, 8, 12}, 1}, {{4, 16, 8, 12}, 7}, {{4, 16, 8, 12}, 3},  {{2, 4, 16, 16}, 2},
      {{2, 3, 5, 300}, 3}, {{1, 2, 224, 224}, 1}, {{1, 2, 224, 224}, 7},
      {{1, 2, 110, 110}, 100},  // Ph*Pw = 10000: tables exceed shared memory (direct path)
      {{8, 64, 56, 56}, 1}, {{8, 64, 56, 56}, 7},
      // more planes than the grid has blocks (each block then takes a second plane)
      {{64, 128, 7, 7}, 1}, {{64, 128, 7, 7}, 7}, {{16, 512, 28, 28}, 7},
      {{1, 2, 112, 112}, 100},  // direct path (no tables) with float4 loads (W % 4 == 0)
      {{2, 3, 56, 1}, 7}, {{2, 3, 5, 300}, 7},  // W = 1; Ph != Pw with H > 1
  };
  for (const Case& cs : cases) {
    const int64_t grid = cs.grid;
    Tensor x = nrm(cs.shape);
    const RegionGrid g = region_grid(x, grid);
    const Shape tshape = {g.N, g.tokens(), g.C};
    Tensor s = nrm(tshape, 0.0f, 0.5f), dy = nrm(cs.shape), dt = nrm(tshape);
    const std::string d = str(cs.shape) + " grid " + std::to_string(grid);
    const CellInfo ci = cell_info(g, host(x), host(dy), host(s));
    const double k = (4.0 * std::sqrt(double(ci.max_count)) + 4.0) * kU;
    std::vector<double> pool_extra(ci.abs_pool.size()), red_extra(ci.abs_reduce.size());
    for (size_t i = 0; i < pool_extra.size(); ++i) pool_extra[i] = k * ci.abs_pool[i];
    for (size_t i = 0; i < red_extra.size(); ++i) red_extra[i] = k * ci.abs_reduce[i];

    check("region_pool_forward", d, {x}, [grid](const std::vector<Tensor>& in, Device) {
      return std::vector<Tensor>{region_pool_forward(in[0], grid)};
    }, {""}, {kFloatSum}, true, {pool_extra});
    const Shape xs = cs.shape;
    check("region_pool_backward", d, {dt}, [grid, xs](const std::vector<Tensor>& in, Device) {
      return std::vector<Tensor>{region_pool_backward(in[0], xs, grid)};
    }, {""}, {kEw}, false);
    check("gate_forward", d, {x, s}, [grid](const std::vector<Tensor>& in, Device) {
      return std::vector<Tensor>{gate_forward(in[0], in[1], grid)};
    }, {""}, {kEw}, false);
    check("gate_backward_reduce", d, {x, dy, s}, [grid](const std::vector<Tensor>& in, Device) {
      return std::vector<Tensor>{gate_backward_reduce(in[0], in[1], in[2], grid)};
    }, {""}, {kFloatSum}, true, {red_extra});
    check("gate_backward_apply", d, {x, dy, s, dt}, [grid](const std::vector<Tensor>& in, Device) {
      return std::vector<Tensor>{gate_backward_apply(in[0], in[1], in[2], in[3], grid)};
    }, {""}, {kEw}, false);
    check("gate_backward_apply(dt=none)", d, {x, dy, s},
          [grid](const std::vector<Tensor>& in, Device) {
            return std::vector<Tensor>{gate_backward_apply(in[0], in[1], in[2], Tensor(), grid)};
          }, {""}, {kEw}, false);
  }

  // Unaligned planes (x, dy, out at an odd float offset, W % 4 == 0): the scalar paths of the
  // element-wise and reduction kernels, through the raw launchers.
  cudaStream_t st = cuda_stream(kGPU);
  for (const Case& cs : std::vector<Case>{{{2, 3, 8, 12}, 1}, {{2, 3, 8, 12}, 3},
                                          {{1, 4, 28, 28}, 7}}) {
    const std::string d = str(cs.shape) + " grid " + std::to_string(cs.grid) + " ptr+1";
    try {
      const int64_t n = checked_numel(cs.shape);
      Tensor xshape(cs.shape, kCPU);
      const RegionGrid g = region_grid(xshape, cs.grid);
      const Shape tshape = {g.N, g.tokens(), g.C};
      Tensor x = nrm({n + 1}), dy = nrm({n + 1}), s = nrm(tshape, 0.0f, 0.5f), dt = nrm(tshape);
      Tensor gx = on_gpu(x), gdy = on_gpu(dy), gs = on_gpu(s), gdt = on_gpu(dt);
      auto run = [&](const std::string& name, Tol tol, bool per_token,
                     const std::function<void(float*)>& cpu_fn,
                     const std::function<void(float*)>& gpu_fn) {
        const int64_t m = per_token ? g.N * g.tokens() * g.C : n;
        Tensor co = full({m + 1}, NAN, kCPU), go = full({m + 1}, NAN, kGPU);
        cpu_fn(co.data() + (per_token ? 0 : 1));
        gpu_fn(go.data() + (per_token ? 0 : 1));
        std::vector<float> gv = host(go), cv = host(co);
        const size_t b = per_token ? 0 : 1;
        report(name, d, std::vector<float>(gv.begin() + b, gv.begin() + b + size_t(m)),
               std::vector<float>(cv.begin() + b, cv.begin() + b + size_t(m)), tol);
      };
      const float* X = x.data() + 1;
      const float* DY = dy.data() + 1;
      const float* gX = gx.data() + 1;
      const float* gDY = gdy.data() + 1;
      run("gate_forward", kEw, false, [&](float* o) { cpu::gate_forward(g, X, s.data(), o); },
          [&](float* o) { cuda::gate_forward(st, g, gX, gs.data(), o); });
      run("gate_backward_apply", kEw, false,
          [&](float* o) { cpu::gate_backward_apply(g, X, DY, s.data(), dt.data(), o); },
          [&](float* o) { cuda::gate_backward_apply(st, g, gX, gDY, gs.data(), gdt.data(), o); });
      run("region_pool_backward", kEw, false,
          [&](float* o) { cpu::region_pool_backward(g, dt.data(), o); },
          [&](float* o) { cuda::region_pool_backward(st, g, gdt.data(), o); });
      // Reductions: generous fixed bound (cells here have at most 96 pixels of |term| < 10).
      run("region_pool_forward", Tol{1e-5, 1e-5}, true,
          [&](float* o) { cpu::region_pool_forward(g, X, o); },
          [&](float* o) { cuda::region_pool_forward(st, g, gX, o); });
      run("gate_backward_reduce", Tol{1e-4, 1e-5}, true,
          [&](float* o) { cpu::gate_backward_reduce(g, X, DY, s.data(), o); },
          [&](float* o) { cuda::gate_backward_reduce(st, g, gX, gDY, gs.data(), o); });
    } catch (const std::exception& e) {
      fail_line("adashift unaligned", d, e.what());
    }
  }
}

// ---- dense ----------------------------------------------------------------------------------------
void test_dense() {
  const std::vector<Shape> ln_shapes = {{1, 1},  {3, 5},   {98, 64},   {7, 13},  {100, 384},
                                        {3, 2048}, {1000, 33}, {2, 49, 64}, {4096, 96}};
  for (const Shape& sh : ln_shapes) {
    const int64_t C = sh.back();
    const std::string d = str(sh);
    Tensor x = nrm(sh, 0.3f, 2.0f), w = nrm({C}), b = nrm({C});
    check("layernorm_forward", d, {x, w, b}, [](const std::vector<Tensor>& in, Device) {
      LayerNormOut o = layernorm_forward(in[0], in[1], in[2], 1e-6f);
      return std::vector<Tensor>{o.y, o.mean, o.rstd};
    }, {"y", "mean", "rstd"}, {Tol{1e-5, 1e-5}, kDoubleSum, kDoubleSum}, true);
    LayerNormOut ref = layernorm_forward(x, w, b, 1e-6f);
    Tensor dy = nrm(sh);
    check("layernorm_backward", d, {dy, x, ref.mean, ref.rstd, w},
          [](const std::vector<Tensor>& in, Device) {
            LayerNormGrad gr = layernorm_backward(in[0], in[1], in[2], in[3], in[4]);
            return std::vector<Tensor>{gr.dx, gr.dweight, gr.dbias};
          }, {"dx", "dweight", "dbias"}, {Tol{1e-5, 1e-5}, kDoubleSum, kDoubleSum}, true);
  }
  {  // no rows: dweight and dbias are zeros
    Tensor x({0, 8}, kCPU), dy({0, 8}, kCPU), mean({0}, kCPU), rstd({0}, kCPU);
    check("layernorm_backward", "[0, 8]", {dy, x, mean, rstd, nrm({8})},
          [](const std::vector<Tensor>& in, Device) {
            LayerNormGrad gr = layernorm_backward(in[0], in[1], in[2], in[3], in[4]);
            return std::vector<Tensor>{gr.dweight, gr.dbias};
          }, {"dweight", "dbias"}, {kExact, kExact}, true);
  }

  const std::vector<Shape> sm_shapes = {{1, 1}, {5, 7}, {196, 49}, {2, 33}, {3, 1000},
                                        {64, 4096}, {2, 4, 49, 49}};
  for (const Shape& sh : sm_shapes) {
    const std::string d = str(sh);
    Tensor x = nrm(sh, 0.0f, 3.0f);
    check("softmax_forward", d, {x}, [](const std::vector<Tensor>& in, Device) {
      return std::vector<Tensor>{softmax_forward(in[0])};
    }, {""}, {Tol{1e-6, 1e-5}}, true);
    Tensor y = softmax_forward(x), dy = nrm(sh);
    check("softmax_backward", d, {y, dy}, [](const std::vector<Tensor>& in, Device) {
      return std::vector<Tensor>{softmax_backward(in[0], in[1])};
    }, {""}, {Tol{1e-6, 1e-5}}, true);
  }

  struct MM { int64_t ba, bb, M, N, K; };  // ba/bb: batch of A/B, 0 = rank 2
  const std::vector<MM> mms = {{0, 0, 1, 1, 1},    {0, 0, 7, 5, 3},     {0, 0, 33, 65, 47},
                               {0, 0, 64, 64, 64}, {0, 0, 100, 37, 700}, {12, 12, 49, 49, 64},
                               {3, 3, 33, 17, 40}, {4, 0, 49, 64, 64},  {0, 3, 5, 7, 9},
                               {2, 2, 70, 1, 33}};
  for (const MM& m : mms) {
    for (int t = 0; t < 4; ++t) {
      const bool ta = t & 1, tb = t & 2;
      Shape as = ta ? Shape{m.K, m.M} : Shape{m.M, m.K};
      Shape bs = tb ? Shape{m.N, m.K} : Shape{m.K, m.N};
      if (m.ba) as.insert(as.begin(), m.ba);
      if (m.bb) bs.insert(bs.begin(), m.bb);
      Tensor a = uni(as), b = uni(bs);
      // Per-element bound from |A| @ |B| (the sum of |terms| of each output).
      std::vector<float> absprod = host(matmul(abs_of(a), abs_of(b), ta, tb));
      std::vector<double> extra(absprod.size());
      const double k = (4.0 * std::sqrt(double(m.K)) + 4.0) * kU;
      for (size_t i = 0; i < extra.size(); ++i) extra[i] = k * absprod[i];
      const std::string d = str(as) + (ta ? "^T" : "") + " @ " + str(bs) + (tb ? "^T" : "");
      check("matmul", d, {a, b}, [ta, tb](const std::vector<Tensor>& in, Device) {
        return std::vector<Tensor>{matmul(in[0], in[1], ta, tb)};
      }, {""}, {kFloatSum}, true, {extra});
    }
  }

  const std::vector<std::pair<Shape, Shape>> perms = {
      {{7}, {0}},
      {{3, 5}, {1, 0}},
      {{33, 65}, {1, 0}},
      {{2, 3, 4}, {2, 0, 1}},
      {{5, 7, 9, 3}, {0, 2, 1, 3}},
      {{2, 49, 4, 16}, {0, 2, 1, 3}},
      {{2, 3, 4, 5, 6}, {4, 3, 2, 1, 0}},
      {{2, 3, 2, 3, 2, 3}, {5, 1, 3, 0, 2, 4}},
  };
  for (const auto& [sh, perm] : perms) {
    const Shape pm = perm;
    check("permute", str(sh) + " perm " + str(perm), {nrm(sh)},
          [pm](const std::vector<Tensor>& in, Device) {
            return std::vector<Tensor>{permute(in[0], pm)};
          }, {""}, {kExact}, false);
  }
}

// ---- timings --------------------------------------------------------------------------------------
struct Timing {
  std::string op;
  Shape shape;
  int64_t grid;
  double ms, gbps, bytes;
};

// Median over 20 samples of the mean time of 10 back-to-back launches; one untimed launch before
// each sample keeps the GPU busy while the start event and the timed launches are queued.
double time_ms(cudaStream_t st, const std::function<void()>& launch) {
  cudaEvent_t e0, e1;
  CUDA_CHECK(cudaEventCreate(&e0));
  CUDA_CHECK(cudaEventCreate(&e1));
  for (int i = 0; i < 3; ++i) launch();
  CUDA_CHECK(cudaStreamSynchronize(st));
  constexpr int kReps = 10;
  std::vector<double> samples;
  for (int s = 0; s < 20; ++s) {
    launch();
    CUDA_CHECK(cudaEventRecord(e0, st));
    for (int r = 0; r < kReps; ++r) launch();
    CUDA_CHECK(cudaEventRecord(e1, st));
    CUDA_CHECK(cudaEventSynchronize(e1));
    float ms = 0.0f;
    CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
    samples.push_back(double(ms) / kReps);
  }
  CUDA_CHECK(cudaEventDestroy(e0));
  CUDA_CHECK(cudaEventDestroy(e1));
  std::sort(samples.begin(), samples.end());
  return 0.5 * (samples[9] + samples[10]);
}

void bench(const char* json_path) {
  cudaStream_t st = cuda_stream(kGPU);
  std::vector<Timing> rows;
  std::vector<std::pair<Shape, double>> copy_bw;
  for (const Shape& sh : std::vector<Shape>{{64, 64, 28, 28}, {32, 256, 56, 56}}) {
    const int64_t n = checked_numel(sh);
    Tensor x = rand(sh, RandKind::Normal, 0.0f, 1.0f, 1, 0, kGPU);
    Tensor dy = rand(sh, RandKind::Normal, 0.0f, 1.0f, 2, 0, kGPU);
    Tensor out(sh, kGPU);
    // device-to-device copy bandwidth (read + write)
    const double cms = time_ms(st, [&] {
      CUDA_CHECK(cudaMemcpyAsync(out.data(), x.data(), size_t(n) * 4, cudaMemcpyDeviceToDevice, st));
    });
    const double copy_gbps = 2.0 * 4.0 * double(n) / (cms * 1e-3) / 1e9;
    copy_bw.push_back({sh, copy_gbps});
    std::printf("bench %-22s %-20s          %8.4f ms %8.1f GB/s\n", "memcpy_d2d", str(sh).c_str(),
                cms, copy_gbps);
    auto add = [&](const std::string& op, int64_t grid, double bytes_per_elem,
                   const std::function<void()>& launch) {
      const double ms = time_ms(st, launch);
      const double bytes = bytes_per_elem * double(n);
      const double gbps = bytes / (ms * 1e-3) / 1e9;
      rows.push_back({op, sh, grid, ms, gbps, bytes});
      std::printf("bench %-22s %-20s grid %-3lld %8.4f ms %8.1f GB/s (%.0f%% of copy)\n",
                  op.c_str(), str(sh).c_str(), (long long)grid, ms, gbps, 100.0 * gbps / copy_gbps);
    };
    for (int64_t grid : {int64_t(1), int64_t(7)}) {
      const RegionGrid g = region_grid(x, grid);
      const Shape tshape = {g.N, g.tokens(), g.C};
      Tensor s = rand(tshape, RandKind::Normal, 0.0f, 0.5f, 3, 0, kGPU);
      Tensor dt = rand(tshape, RandKind::Normal, 0.0f, 1.0f, 4, 0, kGPU);
      Tensor t(tshape, kGPU);
      add("region_pool_forward", grid, 4, [&] { cuda::region_pool_forward(st, g, x.data(), t.data()); });
      add("gate_forward", grid, 8, [&] { cuda::gate_forward(st, g, x.data(), s.data(), out.data()); });
      add("gate_backward_reduce", grid, 8, [&] {
        cuda::gate_backward_reduce(st, g, x.data(), dy.data(), s.data(), t.data());
      });
      add("gate_backward_apply", grid, 12, [&] {
        cuda::gate_backward_apply(st, g, x.data(), dy.data(), s.data(), dt.data(), out.data());
      });
    }
    const char* act_names[] = {"relu", "gelu", "gelu_tanh", "silu"};
    for (int ai : {0, 3}) {
      add(std::string("act_forward.") + act_names[ai], 0, 8,
          [&] { cuda::act_forward(st, Act(ai), x.data(), out.data(), n); });
      add(std::string("act_backward.") + act_names[ai], 0, 12,
          [&] { cuda::act_backward(st, Act(ai), x.data(), dy.data(), out.data(), n); });
    }
  }
  if (!json_path) return;
  FILE* f = std::fopen(json_path, "w");
  if (!f) {
    std::printf("cuda_check: cannot write %s\n", json_path);
    ++g_failures;
    return;
  }
  const BackendInfo info = backend_info();
  std::fprintf(f, "{\n  \"device\": \"%s\",\n  \"method\": \"median of 20 samples, each the mean "
                  "of 10 back-to-back launches (cudaEvent)\",\n  \"copy\": [",
               info.devices.empty() ? "" : info.devices[0].name.c_str());
  for (size_t i = 0; i < copy_bw.size(); ++i)
    std::fprintf(f, "%s\n    {\"shape\": %s, \"gbps\": %.2f}", i ? "," : "",
                 str(copy_bw[i].first).c_str(), copy_bw[i].second);
  std::fprintf(f, "\n  ],\n  \"results\": [");
  for (size_t i = 0; i < rows.size(); ++i) {
    const Timing& r = rows[i];
    std::fprintf(f,
                 "%s\n    {\"op\": \"%s\", \"shape\": %s, \"grid\": %lld, \"ms\": %.6f, "
                 "\"bytes\": %.0f, \"gbps\": %.2f}",
                 i ? "," : "", r.op.c_str(), str(r.shape).c_str(), (long long)r.grid, r.ms,
                 r.bytes, r.gbps);
  }
  std::fprintf(f, "\n  ]\n}\n");
  std::fclose(f);
  std::printf("cuda_check: timings written to %s\n", json_path);
}

}  // namespace

// Parity checks of the other op families (native/tests/parity_<family>.cc): each returns its
// number of failures.
int parity_conv();
int parity_norm();
int parity_optim();
int parity_adashift_ops();

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // a crash still leaves every finished line
  const BackendInfo info = backend_info();
  if (!info.cuda_usable) {
    std::printf("cuda_check: SKIPPED (%s)\n",
                info.reason.empty() ? "CUDA is not usable on this host" : info.reason.c_str());
    return 0;
  }
  std::printf("cuda_check: %s (sm_%d%d, %d SMs), build archs %s\n", info.devices[0].name.c_str(),
              info.devices[0].cc_major, info.devices[0].cc_minor,
              info.devices[0].multiprocessors, info.compiled_archs.c_str());
  if (info.compiled_archs == "cpu-emulation")  // cuda_emu_check (native/tests/cuda_emu)
    std::printf("cuda_check: EMULATION: the CUDA kernels run on a CPU emulation of CUDA, not on a "
                "GPU\n");
  if (cuda_emulated())
    std::printf("cuda_check: ADASHIFT_CUDA_EMU=1: benchmarks and timings are skipped\n");
  // ADASHIFT_CHECK_ONLY=<family> (conv, norm, optim or adashift) runs that parity family alone.
  const char* only_env = std::getenv("ADASHIFT_CHECK_ONLY");
  const std::string only = only_env ? only_env : "";
  if (!only.empty()) std::printf("cuda_check: ADASHIFT_CHECK_ONLY=%s: other checks skipped\n", only.c_str());
  try {
    if (only.empty()) {
      test_elementwise();
      test_unaligned();
      test_adashift();
      test_dense();
    }
  } catch (const std::exception& e) {
    std::printf("cuda_check: FAIL (uncaught: %s)\n", e.what());
    return 1;
  }
  int family_failures = 0;
  for (auto [name, fn] : {std::pair<const char*, int (*)()>{"conv", parity_conv}, {"norm", parity_norm}, {"optim", parity_optim}, {"adashift", parity_adashift_ops}}) {
    if (!only.empty() && only != name) continue;
    try {
      int f = fn();
      std::printf("cuda_check: parity_%s: %d failed\n", name, f);
      family_failures += f;
    } catch (const std::exception& e) {
      std::printf("cuda_check: parity_%s: FAIL (uncaught: %s)\n", name, e.what());
      family_failures += 1;
    }
  }
  try {
    if (cuda_emulated())
      std::printf("cuda_check: benchmark SKIPPED (ADASHIFT_CUDA_EMU=1)\n");
    else if (!only.empty())
      std::printf("cuda_check: benchmark SKIPPED (ADASHIFT_CHECK_ONLY)\n");
    else
      bench(argc > 1 ? argv[1] : nullptr);
  } catch (const std::exception& e) {
    std::printf("cuda_check: benchmark FAIL (uncaught: %s)\n", e.what());
    family_failures += 1;
  }
  std::printf("cuda_check: %d checks, %d failed; op families: %d failed\n", g_checks, g_failures, family_failures);
  return g_failures == 0 && family_failures == 0 ? 0 : 1;
}

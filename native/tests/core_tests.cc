// C++ tests for the CPU backend of adashift_core, through the Tensor-level API.
//
// Every kernel is compared with a naive double-precision reference written here from the
// formulas in ADASHIFT.md (plain nested loops; math.h's gate/gate_grad are not used by the
// references). Self-contained: a tiny TEST/CHECK framework, no dependencies. Prints one line
// per test and a final line "core_tests: N passed, M failed"; exits non-zero on any failure.
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/backend.h"
#include "core/block_cache.h"
#include "core/common.h"
#include "core/device.h"
#include "core/math.h"
#include "core/ops/adashift.h"
#include "core/ops/dense.h"
#include "core/ops/elementwise.h"
#include "core/tensor.h"
#include "core/threadpool.h"
#include "core/cpu/loops.h"
#include "ma_params.h"

using namespace adashift;
using Shape = std::vector<int64_t>;
using Vec = std::vector<double>;

namespace {

// =============================================================================================
// Framework
// =============================================================================================

struct TestCase {
  const char* name;
  void (*fn)();
};
std::vector<TestCase>& registry() {
  static std::vector<TestCase> r;
  return r;
}
struct Registrar {
  Registrar(const char* n, void (*f)()) { registry().push_back({n, f}); }
};
#define TEST(name)                                          \
  void test_##name();                                       \
  Registrar registrar_##name(#name, test_##name);           \
  void test_##name()

struct Stats {
  int64_t checks = 0, failures = 0, elements = 0;
};
Stats g_stats;
std::atomic<const char*> g_current{"(startup)"};
std::atomic<bool> g_done{false};
constexpr int64_t kMaxPrinted = 8;

const char* base_name(const char* path) {
  const char* s = std::strrchr(path, '/');
  return s ? s + 1 : path;
}

void report(bool ok, const char* file, int line, const std::string& msg) {
  ++g_stats.checks;
  if (ok) return;
  if (g_stats.failures < kMaxPrinted)
    std::printf("    FAILED %s:%d: %s\n", base_name(file), line, msg.c_str());
  else if (g_stats.failures == kMaxPrinted)
    std::printf("    (further failures of this test not printed)\n");
  ++g_stats.failures;
}

#define CHECK(cond) report(bool(cond), __FILE__, __LINE__, #cond)
#define CHECK_MSG(cond, ...) \
  report(bool(cond), __FILE__, __LINE__, ::adashift::cat(#cond, " -- ", __VA_ARGS__))

Vec scal(double v) { return Vec{v}; }

// got[i] against ref[i]: |got - ref| <= rtol * |ref| + floor[i] (floor: one value or one per
// element). Every element must be finite and is counted as compared.
void check_close_impl(const char* file, int line, const std::string& what, const float* got,
                      int64_t n, const Vec& ref, const Vec& floor, double rtol) {
  if (int64_t(ref.size()) != n || (floor.size() != 1 && int64_t(floor.size()) != n)) {
    report(false, file, line,
           cat(what, ": size mismatch: tensor ", n, ", reference ", ref.size(), ", floor ",
               floor.size()));
    return;
  }
  int64_t bad = 0, nonfinite = 0, worst = -1;
  double worst_ratio = -1.0, worst_tol = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double g = got[i], r = ref[size_t(i)];
    const double tol = rtol * std::fabs(r) + floor[floor.size() == 1 ? 0 : size_t(i)];
    if (!std::isfinite(g) || !std::isfinite(r)) {
      ++nonfinite;
      if (worst_ratio < std::numeric_limits<double>::infinity()) {
        worst = i;
        worst_ratio = std::numeric_limits<double>::infinity();
        worst_tol = tol;
      }
      continue;
    }
    const double err = std::fabs(g - r);
    if (!(err <= tol)) {
      ++bad;
      const double ratio = tol > 0 ? err / tol : std::numeric_limits<double>::max();
      if (ratio > worst_ratio) {
        worst_ratio = ratio;
        worst = i;
        worst_tol = tol;
      }
    }
  }
  g_stats.elements += n;
  if (std::getenv("CORE_TESTS_VERBOSE")) {
    double m = 0;
    for (int64_t i = 0; i < n; ++i) {
      const double tol = rtol * std::fabs(ref[size_t(i)]) + floor[floor.size() == 1 ? 0 : size_t(i)];
      const double err = std::fabs(double(got[i]) - ref[size_t(i)]);
      m = std::max(m, tol > 0 ? err / tol : (err > 0 ? 1e300 : 0.0));
    }
    std::printf("      margin %.3f  %s\n", m, what.c_str());
  }
  if (bad == 0 && nonfinite == 0) {
    report(true, file, line, "");
    return;
  }
  char buf[256];
  std::snprintf(buf, sizeof buf, "worst at i=%lld: got %.9g, ref %.9g, |err| %.3g > tol %.3g",
                (long long)worst, double(got[worst]), ref[size_t(worst)],
                std::fabs(double(got[worst]) - ref[size_t(worst)]), worst_tol);
  report(false, file, line,
         cat(what, ": ", bad, " of ", n, " elements outside tolerance, ", nonfinite,
             " non-finite; ", buf));
}
#define CHECK_CLOSE(what, tensor, ref, floor, rtol)                                         \
  check_close_impl(__FILE__, __LINE__, what, (tensor).data(), (tensor).numel(), ref, floor, \
                   rtol)
#define CHECK_CLOSE_PTR(what, ptr, n, ref, floor, rtol) \
  check_close_impl(__FILE__, __LINE__, what, ptr, n, ref, floor, rtol)

// Exact (bitwise) equality of a tensor with float values; every element finite.
void check_exact_impl(const char* file, int line, const std::string& what, const Tensor& t,
                      const std::vector<float>& ref) {
  if (t.numel() != int64_t(ref.size())) {
    report(false, file, line, cat(what, ": size ", t.numel(), " vs reference ", ref.size()));
    return;
  }
  int64_t bad = 0, first = -1;
  for (int64_t i = 0; i < t.numel(); ++i) {
    const float g = t.data()[i];
    if (!std::isfinite(g) || std::memcmp(&g, &ref[size_t(i)], sizeof(float)) != 0) {
      if (first < 0) first = i;
      ++bad;
    }
  }
  g_stats.elements += t.numel();
  report(bad == 0, file, line,
         bad == 0 ? std::string()
                  : cat(what, ": ", bad, " of ", t.numel(), " elements differ; first at i=",
                        first, ": got ", t.data()[first], ", expected ", ref[size_t(first)]));
}
#define CHECK_EXACT(what, tensor, ref) check_exact_impl(__FILE__, __LINE__, what, tensor, ref)

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && std::memcmp(a.data(), b.data(), a.nbytes()) == 0;
}

template <class F>
void expect_error_impl(const char* file, int line, const char* expr, ErrorCode code, F&& f) {
  try {
    f();
    report(false, file, line, cat(expr, ": expected ", error_code_name(code), ", nothing thrown"));
  } catch (const Error& e) {
    report(e.code() == code, file, line,
           cat(expr, ": expected ", error_code_name(code), ", got ", error_code_name(e.code()),
               " (", e.what(), ")"));
  } catch (const std::exception& e) {
    report(false, file, line,
           cat(expr, ": expected ", error_code_name(code), ", got a std::exception: ", e.what()));
  }
}
#define EXPECT_ERROR(code, ...)                                                         \
  expect_error_impl(__FILE__, __LINE__, #__VA_ARGS__, ::adashift::ErrorCode::code, \
                    [&]() { (void)(__VA_ARGS__); })

// Same, run in a forked child, for calls that may crash instead of throwing.
template <class F>
void expect_error_isolated_impl(const char* file, int line, const char* expr, ErrorCode code,
                                F&& f) {
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t pid = fork();
  if (pid < 0) {
    report(false, file, line, cat(expr, ": fork failed"));
    return;
  }
  if (pid == 0) {
    int rc = 0;
    try {
      f();
      rc = 10;
    } catch (const Error& e) {
      rc = e.code() == code ? 0 : 11;
    } catch (...) {
      rc = 12;
    }
    _exit(rc);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  std::string why;
  if (WIFSIGNALED(status)) why = cat("the call crashed the process (signal ", WTERMSIG(status), ")");
  else if (WEXITSTATUS(status) == 10) why = "nothing thrown";
  else if (WEXITSTATUS(status) == 11) why = "a different error code was thrown";
  else if (WEXITSTATUS(status) == 12) why = "a non-adashift exception was thrown";
  report(why.empty(), file, line,
         cat(expr, ": expected ", error_code_name(code), "; ", why, " (run in a child process)"));
}
#define EXPECT_ERROR_ISOLATED(code, ...)                                                         \
  expect_error_isolated_impl(__FILE__, __LINE__, #__VA_ARGS__, ::adashift::ErrorCode::code, \
                             [&]() { (void)(__VA_ARGS__); })

// =============================================================================================
// Helpers: random tensors (fixed seeds), host copies
// =============================================================================================

const Device kCPU{};

uint64_t next_seed() {
  static uint64_t s = 0x5EED0000ull;
  return s++;
}
Tensor U(const Shape& s, float lo, float hi) {
  return adashift::rand(s, RandKind::Uniform, lo, hi, next_seed(), 0, kCPU);
}
Tensor G(const Shape& s, float mean, float std) {
  return adashift::rand(s, RandKind::Normal, mean, std, next_seed(), 0, kCPU);
}
Vec tod(const Tensor& t) { return Vec(t.data(), t.data() + t.numel()); }
int64_t numel_of(const Shape& s) {
  int64_t n = 1;
  for (int64_t v : s) n *= v;
  return n;
}
std::string sstr(const Shape& s) { return shape_str(s); }

// Not all zeros and all finite: guards against a vacuous comparison.
bool nontrivial(const Tensor& t) {
  bool nz = false;
  for (int64_t i = 0; i < t.numel(); ++i) {
    if (!std::isfinite(t.data()[i])) return false;
    nz = nz || t.data()[i] != 0.0f;
  }
  return nz;
}

// =============================================================================================
// Double-precision references from the formulas
// =============================================================================================

double sigmoid_d(double x) { return 1.0 / (1.0 + std::exp(-x)); }
const double kSqrt2 = std::sqrt(2.0);
const double kPi = 3.14159265358979323846;
const double kTanhK = std::sqrt(2.0 / kPi);
const double kTanhC = 0.044715;

double relu_d(double x) { return x > 0 ? x : 0.0; }
double silu_d(double x) { return x * sigmoid_d(x); }
double gelu_d(double x) { return 0.5 * x * (1.0 + std::erf(x / kSqrt2)); }
double gelu_tanh_d(double x) {
  return 0.5 * x * (1.0 + std::tanh(kTanhK * (x + kTanhC * x * x * x)));
}
// analytic derivatives (validated against finite differences in math_activations)
double relu_dd(double x) { return x > 0 ? 1.0 : 0.0; }
double silu_dd(double x) {
  const double s = sigmoid_d(x);
  return s + x * s * (1.0 - s);
}
double gelu_dd(double x) {
  return 0.5 * (1.0 + std::erf(x / kSqrt2)) + x * std::exp(-0.5 * x * x) / std::sqrt(2.0 * kPi);
}
double gelu_tanh_dd(double x) {
  const double u = kTanhK * (x + kTanhC * x * x * x), t = std::tanh(u);
  return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * kTanhK * (1.0 + 3.0 * kTanhC * x * x);
}
double gate_d(double x, double s) { return x * sigmoid_d(x + s); }

double central_diff(const std::function<double(double)>& f, double x, double h) {
  return (f(x + h) - f(x - h)) / (2.0 * h);
}

struct ActRef {
  Act act;
  const char* name;
  double (*f)(double);
  double (*df)(double);
};
const ActRef kActs[] = {{Act::ReLU, "relu", relu_d, relu_dd},
                        {Act::GELU, "gelu", gelu_d, gelu_dd},
                        {Act::GELUTanh, "gelu_tanh", gelu_tanh_d, gelu_tanh_dd},
                        {Act::SiLU, "silu", silu_d, silu_dd}};

// AdaShift region grid, straight from ADASHIFT.md: P clamped per axis, cell(h) = floor(h*P/H).
struct RefGrid {
  int64_t N, C, H, W, Ph, Pw, T;
  std::vector<int64_t> token;  // per pixel h*W+w
  std::vector<int64_t> count;  // per token
};
RefGrid ref_grid(const Shape& s, int64_t grid) {
  RefGrid g;
  g.N = s[0]; g.C = s[1]; g.H = s[2]; g.W = s[3];
  g.Ph = std::min(grid, g.H);
  g.Pw = std::min(grid, g.W);
  g.T = g.Ph * g.Pw;
  g.token.resize(static_cast<size_t>(g.H * g.W));
  g.count.assign(size_t(g.T), 0);
  for (int64_t h = 0; h < g.H; ++h)
    for (int64_t w = 0; w < g.W; ++w) {
      const int64_t r = h * g.Ph / g.H, q = w * g.Pw / g.W;
      g.token[size_t(h * g.W + w)] = r * g.Pw + q;
      ++g.count[size_t(r * g.Pw + q)];
    }
  return g;
}
int64_t tok_index(const RefGrid& g, int64_t n, int64_t p, int64_t c) {
  return (n * g.T + p) * g.C + c;
}
int64_t x_index(const RefGrid& g, int64_t n, int64_t c, int64_t hw) {
  return (n * g.C + c) * g.H * g.W + hw;
}

// =============================================================================================
// math.h
// =============================================================================================

TEST(math_sigmoid) {
  std::vector<float> got;
  Vec ref;
  std::vector<float> xs = {0.0f, -0.0f, 88.0f, -88.0f, 100.0f, -100.0f, 1e-8f, -1e-8f};
  for (int i = -4000; i <= 4000; ++i) xs.push_back(float(i) * 0.005f);
  for (float x : xs) {
    got.push_back(math::sigmoid(x));
    ref.push_back(sigmoid_d(x));
  }
  CHECK_CLOSE_PTR("sigmoid", got.data(), int64_t(got.size()), ref, scal(1e-30), 1e-6);
  CHECK(math::sigmoid(0.0f) == 0.5f);
}

TEST(math_vexp) {
  // Relative error on [-87, 88] (every 1e-5 of the range) against double exp.
  double worst = 0;
  for (double v = -87.0; v <= 88.0; v += 1e-5 * 175.0) {
    const float x = float(v);
    worst = std::max(worst, std::fabs(double(math::vexp(x)) - std::exp(double(x))) / std::exp(double(x)));
  }
  CHECK(worst < 3e-7);
  // Saturation and special values: +inf from 127.5 ln 2 = 88.38 (2^128 times e^r; the largest
  // float is e^88.72), 0 below about -87.7.
  const float top = math::vexp(88.0f);
  CHECK(top > 1.6e38f && std::isfinite(top));
  CHECK(std::isfinite(math::vexp(88.3f)) && math::vexp(88.3f) > 2.1e38f && math::vexp(88.4f) == INFINITY);
  CHECK(math::vexp(88.8f) == INFINITY && math::vexp(89.0f) == INFINITY && math::vexp(1e30f) == INFINITY && math::vexp(INFINITY) == INFINITY);
  CHECK(math::vexp(-88.0f) == 0.0f && math::vexp(-89.0f) == 0.0f && math::vexp(-1e30f) == 0.0f && math::vexp(-INFINITY) == 0.0f);
  CHECK(math::vexp(0.0f) == 1.0f && math::vexp(-0.0f) == 1.0f);
  CHECK(std::isnan(math::vexp(NAN)) && std::isnan(math::vexp(-NAN)));
  // sigmoid far below: 0 as in double (an e^88 cap gave 6e-39, so silu(-1e38) was -0.6)
  CHECK(math::sigmoid(-INFINITY) == 0.0f && math::sigmoid(-100.0f) == 0.0f && math::sigmoid(INFINITY) == 1.0f);
  CHECK(math::silu(-1e38f) == 0.0f && math::silu(-3.4e38f) == 0.0f && std::isnan(math::silu(-INFINITY)));
  CHECK(std::isnan(math::sigmoid(NAN)));
  // ReLU as torch.relu: NaN passes, -0 stays -0, the gradient at NaN is dy and at +-0 is 0
  CHECK(std::isnan(math::relu(NAN)) && std::signbit(math::relu(-0.0f)) && math::relu(-1.0f) == 0.0f);
  CHECK(math::relu_grad(NAN, 5.0f) == 5.0f && math::relu_grad(-0.0f, 5.0f) == 0.0f && math::relu_grad(0.0f, 5.0f) == 0.0f);
  // The same through the vectorised loops (vector body and scalar tail): NaN stays NaN,
  // infinities saturate as in the scalar function.
  const float specials[] = {NAN, INFINITY, -INFINITY, 1e30f, -1e30f, 88.5f, -88.5f, 0.5f};
  for (int64_t n : {int64_t(8), int64_t(37)}) {
    std::vector<float> x(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) x[size_t(i)] = specials[i % 8];
    Tensor xt = empty({1, 1, 1, n}, kCPU);
    std::copy(x.begin(), x.end(), xt.data());
    Tensor yt = gate_forward(xt, full({1, 1, 1}, 0.0f, kCPU), 1);
    for (int64_t i = 0; i < n; ++i) {
      const float want = math::gate(x[size_t(i)], 0.0f), got = yt.data()[i];
      CHECK((std::isnan(want) && std::isnan(got)) || want == got);
    }
    CHECK(std::isnan(yt.data()[0]));
  }
}

TEST(math_activations) {
  // Values against the double formulas; gradients against central differences of the double
  // formulas; the test's own analytic derivatives (used as references later) likewise.
  struct M {
    const char* name;
    float (*f)(float);
    float (*g)(float, float);
    double (*ref)(double);
    double (*dref)(double);
  };
  const M ms[] = {{"relu", math::relu, math::relu_grad, relu_d, relu_dd},
                  {"silu", math::silu, math::silu_grad, silu_d, silu_dd},
                  {"gelu", math::gelu, math::gelu_grad, gelu_d, gelu_dd},
                  {"gelu_tanh", math::gelu_tanh, math::gelu_tanh_grad, gelu_tanh_d, gelu_tanh_dd}};
  const uint64_t seed = 77;
  for (const M& m : ms) {
    std::vector<float> fv, gv;
    Vec fr, gr, gfloor, dr_own, dr_fd;
    for (int i = -1600; i <= 1600; ++i) {
      const float x = float(i) * 0.005f;  // [-8, 8]
      if (m.f == math::relu && std::fabs(x) < 1e-3f) continue;  // kink: no derivative
      const float dy = math::rand_normal(seed, 0, i + 1600, 0.0f, 1.5f);
      const double h = 1e-5 * std::max(1.0, std::fabs(double(x)));
      const double fd = central_diff(m.ref, x, h);
      fv.push_back(m.f(x));
      fr.push_back(m.ref(x));
      gv.push_back(m.g(x, dy));
      gr.push_back(double(dy) * fd);
      gfloor.push_back(5e-6 * std::fabs(double(dy)));  // see the note in `activations`
      dr_own.push_back(m.dref(x));
      dr_fd.push_back(fd);
    }
    CHECK_CLOSE_PTR(cat(m.name, " value"), fv.data(), int64_t(fv.size()), fr, scal(1e-6), 1e-5);
    CHECK_CLOSE_PTR(cat(m.name, "_grad vs finite differences"), gv.data(), int64_t(gv.size()), gr,
                    gfloor, 1e-5);
    // the reference derivative itself (double vs double): tight
    double worst = 0;
    for (size_t i = 0; i < dr_own.size(); ++i) worst = std::max(worst, std::fabs(dr_own[i] - dr_fd[i]));
    CHECK_MSG(worst < 1e-8, m.name, ": analytic reference derivative off by ", worst);
  }
  // relu at the kink and signs
  CHECK(math::relu(-0.0f) == 0.0f && math::relu(0.0f) == 0.0f && math::relu(2.5f) == 2.5f);
  CHECK(math::relu_grad(0.0f, 3.0f) == 0.0f && math::relu_grad(1e-30f, 3.0f) == 3.0f &&
        math::relu_grad(-1.0f, 3.0f) == 0.0f);
  // gelu_tanh uses PyTorch's constant; at large |x| both GELUs tend to relu
  CHECK(std::fabs(math::gelu(10.0f) - 10.0f) < 1e-5f && std::fabs(math::gelu(-10.0f)) < 1e-5f);
  CHECK(std::fabs(math::gelu_tanh(10.0f) - 10.0f) < 1e-5f && std::fabs(math::gelu_tanh(-10.0f)) < 1e-5f);
}

TEST(math_gate_grad) {
  std::vector<float> yv, dxv, dsv;
  Vec yr, dxr, dsr, yfl, dxfl, dsfl;
  const float ss[] = {-4.0f, -2.5f, -1.0f, -0.3f, 0.0f, 0.7f, 2.0f, 4.0f};
  int k = 0;
  for (float s : ss)
    for (int i = -120; i <= 120; ++i, ++k) {
      const float x = float(i) * 0.05f;  // [-6, 6]
      const float dy = math::rand_normal(91, 0, k, 0.0f, 1.0f);
      const double hx = 1e-5 * std::max(1.0, std::fabs(double(x)));
      const double fdx = central_diff([&](double v) { return gate_d(v, s); }, x, hx);
      const double fds = central_diff([&](double v) { return gate_d(x, v); }, s, 1e-5);
      const math::GateGrad gg = math::gate_grad(x, s, dy);
      yv.push_back(math::gate(x, s));
      yr.push_back(gate_d(x, s));
      yfl.push_back(1e-7 * std::fabs(x));
      dxv.push_back(gg.dx);
      dxr.push_back(dy * fdx);
      dxfl.push_back(1e-6 * std::fabs(dy) * (1.0 + std::fabs(x)));
      dsv.push_back(gg.ds);
      dsr.push_back(dy * fds);
      dsfl.push_back(1e-6 * std::fabs(dy * x) + 1e-12);
    }
  const int64_t n = int64_t(yv.size());
  CHECK_CLOSE_PTR("gate value", yv.data(), n, yr, yfl, 1e-5);
  CHECK_CLOSE_PTR("gate_grad.dx vs finite differences", dxv.data(), n, dxr, dxfl, 1e-5);
  CHECK_CLOSE_PTR("gate_grad.ds vs finite differences", dsv.data(), n, dsr, dsfl, 1e-5);
}

TEST(math_cells) {
  std::vector<std::pair<int, int>> pairs;
  for (int H = 1; H <= 72; ++H)
    for (int P = 1; P <= H; ++P) pairs.push_back({H, P});
  for (auto hp : std::vector<std::pair<int, int>>{{9, 7}, {14, 3}, {1, 1}, {224, 7}, {1000, 7},
                                                  {1023, 1024 - 1}, {4096, 1024}, {100, 99}})
    pairs.push_back(hp);
  int64_t bad = 0;
  std::string first;
  auto fail = [&](int H, int P, const std::string& what) {
    if (bad++ == 0) first = cat("H=", H, " P=", P, ": ", what);
  };
  for (auto [H, P] : pairs) {
    if (math::cell_begin(0, H, P) != 0) fail(H, P, "cell_begin(0) != 0");
    if (math::cell_begin(P, H, P) != H) fail(H, P, "cell_begin(P) != H");
    std::vector<int> size(size_t(P), 0);
    int prev = 0;
    for (int h = 0; h < H; ++h) {
      const int r = math::cell_of(h, H, P);
      const int expect = int(std::floor(double(h) * P / H));  // independent, in double
      if (r != expect) fail(H, P, cat("cell_of(", h, ") = ", r, ", expected ", expect));
      if (r < 0 || r >= P) { fail(H, P, cat("cell_of(", h, ") out of range")); continue; }
      if (r < prev || r > prev + 1) fail(H, P, cat("cell_of not monotone at h=", h));
      prev = r;
      ++size[size_t(r)];
      if (!(math::cell_begin(r, H, P) <= h && h < math::cell_begin(r + 1, H, P)))
        fail(H, P, cat("h=", h, " not in [cell_begin(", r, "), cell_begin(", r + 1, "))"));
    }
    for (int r = 0; r < P; ++r) {
      const int b = math::cell_begin(r, H, P);
      // the first h with cell_of(h) == r
      int first_h = -1;
      for (int h = 0; h < H; ++h)
        if (math::cell_of(h, H, P) == r) { first_h = h; break; }
      if (b != first_h) fail(H, P, cat("cell_begin(", r, ") = ", b, ", first h in cell is ", first_h));
      if (size[size_t(r)] == 0) fail(H, P, cat("cell ", r, " is empty"));
      if (math::cell_begin(r + 1, H, P) - b != size[size_t(r)])
        fail(H, P, cat("cell ", r, " size disagrees with cell_begin"));
      if (H % P == 0 && size[size_t(r)] != H / P) fail(H, P, "divisible H: cells not H/P rows");
    }
  }
  CHECK_MSG(bad == 0, bad, " violations over ", pairs.size(), " (H, P) pairs; first: ", first);
  // Large H near the 2^30 limit: boundaries only (no int overflow).
  int64_t bad_large = 0;
  for (int H : {(1 << 30) - 1, (1 << 30), 999999937})
    for (int P : {1, 2, 7, 1000, 1024}) {
      for (int r = 0; r <= P; ++r) {
        const int b = math::cell_begin(r, H, P);
        const int64_t expect = (int64_t(r) * H + P - 1) / P;  // ceil(r*H/P)
        if (b != expect) ++bad_large;
        if (r < P && math::cell_of(b, H, P) != r) ++bad_large;
        if (r > 0 && r < P && math::cell_of(b - 1, H, P) != r - 1) ++bad_large;
      }
    }
  CHECK_MSG(bad_large == 0, bad_large, " boundary violations for H near 2^30");
}

// Independent Philox4x32-10 (Random123 definition, full 4-word counter).
std::array<uint32_t, 4> philox_ref(std::array<uint32_t, 4> c, std::array<uint32_t, 2> k) {
  for (int r = 0; r < 10; ++r) {
    if (r > 0) { k[0] += 0x9E3779B9u; k[1] += 0xBB67AE85u; }
    const uint64_t p0 = uint64_t(0xD2511F53u) * c[0], p1 = uint64_t(0xCD9E8D57u) * c[2];
    c = {uint32_t(p1 >> 32) ^ c[1] ^ k[0], uint32_t(p1), uint32_t(p0 >> 32) ^ c[3] ^ k[1],
         uint32_t(p0)};
  }
  return c;
}

TEST(math_philox) {
  // Random123 tests/kat_vectors, philox4x32 10 lines.
  CHECK((philox_ref({0, 0, 0, 0}, {0, 0}) ==
         std::array<uint32_t, 4>{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}));
  CHECK((philox_ref({0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}, {0xffffffffu, 0xffffffffu}) ==
         std::array<uint32_t, 4>{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}));
  CHECK((philox_ref({0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}, {0xa4093822u, 0x299f31d0u}) ==
         std::array<uint32_t, 4>{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}));
  const math::Philox4 z = math::philox(0, 0);
  CHECK(z.v[0] == 0x6627e8d5u && z.v[1] == 0xe169c58du && z.v[2] == 0xbc57ac4cu && z.v[3] == 0x9b00dbd8u);
  // math::philox(seed, counter) == Philox4x32-10 with counter (lo, hi, 0, 0) and key (lo, hi).
  std::mt19937_64 gen(12345);
  int64_t bad = 0;
  for (int i = 0; i < 2000; ++i) {
    const uint64_t seed = gen(), ctr = i < 1000 ? gen() : uint64_t(i);
    const math::Philox4 a = math::philox(seed, ctr);
    const auto b = philox_ref({uint32_t(ctr), uint32_t(ctr >> 32), 0, 0}, {uint32_t(seed), uint32_t(seed >> 32)});
    for (int j = 0; j < 4; ++j) bad += a.v[j] != b[size_t(j)];
  }
  CHECK_MSG(bad == 0, bad, " words differ from the reference Philox");
  CHECK(math::u32_to_unit(0) > 0.0f && math::u32_to_unit(0xffffffffu) == 1.0f);
}

TEST(math_rand_uniform_stats) {
  const int64_t n = 1000000;
  struct R { float lo, hi; };
  for (R r : {R{0.0f, 1.0f}, R{-1.0f, 1.0f}, R{-3.0f, 5.0f}}) {
    double s = 0, s2 = 0;
    int64_t out = 0;
    std::vector<int64_t> bins(10, 0);
    for (int64_t i = 0; i < n; ++i) {
      const float v = math::rand_uniform(2024, 17, i, r.lo, r.hi);
      if (!(v >= r.lo && v < r.hi)) ++out;
      const double u = (double(v) - r.lo) / (double(r.hi) - r.lo);
      s += u;
      s2 += u * u;
      ++bins[size_t(std::min<int64_t>(9, int64_t(u * 10)))];
    }
    const double mean = s / n, var = s2 / n - mean * mean;
    CHECK_MSG(out == 0, out, " samples outside [", r.lo, ", ", r.hi, ")");
    // 5 standard errors: mean 1/sqrt(12n); variance sqrt((1/80 - 1/144)/n); bin sqrt(.09/n)
    CHECK_MSG(std::fabs(mean - 0.5) < 5 * std::sqrt(1.0 / (12.0 * n)), "mean ", mean);
    CHECK_MSG(std::fabs(var - 1.0 / 12) < 5 * std::sqrt((1.0 / 80 - 1.0 / 144) / n), "var ", var);
    for (int b = 0; b < 10; ++b)
      CHECK_MSG(std::fabs(double(bins[size_t(b)]) / n - 0.1) < 5 * std::sqrt(0.09 / n), "bin ", b,
                ": ", bins[size_t(b)]);
  }
}

TEST(math_rand_uniform_upper_bound) {
  // rand_uniform promises [lo, hi). Its largest value comes from a Philox word whose top 24
  // bits are zero (u = 2^-24, 1 - u = 1 - 2^-24). Find such an element and check it against
  // ranges where lo + (hi - lo) * (1 - 2^-24) rounds up to hi in float (e.g. [1, 2)).
  const uint64_t seed = 7;
  int64_t idx = -1;
  for (uint64_t k = 0; k < (uint64_t(1) << 26) && idx < 0; ++k) {
    const math::Philox4 p = math::philox(seed, k);
    for (int j = 0; j < 4; ++j)
      if ((p.v[j] >> 8) == 0) { idx = int64_t(4 * k + j); break; }
  }
  CHECK_MSG(idx >= 0, "no extreme word found");
  if (idx < 0) return;
  struct R { float lo, hi; };
  for (R r : {R{0.0f, 1.0f}, R{-1.0f, 1.0f}, R{1.0f, 2.0f}, R{10.0f, 11.0f}, R{-0.5f, 0.25f}}) {
    const float v = math::rand_uniform(seed, 0, idx, r.lo, r.hi);
    CHECK_MSG(v >= r.lo && v < r.hi, "math::rand_uniform(seed=", seed, ", offset=0, i=", idx, ", ",
              r.lo, ", ", r.hi, ") = ", v, " is not in [lo, hi)");
    Tensor t = adashift::rand({1}, RandKind::Uniform, r.lo, r.hi, seed, uint64_t(idx), kCPU);
    CHECK_MSG(t.data()[0] >= r.lo && t.data()[0] < r.hi, "adashift::rand({1}, Uniform, ", r.lo,
              ", ", r.hi, ", seed ", seed, ", offset ", idx, ") = ", t.data()[0],
              " is not in [lo, hi)");
  }
}

TEST(math_rand_normal_stats) {
  const int64_t n = 1000000;
  double s = 0, s2 = 0;
  int64_t in1 = 0, in2 = 0, bad_scale = 0, nonfinite = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float z = math::rand_normal(99, 3, i, 0.0f, 1.0f);
    if (!std::isfinite(z)) ++nonfinite;
    s += z;
    s2 += double(z) * z;
    in1 += std::fabs(z) < 1.0f;
    in2 += std::fabs(z) < 2.0f;
    if (i < 10000) {
      const float v = math::rand_normal(99, 3, i, 2.0f, 3.0f);
      if (std::fabs(double(v) - (2.0 + 3.0 * double(z))) > 1e-6 * (2.0 + 3.0 * std::fabs(z))) ++bad_scale;
    }
  }
  const double mean = s / n, sd = std::sqrt(s2 / n - mean * mean);
  CHECK(nonfinite == 0);
  // 5 standard errors: mean 1/sqrt(n); sd ~ 1/sqrt(2n); proportions sqrt(p(1-p)/n)
  CHECK_MSG(std::fabs(mean) < 5.0 / std::sqrt(double(n)), "mean ", mean);
  CHECK_MSG(std::fabs(sd - 1.0) < 5.0 / std::sqrt(2.0 * n), "sd ", sd);
  const double p1 = 0.682689492137, p2 = 0.954499736104;
  CHECK_MSG(std::fabs(double(in1) / n - p1) < 5 * std::sqrt(p1 * (1 - p1) / n), "P(|z|<1) ", double(in1) / n);
  CHECK_MSG(std::fabs(double(in2) / n - p2) < 5 * std::sqrt(p2 * (1 - p2) / n), "P(|z|<2) ", double(in2) / n);
  CHECK_MSG(bad_scale == 0, bad_scale, " samples with mean 2, std 3 != 2 + 3 z");
}

TEST(math_rand_stream_is_pure) {
  // Element i of (seed, offset) depends only on (seed, offset + i).
  int64_t bad = 0;
  for (uint64_t seed : {uint64_t(0), uint64_t(1), uint64_t(0xDEADBEEFCAFEull)})
    for (uint64_t off : {uint64_t(0), uint64_t(1), uint64_t(3), uint64_t(4), uint64_t(5),
                         uint64_t(1000003), (uint64_t(1) << 34) + 7})
      for (int64_t i = 0; i < 300; ++i) {
        const uint64_t j = off + uint64_t(i);
        const float a = math::rand_uniform(seed, off, i, -2.0f, 3.0f);
        bad += a != math::rand_uniform(seed, 0, int64_t(j), -2.0f, 3.0f);
        bad += a != math::rand_uniform(seed, j, 0, -2.0f, 3.0f);
        bad += a != math::rand_uniform(seed, off + uint64_t(i / 2), i - i / 2, -2.0f, 3.0f);
        const float b = math::rand_normal(seed, off, i, 0.5f, 2.0f);
        bad += b != math::rand_normal(seed, 0, int64_t(j), 0.5f, 2.0f);
        bad += b != math::rand_normal(seed, j, 0, 0.5f, 2.0f);
      }
  CHECK_MSG(bad == 0, bad, " mismatches");
  // Different seeds (low or high word) and far counters give different streams.
  auto same_count = [](uint64_t s1, uint64_t o1, uint64_t s2, uint64_t o2) {
    int64_t same = 0;
    for (int64_t i = 0; i < 1000; ++i)
      same += math::rand_uniform(s1, o1, i, 0, 1) == math::rand_uniform(s2, o2, i, 0, 1);
    return same;
  };
  CHECK(same_count(5, 0, 6, 0) < 5);
  CHECK(same_count(5, 0, 5 + (uint64_t(1) << 32), 0) < 5);
  CHECK(same_count(5, 0, 5, uint64_t(1) << 34) < 5);
  CHECK(same_count(5, 0, 5, uint64_t(1) << 40) < 5);
  CHECK(same_count(5, 0, 5, 0) == 1000);
}

// =============================================================================================
// elementwise
// =============================================================================================

const int64_t kSizes[] = {1, 7, 1000, 100003};

TEST(rand_tensor) {
  for (int64_t n : kSizes) {
    Tensor u = adashift::rand({n}, RandKind::Uniform, -2.0f, 3.0f, 42, 5, kCPU);
    Tensor g = adashift::rand({n}, RandKind::Normal, 1.0f, 0.5f, 42, 5, kCPU);
    std::vector<float> ur, gr;
    for (int64_t i = 0; i < n; ++i) {
      ur.push_back(math::rand_uniform(42, 5, i, -2.0f, 3.0f));
      gr.push_back(math::rand_normal(42, 5, i, 1.0f, 0.5f));
    }
    CHECK_EXACT(cat("uniform n=", n), u, ur);
    CHECK_EXACT(cat("normal n=", n), g, gr);
  }
  // offset k: the tail of the stream drawn at offset 0
  Tensor a = adashift::rand({70000}, RandKind::Normal, 0.0f, 1.0f, 3, 0, kCPU);
  Tensor b = adashift::rand({7, 9999}, RandKind::Normal, 0.0f, 1.0f, 3, 7, kCPU);
  CHECK(b.shape() == (Shape{7, 9999}));
  CHECK(std::memcmp(a.data() + 7, b.data(), size_t(b.numel()) * 4) == 0);
  Tensor c = adashift::rand({1000}, RandKind::Uniform, 2.5f, 2.5f, 3, 0, kCPU);
  CHECK_EXACT("uniform lo == hi", c, std::vector<float>(1000, 2.5f));
  Tensor d = adashift::rand({1000}, RandKind::Normal, -1.5f, 0.0f, 3, 0, kCPU);
  CHECK_EXACT("normal std 0", d, std::vector<float>(1000, -1.5f));
  Tensor e = adashift::rand({0}, RandKind::Uniform, 0.0f, 1.0f, 3, 0, kCPU);
  CHECK(e.numel() == 0 && e.shape() == Shape{0});
}

TEST(fill_and_full) {
  for (int64_t n : kSizes)
    for (float v : {0.0f, -1.25f, 3.0e7f, 1e-30f}) {
      Tensor t = full({n}, v, kCPU);
      CHECK_EXACT(cat("full n=", n, " v=", v), t, std::vector<float>(size_t(n), v));
      Tensor r = U({n}, -1, 1);
      fill_(r, v);
      CHECK_EXACT(cat("fill_ n=", n, " v=", v), r, std::vector<float>(size_t(n), v));
    }
  Tensor m = full({3, 4, 5}, 0.5f, kCPU);
  CHECK(m.shape() == (Shape{3, 4, 5}) && m.numel() == 60);
  CHECK_EXACT("full rank 3", m, std::vector<float>(60, 0.5f));
  Tensor s = full({}, 2.0f, kCPU);
  CHECK(s.numel() == 1 && s.data()[0] == 2.0f);
  Tensor z = full({0, 3}, 1.0f, kCPU);
  CHECK(z.numel() == 0);
}

TEST(binary_ops) {
  const Binary ops[] = {Binary::Add, Binary::Sub, Binary::Mul, Binary::Div};
  const char* names[] = {"add", "sub", "mul", "div"};
  for (int64_t n : kSizes) {
    Tensor a = G({n}, 0.0f, 2.0f);
    // b away from zero for div: magnitude in [0.5, 2), random sign
    Tensor b = U({n}, 0.5f, 2.0f), sg = U({n}, -1.0f, 1.0f);
    for (int64_t i = 0; i < n; ++i) if (sg.data()[i] < 0) b.data()[i] = -b.data()[i];
    for (int k = 0; k < 4; ++k) {
      Tensor o = binary(ops[k], a, b);
      CHECK(o.shape() == a.shape() && o.data() != a.data() && o.data() != b.data());
      // +, -, *, / in double then rounded to float is the correctly rounded float result
      std::vector<float> ref(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) {
        const double x = a.data()[i], y = b.data()[i];
        const double r = k == 0 ? x + y : k == 1 ? x - y : k == 2 ? x * y : x / y;
        ref[size_t(i)] = float(r);
      }
      CHECK_EXACT(cat(names[k], " n=", n), o, ref);
    }
  }
  Tensor a = U({4, 5, 6}, -1, 1), b = U({4, 5, 6}, 1, 2);
  Tensor o = binary(Binary::Mul, a, b);
  CHECK(o.shape() == (Shape{4, 5, 6}));
}

TEST(axpby_and_axpy) {
  for (int64_t n : kSizes) {
    Tensor a = G({n}, 0.0f, 1.0f), b = G({n}, 1.0f, 2.0f);
    struct AB { float alpha, beta; };
    for (AB ab : {AB{1.0f, 1.0f}, AB{0.5f, -2.0f}, AB{0.0f, 3.0f}, AB{-1.5f, 0.0f}}) {
      Tensor o = axpby(ab.alpha, a, ab.beta, b);
      Vec ref(static_cast<size_t>(n)), fl(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) {
        ref[size_t(i)] = double(ab.alpha) * a.data()[i] + double(ab.beta) * b.data()[i];
        fl[size_t(i)] = 1e-6 * (std::fabs(ab.alpha * a.data()[i]) + std::fabs(ab.beta * b.data()[i]));
      }
      CHECK_CLOSE(cat("axpby n=", n, " alpha=", ab.alpha, " beta=", ab.beta), o, ref, fl, 1e-6);
      Tensor o2 = axpby(ab.alpha, a, ab.beta, Tensor());  // alpha * a + beta (scalar)
      for (int64_t i = 0; i < n; ++i) {
        ref[size_t(i)] = double(ab.alpha) * a.data()[i] + ab.beta;
        fl[size_t(i)] = 1e-6 * (std::fabs(ab.alpha * a.data()[i]) + std::fabs(ab.beta));
      }
      CHECK_CLOSE(cat("axpby (no b) n=", n, " alpha=", ab.alpha, " beta=", ab.beta), o2, ref, fl, 1e-6);
    }
    // y += alpha x, in place
    Tensor y = G({n}, 0.0f, 1.0f), x = G({n}, 0.0f, 1.0f);
    const Vec y0 = tod(y), x0 = tod(x);
    float* yp = y.data();
    Tensor yview = Tensor::view(y, {1, n});
    axpy_(y, -0.75f, x);
    Vec ref(static_cast<size_t>(n)), fl(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      ref[size_t(i)] = y0[size_t(i)] - 0.75 * x0[size_t(i)];
      fl[size_t(i)] = 1e-6 * (std::fabs(y0[size_t(i)]) + 0.75 * std::fabs(x0[size_t(i)]));
    }
    CHECK(y.data() == yp);
    CHECK_CLOSE(cat("axpy_ n=", n), y, ref, fl, 1e-6);
    CHECK_CLOSE(cat("axpy_ seen through a view n=", n), yview, ref, fl, 1e-6);
    CHECK_CLOSE(cat("axpy_ leaves x n=", n), x, x0, scal(0), 0);
  }
  // axpy_ only needs equal element counts
  Tensor y = U({2, 6}, -1, 1), x = U({3, 4}, -1, 1);
  const Vec y0 = tod(y), x0 = tod(x);
  axpy_(y, 2.0f, x);
  Vec ref(12);
  for (int i = 0; i < 12; ++i) ref[size_t(i)] = y0[size_t(i)] + 2.0 * x0[size_t(i)];
  CHECK_CLOSE("axpy_ [2,6] += [3,4]", y, ref, scal(1e-6), 1e-6);
}

TEST(sum_all) {
  for (int64_t n : {int64_t(1), int64_t(7), int64_t(1000), int64_t(4096), int64_t(4097),
                    int64_t(100003), int64_t(3000017)}) {
    for (int k = 0; k < 2; ++k) {
      Tensor x = k == 0 ? U({n}, 0.0f, 1.0f) : G({n}, 0.0f, 1.0f);
      Tensor s = sum_all(x);
      CHECK(s.shape() == Shape{1});
      double ref = 0, l1 = 0;
      for (int64_t i = 0; i < n; ++i) { ref += x.data()[i]; l1 += std::fabs(x.data()[i]); }
      CHECK_CLOSE(cat("sum_all n=", n, k ? " normal" : " uniform"), s, Vec{ref}, scal(1e-12 * l1), 1e-6);
    }
  }
  Tensor e = sum_all(full({0}, 1.0f, kCPU));
  CHECK(e.numel() == 1 && e.data()[0] == 0.0f);
  Tensor m = U({3, 5, 7}, -1, 1);
  double ref = 0;
  for (int64_t i = 0; i < m.numel(); ++i) ref += m.data()[i];
  CHECK_CLOSE("sum_all rank 3", sum_all(m), Vec{ref}, scal(1e-9), 1e-6);
}

TEST(sum_rows) {
  for (int64_t rows : {1, 7, 63, 64, 65, 200, 1000})
    for (int64_t cols : {1, 7, 130}) {
      Tensor x = G({rows, cols}, 0.5f, 1.0f);
      Tensor s = sum_rows(x, rows);
      CHECK(s.shape() == Shape{cols});
      Vec ref(size_t(cols), 0.0), fl(size_t(cols), 0.0);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < cols; ++j) {
          ref[size_t(j)] += x.data()[r * cols + j];
          fl[size_t(j)] += 1e-9 * std::fabs(x.data()[r * cols + j]);
        }
      CHECK_CLOSE(cat("sum_rows ", rows, "x", cols), s, ref, fl, 1e-6);
    }
  // x viewed as [rows, n/rows] regardless of its own shape
  Tensor x = U({4, 6, 5}, -1, 1);
  Tensor s = sum_rows(x, 8);  // [8, 15]
  CHECK(s.shape() == Shape{15});
  Vec ref(15, 0.0);
  for (int64_t r = 0; r < 8; ++r)
    for (int64_t j = 0; j < 15; ++j) ref[size_t(j)] += x.data()[r * 15 + j];
  CHECK_CLOSE("sum_rows [4,6,5] as 8 rows", s, ref, scal(1e-7), 1e-6);
}

TEST(add_rowvec) {
  for (Shape sh : {Shape{1}, Shape{7}, Shape{5, 7}, Shape{3, 4, 130}, Shape{1000, 101}, Shape{100003}}) {
    Tensor x = G(sh, 0.0f, 1.0f), b = G({sh.back()}, 0.0f, 1.0f);
    Tensor y = add_rowvec(x, b);
    CHECK(y.shape() == sh);
    const int64_t cols = sh.back();
    std::vector<float> ref(static_cast<size_t>(x.numel()));
    for (int64_t i = 0; i < x.numel(); ++i)
      ref[size_t(i)] = float(double(x.data()[i]) + double(b.data()[i % cols]));
    CHECK_EXACT(cat("add_rowvec ", sstr(sh)), y, ref);
  }
}

TEST(activations) {
  for (int64_t n : kSizes)
    for (const ActRef& a : kActs) {
      Tensor x = G({n}, 0.0f, 3.0f), dy = G({n}, 0.0f, 1.0f);
      Tensor y = act_forward(a.act, x);
      Tensor dx = act_backward(a.act, x, dy);
      CHECK(y.shape() == x.shape() && dx.shape() == x.shape());
      Vec yr(static_cast<size_t>(n)), dxr(static_cast<size_t>(n)), dxf(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) {
        const double xi = x.data()[i], g = dy.data()[i];
        yr[size_t(i)] = a.f(xi);
        dxr[size_t(i)] = g * a.df(xi);
        // float tanh saturates (tanhf(u) == -1 for u < -9): gelu_tanh_grad is exactly 0 near
        // x = -5 where the true value is -2e-6; hence an absolute floor of 5e-6 |dy|
        dxf[size_t(i)] = 5e-6 * std::fabs(g);
      }
      CHECK_CLOSE(cat(a.name, " forward n=", n), y, yr, scal(2e-6), 1e-5);
      CHECK_CLOSE(cat(a.name, " backward n=", n), dx, dxr, dxf, 1e-5);
    }
  // rank > 1 keeps the shape
  Tensor x = G({3, 4, 5}, 0.0f, 1.0f);
  CHECK(act_forward(Act::SiLU, x).shape() == (Shape{3, 4, 5}));
}

// =============================================================================================
// AdaShift region pooling and gate
// =============================================================================================

// {2, 3, 11, 50}: rows of 48 or more run the shift gradient band by band (cpu/adashift.cc).
const Shape kAdaShapes[] = {{1, 1, 1, 1}, {2, 3, 5, 7},  {3, 5, 9, 9}, {2, 4, 14, 14},
                            {1, 6, 28, 28}, {2, 3, 9, 12}, {1, 2, 3, 12}, {2, 3, 11, 50}};
const int64_t kGrids[] = {1, 3, 7};

TEST(region_grid_clamps) {
  for (const Shape& sh : kAdaShapes)
    for (int64_t grid : {int64_t(1), int64_t(2), int64_t(3), int64_t(7), int64_t(1024)}) {
      Tensor x = U(sh, -1, 1);
      const RegionGrid g = region_grid(x, grid);
      CHECK_MSG(g.N == sh[0] && g.C == sh[1] && g.H == sh[2] && g.W == sh[3], sstr(sh));
      CHECK_MSG(g.Ph == std::min(grid, sh[2]) && g.Pw == std::min(grid, sh[3]), sstr(sh), " grid ",
                grid, ": Ph ", g.Ph, " Pw ", g.Pw);
      CHECK(g.tokens() == int64_t(g.Ph) * g.Pw);
    }
}

TEST(region_pool_forward) {
  for (const Shape& sh : kAdaShapes)
    for (int64_t grid : kGrids) {
      const RefGrid g = ref_grid(sh, grid);
      Tensor x = U(sh, -3, 3);
      Tensor t = region_pool_forward(x, grid);
      CHECK_MSG(t.shape() == (Shape{g.N, g.T, g.C}), sstr(sh), " grid ", grid, " -> ", sstr(t.shape()));
      Vec ref(size_t(g.N * g.T * g.C), 0.0), fl(ref.size(), 0.0);
      for (int64_t n = 0; n < g.N; ++n)
        for (int64_t c = 0; c < g.C; ++c)
          for (int64_t hw = 0; hw < g.H * g.W; ++hw) {
            const int64_t p = g.token[size_t(hw)];
            const double v = x.data()[x_index(g, n, c, hw)];
            ref[size_t(tok_index(g, n, p, c))] += v / double(g.count[size_t(p)]);
            fl[size_t(tok_index(g, n, p, c))] += 1e-5 * std::fabs(v) / double(g.count[size_t(p)]);
          }
      CHECK_CLOSE(cat("region_pool_forward ", sstr(sh), " grid ", grid), t, ref, fl, 1e-5);
    }
  // B form: grid 1 is the global average pool
  Tensor x = U({2, 3, 10, 6}, -1, 1);
  Tensor t = region_pool_forward(x, 1);
  Vec ref(6, 0.0);
  for (int64_t nc = 0; nc < 6; ++nc)
    for (int64_t i = 0; i < 60; ++i) ref[size_t(nc)] += x.data()[nc * 60 + i] / 60.0;
  CHECK_CLOSE("grid 1 == global mean", t, ref, scal(1e-6), 1e-5);
}

TEST(region_pool_backward) {
  for (const Shape& sh : kAdaShapes)
    for (int64_t grid : kGrids) {
      const RefGrid g = ref_grid(sh, grid);
      Tensor dt = G({g.N, g.T, g.C}, 0.0f, 1.0f);
      Tensor dx = region_pool_backward(dt, sh, grid);
      CHECK(dx.shape() == sh);
      Vec ref(static_cast<size_t>(numel_of(sh)));
      for (int64_t n = 0; n < g.N; ++n)
        for (int64_t c = 0; c < g.C; ++c)
          for (int64_t hw = 0; hw < g.H * g.W; ++hw) {
            const int64_t p = g.token[size_t(hw)];
            ref[size_t(x_index(g, n, c, hw))] =
                dt.data()[tok_index(g, n, p, c)] / double(g.count[size_t(p)]);
          }
      CHECK_CLOSE(cat("region_pool_backward ", sstr(sh), " grid ", grid), dx, ref, scal(1e-12), 1e-6);
      // adjoint of the forward pass: <pool(x), dt> == <x, pool^T(dt)>
      Tensor x = U(sh, -1, 1);
      Tensor t = region_pool_forward(x, grid);
      double lhs = 0, rhs = 0, mag = 0;
      for (int64_t i = 0; i < t.numel(); ++i) { lhs += double(t.data()[i]) * dt.data()[i]; mag += std::fabs(t.data()[i] * dt.data()[i]); }
      for (int64_t i = 0; i < x.numel(); ++i) rhs += double(x.data()[i]) * dx.data()[i];
      CHECK_MSG(std::fabs(lhs - rhs) <= 1e-5 * (mag + 1e-6), sstr(sh), " grid ", grid, ": ", lhs, " vs ", rhs);
    }
}

struct GateCase {
  RefGrid g;
  Tensor x, s, dy, dt;
};
GateCase make_gate_case(const Shape& sh, int64_t grid) {
  GateCase k{ref_grid(sh, grid), U(sh, -3, 3), Tensor(), G(sh, 0.0f, 1.0f), Tensor()};
  k.s = U({k.g.N, k.g.T, k.g.C}, -2, 2);
  k.dt = G({k.g.N, k.g.T, k.g.C}, 0.0f, 4.0f);
  return k;
}

TEST(gate_forward) {
  for (const Shape& sh : kAdaShapes)
    for (int64_t grid : kGrids) {
      GateCase k = make_gate_case(sh, grid);
      const RefGrid& g = k.g;
      Tensor y = gate_forward(k.x, k.s, grid);
      CHECK(y.shape() == sh);
      Vec ref(static_cast<size_t>(numel_of(sh))), fl(ref.size());
      for (int64_t n = 0; n < g.N; ++n)
        for (int64_t c = 0; c < g.C; ++c)
          for (int64_t hw = 0; hw < g.H * g.W; ++hw) {
            const int64_t i = x_index(g, n, c, hw);
            const double x = k.x.data()[i];
            const double s = k.s.data()[tok_index(g, n, g.token[size_t(hw)], c)];
            ref[size_t(i)] = x * (1.0 / (1.0 + std::exp(-(x + s))));  // y = x sigmoid(x + s)
            fl[size_t(i)] = 1e-7 * std::fabs(x);
          }
      CHECK_CLOSE(cat("gate_forward ", sstr(sh), " grid ", grid), y, ref, fl, 1e-5);
    }
}

TEST(gate_backward_reduce) {
  for (const Shape& sh : kAdaShapes)
    for (int64_t grid : kGrids) {
      GateCase k = make_gate_case(sh, grid);
      const RefGrid& g = k.g;
      Tensor ds = gate_backward_reduce(k.x, k.dy, k.s, grid);
      CHECK(ds.shape() == (Shape{g.N, g.T, g.C}));
      Vec ref(size_t(g.N * g.T * g.C), 0.0), fl(ref.size(), 0.0);
      for (int64_t n = 0; n < g.N; ++n)
        for (int64_t c = 0; c < g.C; ++c)
          for (int64_t hw = 0; hw < g.H * g.W; ++hw) {
            const int64_t i = x_index(g, n, c, hw), ti = tok_index(g, n, g.token[size_t(hw)], c);
            const double x = k.x.data()[i], dy = k.dy.data()[i], s = k.s.data()[ti];
            const double gg = 1.0 / (1.0 + std::exp(-(x + s)));
            const double term = dy * x * gg * (1.0 - gg);  // ds = sum dy x g (1 - g)
            ref[size_t(ti)] += term;
            fl[size_t(ti)] += 1e-5 * std::fabs(term) + 1e-6 * std::fabs(dy * x);
          }
      CHECK_CLOSE(cat("gate_backward_reduce ", sstr(sh), " grid ", grid), ds, ref, fl, 1e-5);
    }
}

// The gate gradient passes can pool x as they go (AdaShift-MA's backward without a kept
// context): the cell means must be region_pool_forward's to the bit, in both token layouts, and
// the gradients those of the passes without pooling.
TEST(gate_backward_pooled) {
  for (const Shape& sh : kAdaShapes)
    for (int64_t grid : kGrids)
      for (bool cm : {false, true}) {
        GateCase k = make_gate_case(sh, grid);
        RegionGrid g = region_grid(k.x, grid);
        g.channel_major = cm;
        const size_t NT = size_t(g.N * g.tokens() * g.C), E = size_t(k.x.numel());
        std::vector<float> s(NT), ref(NT), pooled(NT, -1.0f), ds0(NT), ds1(NT), dx0(E), dx1(E);
        for (size_t i = 0; i < NT; ++i) s[i] = 0.5f * std::sin(float(i));  // any layout will do
        cpu::region_pool_forward(g, k.x.data(), ref.data());
        const std::string tag = cat(sstr(sh), " grid ", grid, cm ? " channel-major" : "");
        cpu::gate_backward_grads(g, k.x.data(), k.dy.data(), s.data(), dx0.data(), ds0.data());
        cpu::gate_backward_grads(g, k.x.data(), k.dy.data(), s.data(), dx1.data(), ds1.data(), pooled.data());
        CHECK_MSG(std::memcmp(pooled.data(), ref.data(), NT * sizeof(float)) == 0, "grads pooled ", tag);
        CHECK_MSG(dx0 == dx1 && ds0 == ds1, "grads unchanged ", tag);
        std::fill(pooled.begin(), pooled.end(), -1.0f);
        cpu::gate_backward_reduce(g, k.x.data(), k.dy.data(), s.data(), ds0.data());
        cpu::gate_backward_reduce(g, k.x.data(), k.dy.data(), s.data(), ds1.data(), pooled.data());
        CHECK_MSG(std::memcmp(pooled.data(), ref.data(), NT * sizeof(float)) == 0, "reduce pooled ", tag);
        CHECK_MSG(ds0 == ds1, "reduce unchanged ", tag);
      }
}

TEST(gate_backward_apply) {
  for (const Shape& sh : kAdaShapes)
    for (int64_t grid : kGrids)
      for (int with_dt = 0; with_dt < 2; ++with_dt) {
        GateCase k = make_gate_case(sh, grid);
        const RefGrid& g = k.g;
        Tensor dx = gate_backward_apply(k.x, k.dy, k.s, with_dt ? k.dt : Tensor(), grid);
        CHECK(dx.shape() == sh);
        Vec ref(static_cast<size_t>(numel_of(sh))), fl(ref.size());
        for (int64_t n = 0; n < g.N; ++n)
          for (int64_t c = 0; c < g.C; ++c)
            for (int64_t hw = 0; hw < g.H * g.W; ++hw) {
              const int64_t i = x_index(g, n, c, hw), p = g.token[size_t(hw)];
              const int64_t ti = tok_index(g, n, p, c);
              const double x = k.x.data()[i], dy = k.dy.data()[i], s = k.s.data()[ti];
              const double gg = 1.0 / (1.0 + std::exp(-(x + s)));
              const double direct = dy * (gg + x * gg * (1.0 - gg));
              const double pooled = with_dt ? k.dt.data()[ti] / double(g.count[size_t(p)]) : 0.0;
              ref[size_t(i)] = direct + pooled;
              fl[size_t(i)] = 1e-5 * (std::fabs(dy * gg) + std::fabs(dy * x * gg * (1 - gg)) +
                                      std::fabs(pooled)) +
                              1e-6 * std::fabs(dy * x);
            }
        CHECK_CLOSE(cat("gate_backward_apply ", sstr(sh), " grid ", grid, with_dt ? " with dt" : " without dt"),
                    dx, ref, fl, 1e-5);
      }
}

TEST(adashift_empty_edges) {
  // N = 0: empty outputs of the right shapes
  Tensor x0 = U({0, 3, 5, 5}, -1, 1);
  Tensor t0 = region_pool_forward(x0, 3);
  CHECK(t0.shape() == (Shape{0, 9, 3}));
  Tensor s0 = full({0, 9, 3}, 0.5f, kCPU);
  CHECK(gate_forward(x0, s0, 3).shape() == (Shape{0, 3, 5, 5}));
  CHECK(gate_backward_reduce(x0, x0, s0, 3).shape() == (Shape{0, 9, 3}));
  CHECK(gate_backward_apply(x0, x0, s0, Tensor(), 3).shape() == (Shape{0, 3, 5, 5}));
  CHECK(region_pool_backward(s0, {0, 3, 5, 5}, 3).shape() == (Shape{0, 3, 5, 5}));
  // H = 0 (no pixels): the pooled mean is undefined; the shift gradient is zero
  Tensor xh = full({2, 3, 0, 5}, 1.0f, kCPU);
  EXPECT_ERROR(Shape, region_pool_forward(xh, 3));
  Tensor sh = U({2, 3, 3}, -1, 1);  // Ph = 1 (H clamps to >= 1), Pw = 3
  Tensor ds = gate_backward_reduce(xh, xh, sh, 3);
  CHECK(ds.shape() == (Shape{2, 3, 3}));
  CHECK_EXACT("ds with no pixels", ds, std::vector<float>(18, 0.0f));
  CHECK(gate_forward(xh, sh, 3).numel() == 0);
}

// =============================================================================================
// dense: layernorm, softmax, matmul, permute
// =============================================================================================

struct LNRef {
  Vec y, mean, rstd, dx, dw, db, y_fl, dx_fl, dw_fl, db_fl;
};
LNRef ln_ref(const float* x, const float* w, const float* b, const float* dy, int64_t rows,
             int64_t C, double eps) {
  LNRef o;
  o.y.resize(static_cast<size_t>(rows * C)); o.y_fl.resize(o.y.size());
  o.dx.resize(o.y.size()); o.dx_fl.resize(o.y.size());
  o.dw.assign(size_t(C), 0.0); o.db.assign(size_t(C), 0.0);
  o.dw_fl.assign(size_t(C), 0.0); o.db_fl.assign(size_t(C), 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * C;
    double mu = 0;
    for (int64_t j = 0; j < C; ++j) mu += xr[j];
    mu /= double(C);
    double var = 0;
    for (int64_t j = 0; j < C; ++j) var += (xr[j] - mu) * (xr[j] - mu);
    var /= double(C);
    const double rs = 1.0 / std::sqrt(var + eps);
    o.mean.push_back(mu);
    o.rstd.push_back(rs);
    // dx = rstd (g - mean(g) - xhat mean(g xhat)), g = dy w
    double mg = 0, mgx = 0, mag = 0, magx = 0;
    for (int64_t j = 0; j < C; ++j) {
      const double xh = (xr[j] - mu) * rs, gj = double(dy[r * C + j]) * w[j];
      mg += gj / double(C);
      mgx += gj * xh / double(C);
      mag += std::fabs(gj) / double(C);
      magx += std::fabs(gj * xh) / double(C);
    }
    for (int64_t j = 0; j < C; ++j) {
      const size_t i = size_t(r * C + j);
      const double xh = (xr[j] - mu) * rs, gj = double(dy[i]) * w[j];
      o.y[i] = xh * w[j] + b[j];
      o.y_fl[i] = 1e-5 * ((std::fabs(xr[j]) + std::fabs(mu)) * rs * std::fabs(w[j]) + std::fabs(b[j]));
      o.dx[i] = rs * (gj - mg - xh * mgx);
      o.dx_fl[i] = 1e-5 * rs * (std::fabs(gj) + mag + std::fabs(xh) * magx) +
                   1e-6 * rs * (std::fabs(xr[j]) + std::fabs(mu)) * rs * magx;
      o.dw[size_t(j)] += dy[i] * xh;
      o.db[size_t(j)] += dy[i];
      o.dw_fl[size_t(j)] += 1e-5 * std::fabs(dy[i]) * (std::fabs(xr[j]) + std::fabs(mu)) * rs;
      o.db_fl[size_t(j)] += 1e-6 * std::fabs(dy[i]);
    }
  }
  return o;
}

TEST(layernorm_reference_vs_finite_differences) {
  // Validates the test's own LayerNorm backward formula on a small case.
  const int64_t rows = 2, C = 5;
  const double eps = 1e-5;
  Tensor x = G({rows, C}, 0.3f, 1.5f), w = G({C}, 1.0f, 0.5f), b = G({C}, 0.0f, 0.5f),
         dy = G({rows, C}, 0.0f, 1.0f);
  LNRef r = ln_ref(x.data(), w.data(), b.data(), dy.data(), rows, C, eps);
  auto loss = [&](const std::vector<double>& xv, const std::vector<double>& wv, const std::vector<double>& bv) {
    double L = 0;
    for (int64_t rr = 0; rr < rows; ++rr) {
      double mu = 0, var = 0;
      for (int64_t j = 0; j < C; ++j) mu += xv[size_t(rr * C + j)] / C;
      for (int64_t j = 0; j < C; ++j) var += (xv[size_t(rr * C + j)] - mu) * (xv[size_t(rr * C + j)] - mu) / C;
      for (int64_t j = 0; j < C; ++j)
        L += dy.data()[rr * C + j] * ((xv[size_t(rr * C + j)] - mu) / std::sqrt(var + eps) * wv[size_t(j)] + bv[size_t(j)]);
    }
    return L;
  };
  Vec xv = tod(x), wv = tod(w), bv = tod(b);
  double worst = 0;
  const double h = 1e-6;
  for (size_t i = 0; i < xv.size(); ++i) {
    Vec p = xv, m = xv;
    p[i] += h; m[i] -= h;
    worst = std::max(worst, std::fabs((loss(p, wv, bv) - loss(m, wv, bv)) / (2 * h) - r.dx[i]));
  }
  for (size_t j = 0; j < wv.size(); ++j) {
    Vec p = wv, m = wv;
    p[j] += h; m[j] -= h;
    worst = std::max(worst, std::fabs((loss(xv, p, bv) - loss(xv, m, bv)) / (2 * h) - r.dw[j]));
    p = bv; m = bv;
    p[j] += h; m[j] -= h;
    worst = std::max(worst, std::fabs((loss(xv, wv, p) - loss(xv, wv, m)) / (2 * h) - r.db[j]));
  }
  CHECK_MSG(worst < 1e-6, "reference LayerNorm gradient off by ", worst);
}

TEST(layernorm) {
  const float eps = 1e-5f;
  for (int64_t C : {1, 3, 64, 130})
    for (Shape sh : {Shape{C}, Shape{1, C}, Shape{37, C}, Shape{130, C}, Shape{2, 65, C}}) {
      const int64_t rows = numel_of(sh) / C;
      Tensor x = G(sh, 0.3f, 1.5f), w = G({C}, 1.0f, 0.5f), b = G({C}, 0.0f, 0.5f),
             dy = G(sh, 0.0f, 1.0f);
      LayerNormOut f = layernorm_forward(x, w, b, eps);
      CHECK(f.y.shape() == sh && f.mean.shape() == Shape{rows} && f.rstd.shape() == Shape{rows});
      LNRef r = ln_ref(x.data(), w.data(), b.data(), dy.data(), rows, C, eps);
      const std::string tag = cat(sstr(sh));
      CHECK_CLOSE(cat("layernorm y ", tag), f.y, r.y, r.y_fl, 1e-5);
      CHECK_CLOSE(cat("layernorm mean ", tag), f.mean, r.mean, scal(1e-7), 1e-6);
      CHECK_CLOSE(cat("layernorm rstd ", tag), f.rstd, r.rstd, scal(0), 1e-5);
      LayerNormGrad gr = layernorm_backward(dy, x, f.mean, f.rstd, w);
      CHECK(gr.dx.shape() == sh && gr.dweight.shape() == Shape{C} && gr.dbias.shape() == Shape{C});
      CHECK_CLOSE(cat("layernorm dx ", tag), gr.dx, r.dx, r.dx_fl, 1e-5);
      CHECK_CLOSE(cat("layernorm dweight ", tag), gr.dweight, r.dw, r.dw_fl, 1e-5);
      CHECK_CLOSE(cat("layernorm dbias ", tag), gr.dbias, r.db, r.db_fl, 1e-5);
    }
  // C = 1: the row is its own mean; y = bias, rstd = 1/sqrt(eps)
  Tensor x = G({5, 1}, 2.0f, 1.0f), w = full({1}, 3.0f, kCPU), b = full({1}, 0.25f, kCPU);
  LayerNormOut f = layernorm_forward(x, w, b, 1e-6f);
  CHECK_EXACT("C=1 y == bias", f.y, std::vector<float>(5, 0.25f));
}

TEST(softmax) {
  for (int64_t n : {1, 3, 64, 130})
    for (Shape sh : {Shape{n}, Shape{37, n}, Shape{130, n}, Shape{2, 3, n}}) {
      Tensor x = G(sh, 0.5f, 3.0f), dy = G(sh, 0.0f, 1.0f);
      Tensor y = softmax_forward(x);
      CHECK(y.shape() == sh);
      const int64_t rows = numel_of(sh) / n;
      Vec yr(static_cast<size_t>(rows * n)), dxr(yr.size()), dxf(yr.size());
      for (int64_t r = 0; r < rows; ++r) {
        const float* xr = x.data() + r * n;
        double mx = xr[0], s = 0;
        for (int64_t j = 0; j < n; ++j) mx = std::max(mx, double(xr[j]));
        for (int64_t j = 0; j < n; ++j) s += std::exp(xr[j] - mx);
        for (int64_t j = 0; j < n; ++j) yr[size_t(r * n + j)] = std::exp(xr[j] - mx) / s;
      }
      CHECK_CLOSE(cat("softmax forward ", sstr(sh)), y, yr, scal(1e-30), 1e-5);
      Tensor dx = softmax_backward(y, dy);
      CHECK(dx.shape() == sh);
      for (int64_t r = 0; r < rows; ++r) {
        // dx = y (dy - sum_k y_k dy_k), from the saved (float) output y
        double s = 0, sa = 0;
        for (int64_t j = 0; j < n; ++j) {
          s += double(y.data()[r * n + j]) * dy.data()[r * n + j];
          sa += std::fabs(double(y.data()[r * n + j]) * dy.data()[r * n + j]);
        }
        for (int64_t j = 0; j < n; ++j) {
          const size_t i = size_t(r * n + j);
          const double yi = y.data()[i], gi = dy.data()[i];
          dxr[i] = yi * (gi - s);
          dxf[i] = 1e-5 * yi * (std::fabs(gi) + sa);
        }
      }
      CHECK_CLOSE(cat("softmax backward ", sstr(sh)), dx, dxr, dxf, 1e-5);
    }
  // softmax of a constant row is uniform; n = 1 gives exactly 1
  Tensor c = softmax_forward(full({4, 8}, 3.0f, kCPU));
  CHECK_CLOSE("softmax of constant row", c, Vec(32, 0.125), scal(1e-7), 0);
  CHECK_EXACT("softmax n=1", softmax_forward(G({9, 1}, 0.0f, 5.0f)), std::vector<float>(9, 1.0f));
}

// Short rows copied between strided blocks (a plane into its padded copy, every element or every
// second or third; add_rows: a GEMM tile's rows into the output plus the bias): every row length
// around the vector width and its tail, each element where it belongs, nothing written past a
// row's end (the guard values around the rows stay), and nothing read past the last element a
// row takes (the last row ends where an inaccessible page begins: a read past it kills the test
// process).
TEST(copy_rows) {
  constexpr float kGuard = -12345.0f, kBias = 0.3f;
  const size_t page = size_t(sysconf(_SC_PAGESIZE));
  char* pages = static_cast<char*>(mmap(nullptr, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  CHECK(pages != MAP_FAILED);
  if (pages == MAP_FAILED) return;
  CHECK(mprotect(pages + page, page, PROT_NONE) == 0);
  int64_t bad = 0;
  // step 0: add_rows (step 1 with the bias added)
  for (int64_t step : {1, 2, 3, 0})
    for (int64_t n = 0; n <= 50; ++n)
      for (int64_t rows : {1, 2, 5}) {
        const int64_t st = step ? step : 1;
        const int64_t span = n ? (n - 1) * st + 1 : 0;  // source elements a row reaches
        const int64_t lds = span + 3, ldd = n + 5;
        const int64_t src_len = (rows - 1) * lds + span;
        float* src = reinterpret_cast<float*>(pages + page) - src_len;
        std::vector<float> dst(size_t(rows * ldd + 32), kGuard);
        for (int64_t i = 0; i < src_len; ++i) src[i] = float(i) + 0.5f;
        if (step) cpu::loops::copy_rows(src, lds, step, dst.data() + 1, ldd, rows, n);
        else cpu::loops::add_rows(src, lds, kBias, dst.data() + 1, ldd, rows, n);
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t k = -1; k < ldd - 1; ++k) {
            const float got = dst[size_t(1 + r * ldd + k)];
            const float v = k >= 0 && k < n ? src[r * lds + k * st] : 0.0f;
            const float want = k >= 0 && k < n ? (step ? v : v + kBias) : kGuard;
            if (got != want && bad++ < 4)
              CHECK_MSG(false, "step=", step, " n=", n, " rows=", rows, " r=", r, " k=", k, ": ", got, " != ", want);
          }
        if (dst.back() != kGuard && bad++ < 4) CHECK_MSG(false, "step=", step, " n=", n, " rows=", rows, ": written past the block");
      }
  CHECK_MSG(bad == 0, bad, " misplaced elements");
  munmap(pages, 2 * page);
}

TEST(softmax_backward_reference_vs_finite_differences) {
  const int64_t n = 6;
  Tensor x = G({n}, 0.0f, 2.0f), dy = G({n}, 0.0f, 1.0f);
  auto sm = [&](const Vec& v) {
    double mx = *std::max_element(v.begin(), v.end()), s = 0;
    Vec y(v.size());
    for (size_t j = 0; j < v.size(); ++j) s += std::exp(v[j] - mx);
    for (size_t j = 0; j < v.size(); ++j) y[j] = std::exp(v[j] - mx) / s;
    return y;
  };
  Vec xv = tod(x), y = sm(xv);
  double s = 0;
  for (int64_t j = 0; j < n; ++j) s += y[size_t(j)] * dy.data()[j];
  double worst = 0;
  for (int64_t i = 0; i < n; ++i) {
    Vec p = xv, m = xv;
    p[size_t(i)] += 1e-6; m[size_t(i)] -= 1e-6;
    Vec yp = sm(p), ym = sm(m);
    double fd = 0;
    for (int64_t j = 0; j < n; ++j) fd += dy.data()[j] * (yp[size_t(j)] - ym[size_t(j)]) / 2e-6;
    worst = std::max(worst, std::fabs(fd - y[size_t(i)] * (dy.data()[i] - s)));
  }
  CHECK_MSG(worst < 1e-7, "reference softmax gradient off by ", worst);
}

TEST(dense_empty_edges) {
  // zero rows: empty outputs, zero parameter gradients
  Tensor x = full({0, 4}, 1.0f, kCPU), w = U({4}, 0.5f, 1.5f), b = U({4}, -1, 1);
  LayerNormOut f = layernorm_forward(x, w, b, 1e-5f);
  CHECK(f.y.shape() == (Shape{0, 4}) && f.mean.shape() == Shape{0} && f.rstd.shape() == Shape{0});
  LayerNormGrad g = layernorm_backward(x, x, f.mean, f.rstd, w);
  CHECK(g.dx.shape() == (Shape{0, 4}));
  CHECK_EXACT("layernorm dweight, no rows", g.dweight, std::vector<float>(4, 0.0f));
  CHECK_EXACT("layernorm dbias, no rows", g.dbias, std::vector<float>(4, 0.0f));
  CHECK(softmax_forward(full({0, 5}, 1.0f, kCPU)).shape() == (Shape{0, 5}));
  CHECK(softmax_backward(full({0, 5}, 1.0f, kCPU), full({0, 5}, 1.0f, kCPU)).shape() == (Shape{0, 5}));
  CHECK(matmul(U({0, 3}, 0, 1), U({3, 4}, 0, 1), false, false).shape() == (Shape{0, 4}));
  CHECK(matmul(U({2, 3, 4}, 0, 1), U({4, 0}, 0, 1), false, false).shape() == (Shape{2, 3, 0}));
  CHECK(permute(full({2, 0, 3}, 1.0f, kCPU), {2, 0, 1}).shape() == (Shape{3, 2, 0}));
  CHECK(sum_rows(full({3, 0}, 1.0f, kCPU), 3).shape() == Shape{0});
  // a rank-0 permute is a copy
  Tensor s0 = full({}, 4.5f, kCPU);
  Tensor p0 = permute(s0, {});
  CHECK(p0.shape() == Shape{} && p0.data()[0] == 4.5f && p0.data() != s0.data());
}

// out[b] = op(A[b]) @ op(B[b]) in double, with rank-2 operands shared across the batch.
Vec matmul_ref(const Tensor& a, const Tensor& b, bool ta, bool tb, int64_t batch, int64_t M,
               int64_t N, int64_t K, Vec* floor) {
  Vec out(size_t(batch * M * N), 0.0);
  floor->assign(out.size(), 0.0);
  const int64_t sa = a.dim() == 3 ? M * K : 0, sb = b.dim() == 3 ? K * N : 0;
  for (int64_t e = 0; e < batch; ++e)
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) {
        double acc = 0, mag = 0;
        for (int64_t k = 0; k < K; ++k) {
          const double av = a.data()[e * sa + (ta ? k * M + i : i * K + k)];
          const double bv = b.data()[e * sb + (tb ? j * K + k : k * N + j)];
          acc += av * bv;
          mag += std::fabs(av * bv);
        }
        out[size_t((e * M + i) * N + j)] = acc;
        (*floor)[size_t((e * M + i) * N + j)] = 1e-5 * mag;
      }
  return out;
}

TEST(matmul) {
  struct MNK { int64_t M, N, K; };
  const MNK dims[] = {{1, 1, 1}, {1, 5, 3}, {4, 1, 6}, {5, 6, 1}, {49, 49, 13}, {130, 70, 33}, {20, 17, 300}};
  // batch modes: 0: [M,K]@[K,N]; 1: batched both (3); 2: shared A (rank 2) with batched B (3);
  // 3: batched A (2) with shared B; 4: batch of one, rank 3 both
  for (const MNK& d : dims)
    for (int mode = 0; mode < 5; ++mode)
      for (int t = 0; t < 4; ++t) {
        const bool ta = t & 1, tb = t & 2;
        const int64_t batch = mode == 0 ? 1 : mode == 1 ? 3 : mode == 2 ? 3 : mode == 3 ? 2 : 1;
        const bool a3 = mode == 1 || mode == 3 || mode == 4, b3 = mode == 1 || mode == 2 || mode == 4;
        Shape as = ta ? Shape{d.K, d.M} : Shape{d.M, d.K};
        Shape bs = tb ? Shape{d.N, d.K} : Shape{d.K, d.N};
        if (a3) as.insert(as.begin(), batch);
        if (b3) bs.insert(bs.begin(), batch);
        Tensor a = G(as, 0.0f, 1.0f), b = G(bs, 0.0f, 1.0f);
        Tensor c = matmul(a, b, ta, tb);
        const Shape expect = (a3 || b3) ? Shape{batch, d.M, d.N} : Shape{d.M, d.N};
        const std::string tag = cat(sstr(as), ta ? "^T" : "", " @ ", sstr(bs), tb ? "^T" : "");
        CHECK_MSG(c.shape() == expect, tag, " -> ", sstr(c.shape()));
        Vec fl;
        Vec ref = matmul_ref(a, b, ta, tb, batch, d.M, d.N, d.K, &fl);
        CHECK_CLOSE(cat("matmul ", tag), c, ref, fl, 1e-5);
      }
  // K = 0: zeros
  Tensor z = matmul(full({3, 0}, 1.0f, kCPU), full({0, 4}, 1.0f, kCPU), false, false);
  CHECK(z.shape() == (Shape{3, 4}));
  CHECK_EXACT("matmul K=0", z, std::vector<float>(12, 0.0f));
}

TEST(permute) {
  std::mt19937 gen(2468);
  for (int rank = 0; rank <= 6; ++rank) {
    for (int trial = 0; trial < 6; ++trial) {
      Shape sh(static_cast<size_t>(rank));
      for (auto& v : sh) v = 1 + int64_t(gen() % 5);
      if (rank == 3 && trial == 5) sh = {40, 30, 50};  // large enough to run in parallel
      std::vector<int64_t> perm(static_cast<size_t>(rank));
      for (int i = 0; i < rank; ++i) perm[size_t(i)] = i;
      if (trial == 1) std::reverse(perm.begin(), perm.end());
      if (trial >= 2) std::shuffle(perm.begin(), perm.end(), gen);
      Tensor x = U(sh, -1, 1);
      Tensor y = permute(x, perm);
      Shape oshape(static_cast<size_t>(rank));
      for (int i = 0; i < rank; ++i) oshape[size_t(i)] = sh[size_t(perm[size_t(i)])];
      CHECK_MSG(y.shape() == oshape, sstr(sh), " perm ", sstr(perm), " -> ", sstr(y.shape()));
      // scatter each input element to its output position
      std::vector<int64_t> ostride(size_t(rank), 1);
      for (int i = rank - 2; i >= 0; --i) ostride[size_t(i)] = ostride[size_t(i + 1)] * oshape[size_t(i + 1)];
      std::vector<float> ref(static_cast<size_t>(x.numel()));
      std::vector<int64_t> idx(static_cast<size_t>(rank));
      for (int64_t lin = 0; lin < x.numel(); ++lin) {
        int64_t rem = lin;
        for (int i = rank - 1; i >= 0; --i) { idx[size_t(i)] = rem % sh[size_t(i)]; rem /= sh[size_t(i)]; }
        int64_t o = 0;
        for (int i = 0; i < rank; ++i) o += idx[size_t(perm[size_t(i)])] * ostride[size_t(i)];
        ref[size_t(o)] = x.data()[lin];
      }
      CHECK_EXACT(cat("permute ", sstr(sh), " by ", sstr(perm)), y, ref);
    }
  }
}

// =============================================================================================
// errors
// =============================================================================================

TEST(errors_tensor_and_device) {
  EXPECT_ERROR(Shape, Tensor(Shape(9, 1), kCPU));
  EXPECT_ERROR(Shape, Tensor({2, -1}, kCPU));
  EXPECT_ERROR(Shape, Tensor({int64_t(1) << 21, int64_t(1) << 20}, kCPU));
  EXPECT_ERROR(Shape, empty({-3}, kCPU));
  Tensor t = U({3, 4}, -1, 1);
  EXPECT_ERROR(Shape, Tensor::view(t, {5, 2}));
  EXPECT_ERROR(Shape, Tensor::view(t, {-12}));
  const BackendInfo info = backend_info();
  CHECK(info.cpu_threads == num_threads());
  const Device cuda0{DeviceType::CUDA, 0};
  const Device bogus{DeviceType(7), 0};
  require_device(kCPU);  // never throws
  EXPECT_ERROR(Device, require_device(bogus));
  EXPECT_ERROR(Device, Tensor({2}, bogus));
  if (!info.cuda_compiled) {
    EXPECT_ERROR(NoCuda, synchronize(cuda0));
    EXPECT_ERROR(NoCuda, copy_bytes(cuda0, nullptr, kCPU, t.data(), 4));
  }
  if (!info.cuda_usable) {
    CHECK(!info.reason.empty());
    EXPECT_ERROR(NoCuda, require_device(cuda0));
    EXPECT_ERROR(NoCuda, Tensor({2}, cuda0));
    EXPECT_ERROR(NoCuda, empty({2, 3}, cuda0));
    EXPECT_ERROR(NoCuda, full({2, 3}, 1.0f, cuda0));
    EXPECT_ERROR(NoCuda, adashift::rand({2}, RandKind::Uniform, 0, 1, 1, 0, cuda0));
    EXPECT_ERROR(NoCuda, to_device(t, cuda0));
  } else {
    // A GPU is here: mixing devices is ERR_DEVICE; a device that does not exist too.
    EXPECT_ERROR(Device, require_device(Device{DeviceType::CUDA, int(info.devices.size())}));
    EXPECT_ERROR(Device, require_device(Device{DeviceType::CUDA, -1}));
    Tensor g = to_device(t, cuda0);
    CHECK(g.device() == cuda0);
    EXPECT_ERROR(Device, binary(Binary::Add, t, g));
    EXPECT_ERROR(Device, axpby(1.0f, t, 1.0f, g));
    EXPECT_ERROR(Device, axpy_(t, 1.0f, g));
    EXPECT_ERROR(Device, add_rowvec(t, to_device(U({4}, 0, 1), cuda0)));
    EXPECT_ERROR(Device, act_backward(Act::ReLU, t, g));
    EXPECT_ERROR(Device, softmax_backward(t, g));
    EXPECT_ERROR(Device, matmul(t, to_device(U({4, 2}, 0, 1), cuda0), false, false));
    EXPECT_ERROR(Device, layernorm_forward(t, to_device(U({4}, 0, 1), cuda0), U({4}, 0, 1), 1e-5f));
    Tensor x = U({1, 2, 3, 3}, -1, 1);
    EXPECT_ERROR(Device, gate_forward(x, to_device(U({1, 1, 2}, 0, 1), cuda0), 1));
    // layernorm_backward must check the saved statistics and the weight too. Isolated: an
    // unchecked call launches a CUDA kernel on host pointers (a CUDA call in the forked child
    // fails with another error, which is reported as a failure, as it should be).
    Tensor lx = U({5, 4}, -1, 1), lw = U({4}, 0.5f, 1.5f), lb = U({4}, -1, 1);
    LayerNormOut fc = layernorm_forward(lx, lw, lb, 1e-5f);
    Tensor gx = to_device(lx, cuda0), gw = to_device(lw, cuda0), gdy = to_device(lx, cuda0);
    LayerNormOut fg = layernorm_forward(gx, gw, to_device(lb, cuda0), 1e-5f);
    synchronize(cuda0);
    EXPECT_ERROR_ISOLATED(Device, layernorm_backward(gdy, gx, fc.mean, fg.rstd, gw));
    EXPECT_ERROR_ISOLATED(Device, layernorm_backward(gdy, gx, fg.mean, fc.rstd, gw));
    EXPECT_ERROR_ISOLATED(Device, layernorm_backward(gdy, gx, fg.mean, fg.rstd, lw));
  }
}

TEST(errors_elementwise) {
  Tensor a = U({3, 4}, -1, 1), b = U({4, 3}, -1, 1), c = U({12}, -1, 1);
  for (Binary op : {Binary::Add, Binary::Sub, Binary::Mul, Binary::Div}) {
    EXPECT_ERROR(Shape, binary(op, a, b));
    EXPECT_ERROR(Shape, binary(op, a, c));
  }
  EXPECT_ERROR(Shape, axpby(1.0f, a, 2.0f, b));
  EXPECT_ERROR(Shape, axpy_(a, 1.0f, U({13}, 0, 1)));
  EXPECT_ERROR(Arg, adashift::rand({2}, RandKind::Uniform, 1.0f, 0.0f, 1, 0, kCPU));
  EXPECT_ERROR(Arg, adashift::rand({2}, RandKind::Uniform, 0.0f, std::numeric_limits<float>::infinity(), 1, 0, kCPU));
  EXPECT_ERROR(Arg, adashift::rand({2}, RandKind::Uniform, std::nanf(""), 1.0f, 1, 0, kCPU));
  EXPECT_ERROR(Arg, adashift::rand({2}, RandKind::Normal, 0.0f, -1.0f, 1, 0, kCPU));
  EXPECT_ERROR(Arg, adashift::rand({2}, RandKind::Normal, std::nanf(""), 1.0f, 1, 0, kCPU));
  EXPECT_ERROR(Shape, adashift::rand({-2}, RandKind::Normal, 0.0f, 1.0f, 1, 0, kCPU));
  EXPECT_ERROR(Shape, full(Shape(9, 1), 0.0f, kCPU));
  EXPECT_ERROR(Shape, sum_rows(a, 0));
  EXPECT_ERROR(Shape, sum_rows(a, -1));
  EXPECT_ERROR(Shape, sum_rows(a, 5));
  EXPECT_ERROR(Shape, add_rowvec(a, U({3}, 0, 1)));
  EXPECT_ERROR(Shape, add_rowvec(a, U({1, 4}, 0, 1)));
  EXPECT_ERROR(Shape, add_rowvec(full({}, 1.0f, kCPU), U({1}, 0, 1)));
  for (const ActRef& r : kActs) EXPECT_ERROR(Shape, act_backward(r.act, a, b));
}

TEST(errors_adashift) {
  Tensor x = U({2, 3, 9, 12}, -1, 1);            // grid 7 -> 7 x 7 = 49 tokens
  Tensor s = U({2, 49, 3}, -1, 1), dy = U({2, 3, 9, 12}, -1, 1);
  EXPECT_ERROR(Shape, region_grid(U({2, 3, 9}, 0, 1), 7));
  EXPECT_ERROR(Shape, region_grid(U({1, 2, 3, 9, 1}, 0, 1), 7));
  EXPECT_ERROR(Arg, region_grid(x, 0));
  EXPECT_ERROR(Arg, region_grid(x, -3));
  EXPECT_ERROR(Arg, region_grid(x, 1025));
  EXPECT_ERROR(Shape, region_pool_forward(U({2, 3, 9}, 0, 1), 7));
  EXPECT_ERROR(Arg, region_pool_forward(x, 0));
  EXPECT_ERROR(Shape, region_pool_backward(s, {2, 3, 9}, 7));
  EXPECT_ERROR(Shape, region_pool_backward(s, {2, 3, -9, 12}, 7));
  EXPECT_ERROR(Shape, region_pool_backward(U({2, 9, 3}, 0, 1), {2, 3, 9, 12}, 7));  // 3x3 grid's dt
  EXPECT_ERROR(Shape, region_pool_backward(U({2, 49, 4}, 0, 1), {2, 3, 9, 12}, 7));
  EXPECT_ERROR(Arg, region_pool_backward(s, {2, 3, 9, 12}, 0));
  EXPECT_ERROR(Shape, gate_forward(x, U({2, 9, 3}, 0, 1), 7));
  EXPECT_ERROR(Shape, gate_forward(x, U({2, 3, 49}, 0, 1), 7));  // channel-major: wrong layout
  EXPECT_ERROR(Shape, gate_forward(x, U({98, 3}, 0, 1), 7));
  EXPECT_ERROR(Shape, gate_forward(U({2, 3, 108}, 0, 1), s, 7));
  EXPECT_ERROR(Arg, gate_forward(x, s, 0));
  EXPECT_ERROR(Shape, gate_backward_reduce(x, U({2, 3, 12, 9}, 0, 1), s, 7));
  EXPECT_ERROR(Shape, gate_backward_reduce(x, dy, U({2, 48, 3}, 0, 1), 7));
  EXPECT_ERROR(Shape, gate_backward_apply(x, U({2, 3, 9, 11}, 0, 1), s, Tensor(), 7));
  EXPECT_ERROR(Shape, gate_backward_apply(x, dy, U({1, 49, 3}, 0, 1), Tensor(), 7));
  EXPECT_ERROR(Shape, gate_backward_apply(x, dy, s, U({2, 49, 2}, 0, 1), 7));
  EXPECT_ERROR(Shape, gate_backward_apply(x, dy, s, U({2, 9, 3}, 0, 1), 7));
}

// The CPU's AdaShift-MA keeps its LayerNorm statistics for backward: they must be those of its
// saved tokens t (q/k/v) and rect input z, as the reference LayerNorm computes them, and backward
// refuses to run without them or with another layout.
TEST(adashift_ma_saved_stats) {
  for (bool lin : {false, true}) {
    const int64_t N = 3, C = 6, H = 9, W = 11, grid = 4, heads = 2, T = 16;
    AdaShiftMAParams p = random_ma_params(C, grid, heads, lin, G);
    Tensor x = G({N, C, H, W}, 0.2f, 1.5f), dy = G({N, C, H, W}, 0.0f, 1.0f);
    AdaShiftMAForward f = adashift_ma_forward(x, p);
    CHECK(f.saved.stats.shape() == (Shape{N, 4, T}));
    const Tensor* inputs[2] = {&f.saved.t, &f.saved.z};
    for (int which = 0; which < 2; ++which) {
      const Tensor& in = *inputs[which];
      LNRef r = ln_ref(in.data(), p.rect_w.data(), p.rect_b.data(), in.data(), N * T, C, p.eps);
      std::vector<float> mean, rstd;
      for (int64_t n = 0; n < N; ++n)
        for (int64_t k = 0; k < T; ++k) {
          mean.push_back(f.saved.stats.data()[(n * 4 + 2 * which) * T + k]);
          rstd.push_back(f.saved.stats.data()[(n * 4 + 2 * which + 1) * T + k]);
        }
      const std::string tag = cat(which ? "rect" : "q/k/v", lin ? " (linear rect)" : "");
      CHECK_CLOSE_PTR(cat("saved mean ", tag), mean.data(), int64_t(mean.size()), r.mean, scal(1e-6), 1e-6);
      CHECK_CLOSE_PTR(cat("saved rstd ", tag), rstd.data(), int64_t(rstd.size()), r.rstd, scal(0), 1e-5);
    }
    AdaShiftMASaved missing = f.saved;
    missing.stats = Tensor();
    EXPECT_ERROR(Arg, adashift_ma_backward(x, dy, missing, p, true));
    AdaShiftMASaved other = f.saved;
    other.stats = U({N, T, 4}, 0, 1);
    EXPECT_ERROR(Shape, adashift_ma_backward(x, dy, other, p, true));
    // Without keep_context only s and stats are kept; a context given in part is refused.
    AdaShiftMAParams lean = p;
    lean.keep_context = false;
    AdaShiftMAForward fl = adashift_ma_forward(x, lean);
    CHECK(!fl.saved.t.defined() && !fl.saved.attn.defined() && !fl.saved.o.defined() && !fl.saved.z.defined());
    CHECK(fl.saved.s.defined() && fl.saved.stats.defined());
    AdaShiftMASaved part = fl.saved;
    part.attn = f.saved.attn;
    EXPECT_ERROR(Arg, adashift_ma_backward(x, dy, part, lean, true));
    AdaShiftMASaved no_s = fl.saved;
    no_s.s = Tensor();
    EXPECT_ERROR(Arg, adashift_ma_backward(x, dy, no_s, lean, true));
  }
}

TEST(errors_dense) {
  Tensor x = U({5, 4}, -1, 1), w = U({4}, 0, 1), b = U({4}, 0, 1);
  EXPECT_ERROR(Shape, layernorm_forward(x, U({5}, 0, 1), b, 1e-5f));
  EXPECT_ERROR(Shape, layernorm_forward(x, w, U({3}, 0, 1), 1e-5f));
  EXPECT_ERROR(Shape, layernorm_forward(x, U({1, 4}, 0, 1), b, 1e-5f));
  EXPECT_ERROR(Shape, layernorm_forward(full({}, 1.0f, kCPU), U({1}, 0, 1), U({1}, 0, 1), 1e-5f));
  EXPECT_ERROR(Shape, layernorm_forward(full({3, 0}, 1.0f, kCPU), full({0}, 1.0f, kCPU), full({0}, 1.0f, kCPU), 1e-5f));
  EXPECT_ERROR(Arg, layernorm_forward(x, w, b, 0.0f));
  EXPECT_ERROR(Arg, layernorm_forward(x, w, b, -1e-5f));
  EXPECT_ERROR(Arg, layernorm_forward(x, w, b, std::nanf("")));
  EXPECT_ERROR(Arg, layernorm_forward(x, w, b, std::numeric_limits<float>::infinity()));
  LayerNormOut f = layernorm_forward(x, w, b, 1e-5f);
  Tensor dy = U({5, 4}, -1, 1);
  EXPECT_ERROR(Shape, layernorm_backward(U({4, 5}, 0, 1), x, f.mean, f.rstd, w));
  EXPECT_ERROR(Shape, layernorm_backward(dy, x, U({4}, 0, 1), f.rstd, w));
  EXPECT_ERROR(Shape, layernorm_backward(dy, x, f.mean, U({5, 1}, 0, 1), w));
  EXPECT_ERROR(Shape, layernorm_backward(dy, x, f.mean, f.rstd, U({5}, 0, 1)));
  EXPECT_ERROR(Shape, layernorm_backward(full({}, 1.0f, kCPU), full({}, 1.0f, kCPU), U({1}, 0, 1), U({1}, 0, 1), U({1}, 0, 1)));
  EXPECT_ERROR(Shape, softmax_forward(full({}, 1.0f, kCPU)));
  EXPECT_ERROR(Shape, softmax_forward(full({3, 0}, 1.0f, kCPU)));
  EXPECT_ERROR(Shape, softmax_backward(x, U({4, 5}, 0, 1)));
  // rank 0: softmax_backward reads y.size(-1) of an empty shape (isolated: may crash)
  EXPECT_ERROR_ISOLATED(Shape, softmax_backward(full({}, 0.5f, kCPU), full({}, 1.0f, kCPU)));
  // matmul: ranks, inner dims, batches
  EXPECT_ERROR(Shape, matmul(U({4}, 0, 1), U({4, 2}, 0, 1), false, false));
  EXPECT_ERROR(Shape, matmul(U({1, 2, 3, 4}, 0, 1), U({4, 2}, 0, 1), false, false));
  EXPECT_ERROR(Shape, matmul(U({3, 4}, 0, 1), U({5, 2}, 0, 1), false, false));
  EXPECT_ERROR(Shape, matmul(U({3, 4}, 0, 1), U({4, 2}, 0, 1), true, false));
  EXPECT_ERROR(Shape, matmul(U({3, 4}, 0, 1), U({4, 2}, 0, 1), false, true));
  EXPECT_ERROR(Shape, matmul(U({2, 3, 4}, 0, 1), U({3, 4, 2}, 0, 1), false, false));
  EXPECT_ERROR(Shape, matmul(U({2, 3, 4}, 0, 1), U({2, 5, 2}, 0, 1), false, false));
  // permute
  EXPECT_ERROR(Shape, permute(U({1, 1, 1, 1, 1, 1, 2}, 0, 1), {0, 1, 2, 3, 4, 5, 6}));
  EXPECT_ERROR(Arg, permute(x, {0}));
  EXPECT_ERROR(Arg, permute(x, {0, 1, 2}));
  EXPECT_ERROR(Arg, permute(x, {0, 0}));
  EXPECT_ERROR(Arg, permute(x, {0, 2}));
  EXPECT_ERROR(Arg, permute(x, {-1, 0}));
}

// =============================================================================================
// determinism and the thread pool
// =============================================================================================

struct ThreadGuard {
  int saved = num_threads();
  ~ThreadGuard() { set_num_threads(saved); }
};

TEST(threads_set_and_query) {
  ThreadGuard guard;
  const int hw = int(std::max(1u, std::thread::hardware_concurrency()));
  set_num_threads(1);
  CHECK(num_threads() == 1);
  set_num_threads(2);
  CHECK(num_threads() == std::min(2, hw));
  set_num_threads(1 << 20);
  CHECK(num_threads() == hw);
  set_num_threads(0);
  CHECK(num_threads() == 1);
  CHECK(backend_info().cpu_threads == 1);
}

TEST(determinism_across_thread_counts) {
  ThreadGuard guard;
  Tensor big = G({1000003}, 0.1f, 1.0f);
  Tensor rows = G({1000, 37}, 0.0f, 1.0f);
  Tensor lx = G({1000, 64}, 0.2f, 1.0f), lw = G({64}, 1.0f, 0.3f), lb = G({64}, 0.0f, 0.3f),
         ldy = G({1000, 64}, 0.0f, 1.0f);
  const Shape xs{4, 16, 28, 28};
  Tensor x = U(xs, -3, 3), dy = G(xs, 0.0f, 1.0f), s = U({4, 49, 16}, -2, 2);
  Tensor ma = G({130, 33}, 0, 1), mb = G({70, 33}, 0, 1);
  auto run = [&](int threads) {
    set_num_threads(threads);
    std::vector<Tensor> out;
    out.push_back(sum_all(big));
    out.push_back(sum_rows(rows, 1000));
    LayerNormOut f = layernorm_forward(lx, lw, lb, 1e-5f);
    LayerNormGrad g = layernorm_backward(ldy, lx, f.mean, f.rstd, lw);
    out.push_back(g.dweight);
    out.push_back(g.dbias);
    out.push_back(g.dx);
    out.push_back(region_pool_forward(x, 7));
    out.push_back(region_pool_forward(x, 1));
    out.push_back(gate_backward_reduce(x, dy, s, 7));
    out.push_back(matmul(ma, mb, false, true));
    return out;
  };
  const char* names[] = {"sum_all", "sum_rows", "layernorm dw", "layernorm db", "layernorm dx",
                         "region_pool_forward grid 7", "region_pool_forward grid 1",
                         "gate_backward_reduce", "matmul"};
  std::vector<Tensor> r1 = run(1), r2 = run(2), r2b = run(2), r1b = run(1);
  for (size_t i = 0; i < r1.size(); ++i) {
    CHECK_MSG(nontrivial(r1[i]), names[i]);
    CHECK_MSG(same_bits(r1[i], r2[i]), names[i], ": 1 thread vs 2 threads differ");
    CHECK_MSG(same_bits(r2[i], r2b[i]), names[i], ": 2 threads twice differ");
    CHECK_MSG(same_bits(r1[i], r1b[i]), names[i], ": 1 thread twice differ");
  }
}

TEST(parallel_for_coverage) {
  ThreadGuard guard;
  int64_t bad = 0, calls = 0;
  std::string first;
  for (int threads : {1, 2})
    for (int64_t n : {0, 1, 2, 3, 5, 8, 63, 64, 65, 1000, 4097, 100000})
      for (int64_t grain : {-1, 0, 1, 2, 7, 64, 1000, 1 << 20}) {
        set_num_threads(threads);
        std::vector<std::atomic<int>> hits(static_cast<size_t>(std::max<int64_t>(n, 1)));
        for (auto& h : hits) h.store(0);
        std::atomic<int64_t> bad_range{0}, chunks{0};
        parallel_for(n, grain, [&](int64_t b, int64_t e) {
          ++chunks;
          if (!(0 <= b && b < e && e <= n)) { ++bad_range; return; }
          for (int64_t i = b; i < e; ++i) hits[size_t(i)].fetch_add(1);
        });
        ++calls;
        int64_t wrong = bad_range.load();
        for (int64_t i = 0; i < n; ++i) wrong += hits[size_t(i)].load() != 1;
        if (n == 0 && chunks.load() != 0) ++wrong;
        if (wrong && bad++ == 0) first = cat("threads ", threads, " n ", n, " grain ", grain);
      }
  CHECK_MSG(bad == 0, bad, " of ", calls, " calls did not cover [0, n) exactly once; first: ", first);
}

TEST(parallel_for_nested_and_concurrent) {
  ThreadGuard guard;
  set_num_threads(2);
  // parallel_for inside a parallel_for body runs inline (no deadlock, full coverage)
  std::vector<std::atomic<int>> hits(16 * 1000);
  for (auto& h : hits) h.store(0);
  parallel_for(16, 1, [&](int64_t b, int64_t e) {
    for (int64_t o = b; o < e; ++o)
      parallel_for(1000, 1, [&](int64_t ib, int64_t ie) {
        for (int64_t i = ib; i < ie; ++i) hits[size_t(o * 1000 + i)].fetch_add(1);
      });
  });
  int64_t wrong = 0;
  for (auto& h : hits) wrong += h.load() != 1;
  CHECK_MSG(wrong == 0, wrong, " indices not hit exactly once in nested parallel_for");
  // ops called from inside a parallel_for body (nested kernels)
  Tensor x = G({100003}, 0, 1);
  const Tensor ref = sum_all(x);
  std::atomic<int> mismatches{0};
  parallel_for(4, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i)
      if (!same_bits(sum_all(x), ref)) ++mismatches;
  });
  CHECK(mismatches.load() == 0);
  // several caller threads at once are serialised and each gets complete results
  std::atomic<int64_t> bad{0};
  auto worker = [&](int id) {
    for (int rep = 0; rep < 100; ++rep) {
      const int64_t n = 5000 + id * 7 + rep;
      std::vector<std::atomic<int>> h(static_cast<size_t>(n));
      for (auto& v : h) v.store(0);
      parallel_for(n, 16, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) h[size_t(i)].fetch_add(1);
      });
      for (auto& v : h) bad += v.load() != 1;
    }
  };
  std::thread t1(worker, 1), t2(worker, 2), t3(worker, 3);
  t1.join(); t2.join(); t3.join();
  CHECK_MSG(bad.load() == 0, bad.load(), " misses with concurrent callers");
}

// =============================================================================================
// memory counters and views
// =============================================================================================

// =============================================================================================
// The caching allocator's books (block_cache.h), on host memory: reuse, graph pools, OOM
// =============================================================================================

// Host memory standing in for the device: counts raw calls and refuses past a capacity.
struct FakeBlocks final : BlockCache::Backend {
  size_t capacity = size_t(1) << 30, held = 0;
  int allocs = 0, frees = 0, waits = 0;
  std::vector<std::pair<void*, size_t>> live;
  void* raw_alloc(size_t n) override {
    if (held + n > capacity) return nullptr;
    void* p = std::malloc(n);
    held += n;
    ++allocs;
    live.push_back({p, n});
    return p;
  }
  void raw_free(void* p) override {
    for (size_t i = 0; i < live.size(); ++i)
      if (live[i].first == p) {
        held -= live[i].second;
        live.erase(live.begin() + long(i));
        break;
      }
    std::free(p);
    ++frees;
  }
  void wait_idle() override { ++waits; }
  ~FakeBlocks() override {
    for (auto& b : live) std::free(b.first);
  }
};

TEST(block_cache_reuse_and_rounding) {
  CHECK(BlockCache::round_size(1) == 512 && BlockCache::round_size(512) == 512);
  CHECK(BlockCache::round_size(513) == 1024);
  CHECK(BlockCache::round_size((size_t(1) << 20) + 1) == (size_t(2) << 20));
  CHECK(BlockCache::round_size((size_t(2) << 20) + 1) == (size_t(4) << 20));
  FakeBlocks fb;
  BlockCache c(&fb);
  void* a = c.alloc(1000);
  CHECK(a && fb.allocs == 1 && c.reserved() == 1024);
  c.free(a, 1000);
  CHECK(c.shared_free_bytes() == 1024);
  void* b = c.alloc(900);  // same rounded size: the cached block
  CHECK(b == a && fb.allocs == 1 && c.shared_free_bytes() == 0);
  void* d = c.alloc(3000);  // another size: a new block
  CHECK(d != a && fb.allocs == 2 && c.reserved() == 1024 + 3072);
  c.free(b, 900);
  c.free(d, 3000);
  c.free(nullptr, 10);
  c.empty_cache();
  CHECK(fb.frees == 2 && c.reserved() == 0 && fb.held == 0 && fb.waits == 1);
}

TEST(block_cache_graph_pool) {
  FakeBlocks fb;
  BlockCache c(&fb);
  void* before = c.alloc(1024);   // a tensor made before the capture
  void* spare = c.alloc(2048);
  c.free(spare, 2048);            // a free shared block of size 2048
  const int pool = c.begin_capture();
  CHECK(pool > 0 && c.capturing_pool() == pool);
  EXPECT_ERROR(CudaGraph, c.begin_capture());
  EXPECT_ERROR(CudaGraph, c.empty_cache());
  void* t1 = c.alloc(2048);       // taken from the shared list, now the pool's
  CHECK(t1 == spare && c.pool_bytes(pool) == 2048);
  void* t2 = c.alloc(4096);       // new from the backend, the pool's
  CHECK(t2 && c.pool_bytes(pool) == 2048 + 4096);
  c.free(t2, 4096);               // freed in the capture: reused within it
  void* t3 = c.alloc(4096);
  CHECK(t3 == t2);
  c.free(before, 1024);           // made before, freed during: a recorded kernel may read it
  CHECK(c.pool_bytes(pool) == 2048 + 4096 + 1024 && c.shared_free_bytes() == 0);
  c.end_capture();
  CHECK(c.capturing_pool() == 0);
  // After the capture: pool blocks are never handed to other work.
  c.free(t3, 4096);               // an output of the graph, freed by the program
  void* e1 = c.alloc(4096);
  void* e2 = c.alloc(1024);
  CHECK(e1 != t3 && e2 != before);
  CHECK(c.pool_bytes(pool) == 2048 + 4096 + 1024);
  // Releasing the graph: its free blocks join the shared lists, its live one when freed.
  c.release_pool(pool);
  CHECK(c.pool_bytes(pool) == 2048 && c.pool_count() == 1);
  void* r1 = c.alloc(4096);
  CHECK(r1 == t3);
  c.free(t1, 2048);               // the last live block of the released pool
  CHECK(c.pool_count() == 0 && c.pool_bytes(pool) == 0);
  void* r2 = c.alloc(2048);
  CHECK(r2 == t1);
  c.release_pool(pool);           // twice: no-op
  for (auto* p : {e1, r1}) c.free(p, 4096);
  c.free(e2, 1024);
  c.free(r2, 2048);
  const size_t reserved = c.reserved();
  CHECK(c.shared_free_bytes() == reserved);
  c.empty_cache();
  CHECK(c.reserved() == 0 && fb.held == 0);
  // A new capture gets a new pool id.
  const int pool2 = c.begin_capture();
  CHECK(pool2 != pool);
  c.end_capture();
  c.release_pool(pool2);
  CHECK(c.pool_count() == 0);
}

// A block of one graph's pool freed during another graph's capture (a gradient the first graph
// made, read by the second): the second graph's replays read it, so no eager work may get it
// while that graph lives; and while the first graph lives its replays write it, so the second
// must not hand it out either.
TEST(block_cache_block_of_another_graph) {
  FakeBlocks fb;
  BlockCache c(&fb);
  // (a) the first graph is already released
  const int a = c.begin_capture();
  void* g = c.alloc(1024);
  c.end_capture();
  c.release_pool(a);                      // g is still live (a tensor the program holds)
  const int b = c.begin_capture();
  c.free(g, 1024);                        // read by b, then freed
  CHECK(c.pool_bytes(b) == 1024 && c.shared_free_bytes() == 0 && c.pool_bytes(a) == 0);
  void* in_b = c.alloc(1024);             // b may reuse it within its own recording
  CHECK(in_b == g);
  c.free(in_b, 1024);
  c.end_capture();
  void* eager = c.alloc(1024);
  CHECK(eager != g);
  c.release_pool(b);
  CHECK(c.alloc(1024) == g);
  c.free(g, 1024);
  c.free(eager, 1024);
  // (b) the first graph is still live
  const int a2 = c.begin_capture();
  void* h = c.alloc(2048);
  c.end_capture();
  const int b2 = c.begin_capture();
  c.free(h, 2048);
  CHECK(c.pool_bytes(a2) == 0 && c.pool_bytes(b2) == 2048);
  void* in_b2 = c.alloc(2048);            // a2's replays still write h: not for b2's tensors
  CHECK(in_b2 != h);
  c.free(in_b2, 2048);
  c.end_capture();
  c.release_pool(b2);                     // h goes back to a2
  CHECK(c.pool_bytes(a2) == 2048 && c.pool_count() == 1);
  void* eager2 = c.alloc(2048);
  CHECK(eager2 != h && eager2 == in_b2);
  c.release_pool(a2);                     // now h is free for anyone
  CHECK(c.pool_count() == 0 && c.alloc(2048) == h);
  c.free(h, 2048);
  c.free(eager2, 2048);
  // (b) released in the other order: the first graph goes, then the second
  const int a3 = c.begin_capture();
  void* k = c.alloc(4096);
  c.end_capture();
  const int b3 = c.begin_capture();
  c.free(k, 4096);
  c.end_capture();
  c.release_pool(a3);
  void* eager3 = c.alloc(4096);
  CHECK(c.pool_bytes(b3) == 4096 && eager3 != k);
  c.release_pool(b3);
  CHECK(c.pool_count() == 0 && c.alloc(4096) == k);
  c.free(k, 4096);
  c.free(eager3, 4096);
  c.empty_cache();
  CHECK(c.reserved() == 0 && fb.held == 0);
}

TEST(block_cache_out_of_memory) {
  FakeBlocks fb;
  fb.capacity = 8192;
  BlockCache c(&fb);
  void* a = c.alloc(4096);
  c.free(a, 4096);                // cached, 4096 of 8192 held
  void* b = c.alloc(6000);        // needs the cached block given back first
  CHECK(b && fb.waits == 1 && fb.frees == 1 && c.reserved() == 6144);
  CHECK(c.alloc(4096) == nullptr);  // nothing cached left to give back: out of memory
  c.free(b, 6000);
  const int pool = c.begin_capture();
  CHECK(c.alloc(4096) == nullptr);  // during a capture nothing may wait for the device
  CHECK(fb.waits == 1);
  c.end_capture();
  c.release_pool(pool);
  c.empty_cache();
  CHECK(fb.held == 0);
}

TEST(memory_counters) {
  MemoryCounters& mc = memory_counters(kCPU);
  const int64_t s0 = mc.storages.load(), b0 = mc.bytes.load();
  {
    Tensor t({3, 5}, kCPU);
    CHECK(mc.storages.load() == s0 + 1 && mc.bytes.load() == b0 + 60);
    CHECK(t.nbytes() == 60 && t.storage()->bytes() == 60);
    Tensor v = Tensor::view(t, {15});
    Tensor v2 = Tensor::view(v, {5, 1, 3});
    CHECK(mc.storages.load() == s0 + 1 && mc.bytes.load() == b0 + 60);
    CHECK(v.data() == t.data() && v.storage() == t.storage() && v2.storage() == t.storage());
    CHECK(v.shape() == Shape{15} && v2.shape() == (Shape{5, 1, 3}) && v2.numel() == 15);
    t.data()[7] = 42.0f;
    CHECK(v.data()[7] == 42.0f && v2.data()[7] == 42.0f);
    {
      Tensor z({0, 4}, kCPU);  // one storage, zero bytes
      CHECK(mc.storages.load() == s0 + 2 && mc.bytes.load() == b0 + 60);
      Tensor big = U({1000, 3}, 0, 1);
      CHECK(mc.storages.load() == s0 + 3 && mc.bytes.load() == b0 + 60 + 12000);
      Tensor c = clone(big);
      CHECK(mc.storages.load() == s0 + 4 && mc.bytes.load() == b0 + 60 + 24000);
      CHECK(c.data() != big.data() && std::memcmp(c.data(), big.data(), 12000) == 0);
      Tensor same = to_device(big, kCPU);  // same device: no copy
      CHECK(same.storage() == big.storage() && mc.storages.load() == s0 + 4);
    }
    CHECK(mc.storages.load() == s0 + 1 && mc.bytes.load() == b0 + 60);
    t = Tensor();  // the views keep the storage alive
    CHECK(mc.storages.load() == s0 + 1 && mc.bytes.load() == b0 + 60);
    CHECK(v.data()[7] == 42.0f);
    v = Tensor();
    CHECK(mc.storages.load() == s0 + 1);
  }
  CHECK(mc.storages.load() == s0 && mc.bytes.load() == b0);
  // ops allocate exactly their outputs and free all temporaries
  {
    Tensor x = U({2, 3, 9, 12}, -1, 1), s = U({2, 49, 3}, -1, 1), dy = U({2, 3, 9, 12}, -1, 1);
    const int64_t s1 = mc.storages.load(), b1 = mc.bytes.load();
    {
      Tensor y = gate_forward(x, s, 7);
      CHECK(mc.storages.load() == s1 + 1 && mc.bytes.load() == b1 + int64_t(x.nbytes()));
    }
    {
      LayerNormOut f = layernorm_forward(U({6, 10}, 0, 1), full({10}, 1.0f, kCPU), full({10}, 0.0f, kCPU), 1e-5f);
      // y, mean, rstd survive; x, w, b were temporaries
      CHECK(mc.storages.load() == s1 + 3 && mc.bytes.load() == b1 + (60 + 6 + 6) * 4);
    }
    {
      Tensor ds = gate_backward_reduce(x, dy, s, 7);
      Tensor dx = gate_backward_apply(x, dy, s, ds, 7);
      Tensor mm = matmul(U({3, 4, 5}, 0, 1), U({5, 6}, 0, 1), false, false);
      Tensor p = permute(x, {0, 2, 3, 1});
      Tensor sa = sum_all(x);
      CHECK(mc.storages.load() == s1 + 5 &&
            mc.bytes.load() == b1 + 2 * 49 * 3 * 4 + int64_t(x.nbytes()) * 2 + 3 * 4 * 6 * 4 + 4);
    }
    CHECK(mc.storages.load() == s1 && mc.bytes.load() == b1);
  }
  CHECK(mc.storages.load() == s0 && mc.bytes.load() == b0);
}

}  // namespace

int main() {
  using Clock = std::chrono::steady_clock;
  const auto t_start = Clock::now();
  std::thread([] {
    for (int i = 0; i < 1200 && !g_done.load(); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (!g_done.load()) {
      std::printf("core_tests: watchdog: no progress for 120 s in test '%s' (deadlock?)\n",
                  g_current.load());
      std::fflush(stdout);
      std::_Exit(3);
    }
  }).detach();

  const BackendInfo info = backend_info();
  std::printf("core_tests: cpu threads %d, cuda compiled %s, cuda usable %s\n", info.cpu_threads,
              info.cuda_compiled ? "yes" : "no", info.cuda_usable ? "yes" : "no");
  int passed = 0, failed = 0;
  int64_t total_checks = 0, total_elements = 0;
  for (const TestCase& tc : registry()) {
    g_current.store(tc.name);
    g_stats = Stats{};
    const auto t0 = Clock::now();
    try {
      tc.fn();
    } catch (const Error& e) {
      report(false, __FILE__, __LINE__,
             cat("unexpected adashift::Error ", error_code_name(e.code()), ": ", e.what()));
    } catch (const std::exception& e) {
      report(false, __FILE__, __LINE__, cat("unexpected exception: ", e.what()));
    }
    const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    const bool ok = g_stats.failures == 0 && g_stats.checks > 0;
    if (g_stats.checks == 0) std::printf("    FAILED: the test made no checks\n");
    std::printf("%s %s (%lld checks, %lld elements compared, %.0f ms)\n", ok ? "PASS" : "FAIL",
                tc.name, (long long)g_stats.checks, (long long)g_stats.elements, ms);
    std::fflush(stdout);
    (ok ? passed : failed)++;
    total_checks += g_stats.checks;
    total_elements += g_stats.elements;
  }
  g_done.store(true);
  const double secs = std::chrono::duration<double>(Clock::now() - t_start).count();
  std::printf("core_tests: %lld checks, %lld elements compared, %.2f s\n", (long long)total_checks,
              (long long)total_elements, secs);
  std::printf("core_tests: %d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}

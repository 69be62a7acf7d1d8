// Times the CPU kernels of AdaShift-MA's context network on one sample's tokens (T = 49, the
// 7 x 7 grid; C = 16, 32, 64, ResNet-20's widths, one head): the LayerNorm row loops, the
// softmax rows and the attention products, each called on its own with warm caches, single
// threaded. Prints the median and the fastest of many calls in nanoseconds, and for the
// products the rate in GFLOP/s. Not a test (nothing is checked): a benchmark for changes to
// these loops, built with the C++ tests (cmake -DADASHIFT_BUILD_TESTS=ON, target
// token_math_bench). Usage: token_math_bench [calls per kernel, default 2000]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>
#include "../core/cpu/gemm.h"
#include "../core/cpu/loops.h"
#include "../core/ops/dense.h"

using namespace adashift::cpu;

namespace {

int g_calls = 2000;

struct Timing {
  double median_ns, best_ns;
};

template <class F>
Timing time_calls(F f) {
  for (int i = 0; i < 50; ++i) f();  // warm-up
  std::vector<double> ns(static_cast<size_t>(g_calls));
  for (int i = 0; i < g_calls; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    const auto t1 = std::chrono::steady_clock::now();
    ns[size_t(i)] = std::chrono::duration<double, std::nano>(t1 - t0).count();
  }
  std::sort(ns.begin(), ns.end());
  return {ns[ns.size() / 2], ns.front()};
}

void row(const std::string& name, int C, Timing t, double flops = 0.0) {
  std::printf("%-28s C=%-3d median %9.0f ns  best %9.0f ns", name.c_str(), C, t.median_ns, t.best_ns);
  if (flops > 0.0) std::printf("  %6.1f GFLOP/s (median)", flops / t.median_ns);
  std::printf("\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1) {
    g_calls = std::atoi(argv[1]);
    if (g_calls < 1) {
      std::fprintf(stderr, "token_math_bench: calls per kernel must be a positive integer, got '%s'\n", argv[1]);
      return 2;
    }
  }
  constexpr int T = 49, kMaxC = 64;
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  auto filled = [&](size_t n) {
    std::vector<float> v(n);
    for (float& e : v) e = u(rng);
    return v;
  };
  std::vector<float> x = filled(T * kMaxC), y(T * kMaxC * 3), dx(T * kMaxC), xhat = filled(T * kMaxC);
  std::vector<float> d0 = filled(T * kMaxC), d1 = filled(T * kMaxC), d2 = filled(T * kMaxC);
  std::vector<float> w = filled(kMaxC), b = filled(kMaxC), mean(T), rstd(T), acc(6 * kMaxC);
  std::vector<double> dacc(2 * kMaxC);
  std::vector<float> S = filled(T * T), A(T * T), dS(T * T);
  loops::layernorm_rows(x.data(), w.data(), b.data(), 1e-6f, T, kMaxC, y.data(), mean.data(), rstd.data());
  loops::softmax_rows(S.data(), T, T, A.data());
  std::printf("AdaShift-MA context kernels, one sample (T = %d tokens), 1 thread, %d calls each\n", T, g_calls);
  for (int C : {16, 32, 64}) {
    const float* w3[3] = {w.data(), w.data(), w.data()};
    const float* b3[3] = {b.data(), b.data(), b.data()};
    float* y3[3] = {y.data(), y.data() + T * C, y.data() + 2 * T * C};
    const float* dy3[3] = {d0.data(), d1.data(), d2.data()};
    float* acc6[6];
    for (int i = 0; i < 6; ++i) acc6[i] = acc.data() + i * C;
    row("layernorm_rows (forward)", C, time_calls([&] {
          loops::layernorm_rows(x.data(), w.data(), b.data(), 1e-6f, T, C, y.data(), mean.data(), rstd.data());
        }));
    row("col_moments (q/k/v stats)", C, time_calls([&] { loops::col_moments(x.data(), C, T, 1e-6f, mean.data(), rstd.data()); }));
    row("norm_affine3_rows (q, k, v)", C, time_calls([&] {
          loops::norm_affine3_rows(x.data(), mean.data(), rstd.data(), T, C, w3, b3, y3, xhat.data());
        }));
    row("layernorm_backward_rows", C, time_calls([&] {
          loops::layernorm_backward_rows(d0.data(), x.data(), mean.data(), rstd.data(), w.data(), T, C, dx.data(),
                                         dacc.data(), dacc.data() + C);
        }));
    row("layernorm3_backward_rows", C, time_calls([&] {
          loops::layernorm3_backward_rows(dy3, xhat.data(), rstd.data(), w3, T, C, dx.data(), acc6);
        }));
    const double qk = 2.0 * T * T * C, av = 2.0 * T * C * T;
    row("q k^T (49 x 49, depth C)", C, time_calls([&] {
          gemm_small_serial(false, true, T, T, C, 1.0f, x.data(), C, xhat.data(), C, 0.0f, S.data(), T);
        }), qk);
    row("A v (49 x C, depth 49)", C, time_calls([&] {
          gemm_small_serial(false, false, T, C, T, 1.0f, A.data(), T, x.data(), C, 0.0f, y.data(), C);
        }), av);
    row("A^T do (49 x C, depth 49)", C, time_calls([&] {
          gemm_small_serial(true, false, T, C, T, 1.0f, A.data(), T, x.data(), C, 0.0f, y.data(), C);
        }), av);
  }
  row("softmax_rows (49 x 49)", T, time_calls([&] { loops::softmax_rows(S.data(), T, T, A.data()); }));
  row("softmax_backward_rows", T, time_calls([&] { loops::softmax_backward_rows(A.data(), S.data(), T, T, dS.data()); }));
  return 0;
}

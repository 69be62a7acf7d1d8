// AdaShift-B, sample by sample (see ops/adashift.h). Backward computes both gate gradients in
// one pass over x and dy (direct input gradient into dx, shift gradient summed per plane),
// then adds the pooled path to the sample's dx while it is in cache. With enough samples each thread takes
// whole samples; with few (N below the thread count) the samples run in turn and each one's
// channel planes are split across threads. Per-plane sums run in one fixed order either way,
// so the result does not depend on the number of threads.
#include <algorithm>
#include <vector>
#include "../ops/adashift.h"
#include "../ops/dense.h"
#include "../threadpool.h"
#include "loops.h"

namespace adashift {
namespace cpu {

namespace {

// Runs sample(n, inner, next) for every sample: inner(fn) runs fn(c0, c1) over the channels,
// across threads or inline; `next` tells whether the same thread takes sample n + 1 right after
// (then a pass may prefetch that sample's planes while it computes).
template <typename SampleFn>
void for_each_sample(int64_t N, int64_t C, int64_t HW, SampleFn sample) {
  const bool by_sample = N >= num_threads();
  if (by_sample) {
    parallel_for(N, 1, [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n)
        sample(n, [&](const std::function<void(int64_t, int64_t)>& fn) { fn(0, C); }, n + 1 < n1);
    });
  } else {
    const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 14) / std::max<int64_t>(HW, 1));
    for (int64_t n = 0; n < N; ++n)
      sample(n, [&](const std::function<void(int64_t, int64_t)>& fn) { parallel_for(C, grain, fn); },
             false);
  }
}

// u = W t + b for one sample (double accumulation, fixed order)
void proj_forward(const float* W, const float* b, const float* t, int64_t C, float* u) {
  for (int64_t i = 0; i < C; ++i) {
    double acc = b ? b[i] : 0.0;
    const float* w = W + i * C;
    for (int64_t k = 0; k < C; ++k) acc += double(w[k]) * t[k];
    u[i] = float(acc);
  }
}

// dt = W^T du for one sample
void proj_input_grad(const float* W, const float* du, int64_t C, float* dt) {
  std::vector<double> acc(size_t(C), 0.0);
  for (int64_t i = 0; i < C; ++i) {
    const double d = du[i];
    const float* w = W + i * C;
    for (int64_t k = 0; k < C; ++k) acc[size_t(k)] += d * w[k];
  }
  for (int64_t k = 0; k < C; ++k) dt[k] = float(acc[size_t(k)]);
}

}  // namespace

void adashift_b_forward(const float* x, int64_t N, int64_t C, int64_t HW, const float* pw,
                        const float* pb, const float* nw, const float* nb, float eps, float* y,
                        float* t, float* u, float* s, float* mean, float* rstd) {
  for_each_sample(N, C, HW, [&](int64_t n, auto inner, bool next) {
    const float* xs = x + n * C * HW;
    float* ts = t + n * C;
    inner([&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) ts[c] = loops::sum(xs + c * HW, HW) / float(HW);
    });
    float* us = u + n * C;
    if (pw) proj_forward(pw, pb, ts, C, us);
    else if (us != ts) std::copy(ts, ts + C, us);
    layernorm_forward(us, nw, nb, eps, 1, C, s + n * C, mean + n, rstd + n);
    const float* ss = s + n * C;
    float* ys = y + n * C * HW;
    // While this sample is gated, its thread's next sample is prefetched plane by plane, so that
    // sample's pool pass reads from cache (B forward [64,64,28,28], one thread: 0.92 -> 0.82 ms).
    inner([&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        if (next) loops::prefetch(xs + (C + c) * HW, HW);
        loops::gate_forward(xs + c * HW, ss[c], ys + c * HW, HW);
      }
    });
  });
}

void adashift_b_backward(const float* x, const float* dy, int64_t N, int64_t C, int64_t HW,
                         const float* u, const float* s, const float* mean, const float* rstd,
                         const float* pw, const float* nw, bool need_dx, float* dx, float* du,
                         float* dnw_rows, float* dnb_rows) {
  // (Prefetching the next sample's x and dy here, as the forward does, evicted this sample's dx
  // before its pooled path was added: 30% slower.)
  for_each_sample(N, C, HW, [&](int64_t n, auto inner, bool) {
    thread_local std::vector<float> ds, dt;
    if (ds.size() < size_t(C)) { ds.resize(size_t(C)); dt.resize(size_t(C)); }
    float* dss = ds.data();
    float* dts = dt.data();
    const float* xs = x + n * C * HW;
    const float* dys = dy + n * C * HW;
    const float* ss = s + n * C;
    float* dxs = need_dx ? dx + n * C * HW : nullptr;
    // One pass over x and dy: the direct input gradient goes to dx, the shift gradient to ds.
    inner([&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c)
        dss[c] = need_dx ? loops::gate_grads(xs + c * HW, dys + c * HW, ss[c], dxs + c * HW, HW)
                         : loops::gate_shift_grad(xs + c * HW, dys + c * HW, ss[c], HW);
    });
    float* dus = du + n * C;
    layernorm_backward(dss, u + n * C, mean + n, rstd + n, nw, 1, C, dus, dnw_rows + n * C,
                       dnb_rows + n * C);
    if (!need_dx) return;
    if (pw) proj_input_grad(pw, dus, C, dts);
    else std::copy(dus, dus + C, dts);
    // The pooled path, dt / HW, added to the sample's dx while it is still in cache.
    inner([&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) loops::add_scalar(dxs + c * HW, dts[c] / float(HW), HW);
    });
  });
}

}  // namespace cpu
}  // namespace adashift

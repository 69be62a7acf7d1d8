// AdaShift-B, sample by sample (see ops/adashift.h). Forward: pool each plane (mean), the
// context (proj, LayerNorm) per sample, then gate. Backward: both gate gradients in one pass
// over x and dy (direct input gradient into dx, shift gradient summed per plane), the context's
// gradient, then the pooled path's gradient added to the sample's dx. How the passes are laid
// out over threads and samples is described above adashift_b_forward.
#include <algorithm>
#include <functional>
#include <vector>
#include "../ops/adashift.h"
#include "../ops/dense.h"
#include "../threadpool.h"
#include "loops.h"

namespace adashift {
namespace cpu {

namespace {

// Channels per pool task when one sample's planes are split across threads (~16K floats).
int64_t channel_grain(int64_t HW) { return std::max<int64_t>(1, (int64_t(1) << 14) / std::max<int64_t>(HW, 1)); }

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

// With at least as many samples as threads, each thread takes a run of samples and pipelines
// the forward: the pooling of sample n + 1 is summed inside the loop that gates sample n. The
// gate's arithmetic bounds that loop, so the second stream costs little, where a pass of its own
// re-read the planes (B forward [64,64,28,28], 2 threads, builds alternated, warm caches:
// 0.40-0.42 -> 0.35-0.36 ms; in bench act 0.50-0.60 -> 0.45-0.53 ms). Moving the add of the
// previous sample's pooled-path gradient into the backward's gradient loop the same way measured
// slower (0.55 -> 0.58-0.69 ms): that loop's reduction vectorises worse with a second stream.
// With fewer samples, each sample's planes are split across the pool, pass by pass. Both
// forms sum every plane in the same lane order (loops::lane_sum), and the backward's per-plane
// sums run one loop in every form, so the bits do not depend on the thread count.
void adashift_b_forward(const float* x, int64_t N, int64_t C, int64_t HW, const float* pw,
                        const float* pb, const float* nw, const float* nb, float eps, float* y,
                        float* t, float* u, float* s, float* mean, float* rstd) {
  // s[n] from the pooled means t[n]: proj (optional), then LayerNorm over C
  auto context = [&](int64_t n) {
    const float* ts = t + n * C;
    float* us = u + n * C;
    if (pw) proj_forward(pw, pb, ts, C, us);
    else if (us != ts) std::copy(ts, ts + C, us);
    layernorm_forward(us, nw, nb, eps, 1, C, s + n * C, mean + n, rstd + n);
  };
  auto plane = [&](int64_t n, int64_t c) { return (n * C + c) * HW; };
  if (N >= num_threads()) {
    parallel_for(N, 1, [&](int64_t n0, int64_t n1) {
      for (int64_t c = 0; c < C; ++c) t[n0 * C + c] = loops::lane_sum(x + plane(n0, c), HW) / float(HW);
      for (int64_t n = n0; n < n1; ++n) {
        context(n);
        const float* ss = s + n * C;
        for (int64_t c = 0; c < C; ++c) {
          if (n + 1 < n1)
            t[(n + 1) * C + c] = loops::gate_forward_sum(x + plane(n, c), ss[c], y + plane(n, c),
                                                         x + plane(n + 1, c), HW) / float(HW);
          else
            loops::gate_forward(x + plane(n, c), ss[c], y + plane(n, c), HW);
        }
      }
    });
    return;
  }
  const int64_t grain = channel_grain(HW);
  for (int64_t n = 0; n < N; ++n) {
    parallel_for(C, grain, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) t[n * C + c] = loops::lane_sum(x + plane(n, c), HW) / float(HW);
    });
    context(n);
    parallel_for(C, grain, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) loops::gate_forward(x + plane(n, c), s[n * C + c], y + plane(n, c), HW);
    });
  }
}

void adashift_b_backward(const float* x, const float* dy, int64_t N, int64_t C, int64_t HW,
                         const float* u, const float* s, const float* mean, const float* rstd,
                         const float* pw, const float* nw, bool need_dx, float* dx, float* du,
                         float* dnw_rows, float* dnb_rows) {
  // One sample's planes [c0, c1): run(plane offset, c) for each.
  auto planes = [&](int64_t n, bool split, const std::function<void(int64_t, int64_t)>& run) {
    auto body = [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) run((n * C + c) * HW, c);
    };
    if (split) parallel_for(C, channel_grain(HW), body);
    else body(0, C);
  };
  auto sample = [&](int64_t n, bool split) {
    thread_local std::vector<float> buf;
    if (buf.size() < size_t(2 * C)) buf.resize(size_t(2 * C));
    float* ds = buf.data();
    float* dt = ds + C;
    const float* ss = s + n * C;
    // One pass over x and dy: the direct input gradient goes to dx, the shift gradient to ds.
    planes(n, split, [&](int64_t o, int64_t c) {
      ds[c] = need_dx ? loops::gate_grads(x + o, dy + o, ss[c], dx + o, HW)
                      : loops::gate_shift_grad(x + o, dy + o, ss[c], HW);
    });
    float* dus = du + n * C;
    layernorm_backward(ds, u + n * C, mean + n, rstd + n, nw, 1, C, dus, dnw_rows + n * C,
                       dnb_rows + n * C);
    if (!need_dx) return;
    if (pw) proj_input_grad(pw, dus, C, dt);
    else std::copy(dus, dus + C, dt);
    // The pooled path, dt / HW, added to the sample's dx while it is still in cache.
    planes(n, split, [&](int64_t o, int64_t c) { loops::add_scalar(dx + o, dt[c] / float(HW), HW); });
  };
  if (N >= num_threads()) {
    parallel_for(N, 1, [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) sample(n, false);
    });
  } else {
    for (int64_t n = 0; n < N; ++n) sample(n, true);
  }
}

}  // namespace cpu
}  // namespace adashift

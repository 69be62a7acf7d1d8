// CPU pooling kernels: planes split across the thread pool; every output (or, in backward,
// every input plane) is computed by one thread in a fixed order, so results do not depend on
// the thread count. Backward scatters per plane in ascending output order, which adds each
// input element's terms in the same order as the CUDA gather.
#include <algorithm>
#include <cmath>
#include "../ops/pool.h"
#include "../math.h"
#include "../threadpool.h"

namespace adashift {
namespace cpu {

namespace {

template <typename PlaneFn>
void for_each_plane(const Pool2d& g, PlaneFn fn) {
  const int64_t work = std::max<int64_t>(int64_t(g.H) * g.W, int64_t(g.Ho) * g.Wo);
  parallel_for(g.planes(), std::max<int64_t>(1, (int64_t(1) << 14) / std::max<int64_t>(work, 1)),
               [&](int64_t p0, int64_t p1) {
                 for (int64_t p = p0; p < p1; ++p) fn(p);
               });
}

math::PoolWindow window(const Pool2d& g, int oh, int ow) {
  return math::pool_window(oh, ow, g.H, g.W, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw,
                           g.count_include_pad);
}

}  // namespace

void max_pool2d_forward(const Pool2d& g, const float* x, float* y, float* indices) {
  const int64_t in_plane = int64_t(g.H) * g.W, out_plane = int64_t(g.Ho) * g.Wo;
  for_each_plane(g, [&](int64_t p) {
    const float* xp = x + p * in_plane;
    float* yp = y + p * out_plane;
    float* ip = indices + p * out_plane;
    for (int oh = 0; oh < g.Ho; ++oh)
      for (int ow = 0; ow < g.Wo; ++ow) {
        const math::PoolWindow w = window(g, oh, ow);
        float best = -INFINITY;
        int64_t bi = int64_t(w.h0) * g.W + w.w0;
        for (int h = w.h0; h < w.h1; ++h)
          for (int c = w.w0; c < w.w1; ++c) {
            const float v = xp[int64_t(h) * g.W + c];
            if (math::pool_takes(v, best)) {
              best = v;
              bi = int64_t(h) * g.W + c;
            }
          }
        yp[int64_t(oh) * g.Wo + ow] = best;
        ip[int64_t(oh) * g.Wo + ow] = float(bi);
      }
  });
}

void max_pool2d_backward(const Pool2d& g, const float* dy, const float* indices, float* dx) {
  const int64_t in_plane = int64_t(g.H) * g.W, out_plane = int64_t(g.Ho) * g.Wo;
  for_each_plane(g, [&](int64_t p) {
    float* dp = dx + p * in_plane;
    std::fill(dp, dp + in_plane, 0.0f);
    const float* gp = dy + p * out_plane;
    const float* ip = indices + p * out_plane;
    for (int64_t o = 0; o < out_plane; ++o) {
      const float fi = ip[o];
      if (fi >= 0.0f && fi < float(in_plane)) dp[int64_t(fi)] += gp[o];  // guards bad indices
    }
  });
}

void avg_pool2d_forward(const Pool2d& g, const float* x, float* y) {
  const int64_t in_plane = int64_t(g.H) * g.W, out_plane = int64_t(g.Ho) * g.Wo;
  for_each_plane(g, [&](int64_t p) {
    const float* xp = x + p * in_plane;
    float* yp = y + p * out_plane;
    for (int oh = 0; oh < g.Ho; ++oh)
      for (int ow = 0; ow < g.Wo; ++ow) {
        const math::PoolWindow w = window(g, oh, ow);
        float acc = 0.0f;
        for (int h = w.h0; h < w.h1; ++h)
          for (int c = w.w0; c < w.w1; ++c) acc += xp[int64_t(h) * g.W + c];
        yp[int64_t(oh) * g.Wo + ow] = acc / float(w.divisor);
      }
  });
}

void avg_pool2d_backward(const Pool2d& g, const float* dy, float* dx) {
  const int64_t in_plane = int64_t(g.H) * g.W, out_plane = int64_t(g.Ho) * g.Wo;
  for_each_plane(g, [&](int64_t p) {
    float* dp = dx + p * in_plane;
    std::fill(dp, dp + in_plane, 0.0f);
    const float* gp = dy + p * out_plane;
    for (int oh = 0; oh < g.Ho; ++oh)
      for (int ow = 0; ow < g.Wo; ++ow) {
        const math::PoolWindow w = window(g, oh, ow);
        const float v = gp[int64_t(oh) * g.Wo + ow] / float(w.divisor);
        for (int h = w.h0; h < w.h1; ++h)
          for (int c = w.w0; c < w.w1; ++c) dp[int64_t(h) * g.W + c] += v;
      }
  });
}

}  // namespace cpu
}  // namespace adashift

// CPU cross-entropy: rows split across the thread pool, each row in one pass set (max, then the
// exponentials and logit sum); row losses are added in row order in double.
#include <algorithm>
#include <cmath>
#include <vector>
#include "../ops/loss.h"
#include "../math.h"
#include "../threadpool.h"

namespace adashift {
namespace cpu {

namespace {
inline bool valid_label(float y, int64_t K) {
  return y >= 0.0f && y < float(K) && y == std::floor(y);
}
}  // namespace

void cross_entropy_forward(const float* logits, const float* labels, int64_t N, int64_t K,
                           float smoothing, float* loss, float* lse, float* correct) {
  std::vector<double> row_loss(static_cast<size_t>(N));
  std::vector<unsigned char> row_ok(static_cast<size_t>(N));
  const double eps = smoothing, keep = 1.0 - eps;
  parallel_for(N, std::max<int64_t>(1, 4096 / K), [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      const float* x = logits + i * K;
      float mx = x[0];
      int64_t am = 0;
      for (int64_t k = 1; k < K; ++k)
        if (math::argmax_takes(x[k], k, mx, am)) { mx = x[k]; am = k; }
      double se = 0.0, sd = 0.0;
      for (int64_t k = 0; k < K; ++k) {
        se += double(math::vexp(x[k] - mx));
        sd += double(mx) - double(x[k]);
      }
      const double log_se = std::log(se);
      lse[2 * i] = mx;
      lse[2 * i + 1] = float(log_se);
      const float y = labels[i];
      if (valid_label(y, K)) {
        const int64_t yi = int64_t(y);
        row_loss[size_t(i)] = math::ce_row_loss(log_se, double(mx) - double(x[yi]), sd, keep, eps, K);
        row_ok[size_t(i)] = am == yi;
      } else {
        row_loss[size_t(i)] = NAN;
        row_ok[size_t(i)] = 0;
      }
    }
  });
  double total = 0.0, ok = 0.0;
  for (int64_t i = 0; i < N; ++i) {
    total += row_loss[size_t(i)];
    ok += row_ok[size_t(i)];
  }
  loss[0] = float(total / double(N));
  correct[0] = float(ok);
}

void cross_entropy_backward(const float* logits, const float* labels, const float* lse,
                            const float* grad, int64_t N, int64_t K, float smoothing,
                            float* dlogits) {
  const float scale = grad[0] / float(N);
  const float off = smoothing / float(K), on = 1.0f - smoothing + off;
  parallel_for(N, std::max<int64_t>(1, 4096 / K), [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      const float* x = logits + i * K;
      float* d = dlogits + i * K;
      const float y = labels[i];
      if (!valid_label(y, K)) {
        std::fill(d, d + K, NAN);
        continue;
      }
      const int64_t yi = int64_t(y);
      const float mx = lse[2 * i], log_se = lse[2 * i + 1];
      for (int64_t k = 0; k < K; ++k) d[k] = math::ce_grad(x[k], mx, log_se, k == yi ? on : off, scale);
    }
  });
}

}  // namespace cpu
}  // namespace adashift

// CPU kernels for LayerNorm, softmax, batched matmul and permute (context networks).
#include <algorithm>
#include <cmath>
#include <vector>
#include "../ops/dense.h"
#include "../threadpool.h"
#include "../math.h"
#include "gemm.h"
#include "loops.h"
#include "reduce.h"

namespace adashift {
namespace cpu {

static int64_t row_grain(int64_t cols) { return std::max<int64_t>(1, 8192 / std::max<int64_t>(cols, 1)); }

void layernorm_forward(const float* x, const float* w, const float* b, float eps, int64_t rows,
                       int64_t C, float* y, float* mean, float* rstd) {
  parallel_for(rows, row_grain(C), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = x + r * C;
      double s = 0.0;
      for (int64_t j = 0; j < C; ++j) s += xr[j];
      const double mu = s / double(C);
      double v = 0.0;
      for (int64_t j = 0; j < C; ++j) { double d = xr[j] - mu; v += d * d; }
      const float rs = float(1.0 / std::sqrt(v / double(C) + double(eps)));
      const float m = float(mu);
      float* yr = y + r * C;
      for (int64_t j = 0; j < C; ++j) yr[j] = (xr[j] - m) * rs * w[j] + b[j];
      mean[r] = m;
      rstd[r] = rs;
    }
  });
}

void layernorm_backward(const float* dy, const float* x, const float* mean, const float* rstd,
                        const float* w, int64_t rows, int64_t C, float* dx, float* dw, float* db) {
  // dx = rstd * (dy*w - mean(dy*w) - xhat * mean(dy*w*xhat))
  parallel_for(rows, row_grain(C), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = x + r * C;
      const float* dyr = dy + r * C;
      const float m = mean[r], rs = rstd[r];
      double a = 0.0, bsum = 0.0;
      for (int64_t j = 0; j < C; ++j) {
        const double g = double(dyr[j]) * w[j];
        a += g;
        bsum += g * double((xr[j] - m) * rs);
      }
      const float ma = float(a / double(C)), mb = float(bsum / double(C));
      float* dxr = dx + r * C;
      for (int64_t j = 0; j < C; ++j) {
        const float xhat = (xr[j] - m) * rs;
        dxr[j] = rs * (dyr[j] * w[j] - ma - xhat * mb);
      }
    }
  });
  deterministic_column_sums(rows, C, dw, [&](int64_t r, int64_t j) {
    return double(dy[r * C + j]) * double((x[r * C + j] - mean[r]) * rstd[r]);
  });
  deterministic_column_sums(rows, C, db, [&](int64_t r, int64_t j) { return double(dy[r * C + j]); });
}

void softmax_forward(const float* x, int64_t rows, int64_t n, float* y) {
  parallel_for(rows, row_grain(n), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = x + r * n;
      float* yr = y + r * n;
      float mx = xr[0];
      for (int64_t j = 1; j < n; ++j) mx = std::max(mx, xr[j]);
      for (int64_t j = 0; j < n; ++j) yr[j] = math::vexp(xr[j] - mx);
      double s = 0.0;
      for (int64_t j = 0; j < n; ++j) s += yr[j];
      const float inv = float(1.0 / s);
      for (int64_t j = 0; j < n; ++j) yr[j] *= inv;
    }
  });
}

void softmax_backward(const float* y, const float* dy, int64_t rows, int64_t n, float* dx) {
  parallel_for(rows, row_grain(n), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* yr = y + r * n;
      const float* dyr = dy + r * n;
      double s = 0.0;
      for (int64_t j = 0; j < n; ++j) s += double(yr[j]) * dyr[j];
      const float sf = float(s);
      float* dxr = dx + r * n;
      for (int64_t j = 0; j < n; ++j) dxr[j] = yr[j] * (dyr[j] - sf);
    }
  });
}

// Batched matmul on the package's own GEMM (cpu/gemm.h), whose bits do not depend on the
// thread count (BLAS libraries split their work by thread count and round differently). Many
// small products (attention heads): one batch entry per pool task, each on the single-threaded
// kernel; otherwise entries in order, each GEMM parallel over blocks of C.
void matmul(const MatmulDims& d, const float* a, const float* b, float* c) {
  const int64_t lda = d.trans_a ? d.M : d.K, ldb = d.trans_b ? d.K : d.N;
  const double macs = double(d.M) * double(d.N) * double(d.K);
  if (d.batch >= num_threads() && num_threads() > 1 && macs < double(1 << 20)) {
    parallel_for(d.batch, 1, [&](int64_t e0, int64_t e1) {
      for (int64_t e = e0; e < e1; ++e)
        gemm_serial(d.trans_a, d.trans_b, d.M, d.N, d.K, 1.0f, a + e * d.stride_a, lda,
                    b + e * d.stride_b, ldb, 0.0f, c + e * d.stride_c, d.N);
    });
    return;
  }
  for (int64_t e = 0; e < d.batch; ++e)
    gemm_reference_kernel(d.trans_a, d.trans_b, d.M, d.N, d.K, 1.0f, a + e * d.stride_a, lda,
                          b + e * d.stride_b, ldb, 0.0f, c + e * d.stride_c, d.N);
}

void permute(const PermuteDims& d, const float* x, float* out) {
  int64_t total = 1;
  for (int i = 0; i < d.rank; ++i) total *= d.out_shape[i];
  if (d.rank == 0) { out[0] = x[0]; return; }
  // The last output axis is copied as a run; when it is contiguous in x too, that run is a
  // plain copy. Index arithmetic happens once per run, not per element.
  const int last = d.rank - 1;
  const int64_t run = d.out_shape[last], rstride = d.in_strides[last];
  const int64_t runs = total / std::max<int64_t>(run, 1);
  parallel_for(runs, std::max<int64_t>(1, 16384 / std::max<int64_t>(run, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      int64_t rem = r, src = 0;
      for (int i = last - 1; i >= 0; --i) {
        src += (rem % d.out_shape[i]) * d.in_strides[i];
        rem /= d.out_shape[i];
      }
      float* o = out + r * run;
      const float* in = x + src;
      if (rstride == 1) std::copy(in, in + run, o);
      else for (int64_t j = 0; j < run; ++j) o[j] = in[j * rstride];
    }
  });
}

}  // namespace cpu
}  // namespace adashift

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
    loops::layernorm_rows(x + r0 * C, w, b, eps, r1 - r0, C, y + r0 * C, mean + r0, rstd + r0);
  });
}

// The rows are cut into fixed blocks (independent of the thread count); each block writes its
// dx rows and sums its weight/bias gradient partials in order, in double; the partials are then
// added in block order. One block (the per-sample calls of the fused ops) runs inline.
void layernorm_backward(const float* dy, const float* x, const float* mean, const float* rstd,
                        const float* w, int64_t rows, int64_t C, float* dx, float* dw, float* db) {
  constexpr int64_t kRowBlock = 64;
  const int64_t blocks = std::max<int64_t>((rows + kRowBlock - 1) / kRowBlock, 1);
  thread_local std::vector<double> part;
  const size_t need = size_t(blocks * 2 * C);
  if (part.size() < need) part.resize(need);
  std::fill(part.begin(), part.begin() + need, 0.0);
  double* parts = part.data();
  parallel_for(blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t bl = b0; bl < b1; ++bl) {
      const int64_t r0 = bl * kRowBlock, r1 = std::min(rows, r0 + kRowBlock);
      loops::layernorm_backward_rows(dy + r0 * C, x + r0 * C, mean + r0, rstd + r0, w, r1 - r0, C,
                                     dx + r0 * C, parts + bl * 2 * C, parts + bl * 2 * C + C);
    }
  });
  for (int64_t j = 0; j < C; ++j) {
    double sw = 0.0, sb = 0.0;
    for (int64_t bl = 0; bl < blocks; ++bl) {
      sw += parts[bl * 2 * C + j];
      sb += parts[bl * 2 * C + C + j];
    }
    dw[j] = float(sw);
    db[j] = float(sb);
  }
}

void softmax_forward(const float* x, int64_t rows, int64_t n, float* y) {
  parallel_for(rows, row_grain(n), [&](int64_t r0, int64_t r1) { loops::softmax_rows(x + r0 * n, r1 - r0, n, y + r0 * n); });
}

void softmax_backward(const float* y, const float* dy, int64_t rows, int64_t n, float* dx) {
  parallel_for(rows, row_grain(n), [&](int64_t r0, int64_t r1) {
    loops::softmax_backward_rows(y + r0 * n, dy + r0 * n, r1 - r0, n, dx + r0 * n);
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

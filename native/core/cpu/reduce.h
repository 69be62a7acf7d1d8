// Deterministic CPU reductions: the work is cut into fixed-size blocks (independent of the
// thread count), each block sums in order in double, and the block partials are added in
// order. The same input gives the same bits for any number of threads.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>
#include "../threadpool.h"

namespace adashift {
namespace cpu {

constexpr int64_t kReduceBlock = 4096;

// Sums f(i) for i in [0, n).
template <typename F>
double deterministic_sum(int64_t n, F f) {
  int64_t blocks = (n + kReduceBlock - 1) / kReduceBlock;
  std::vector<double> part(size_t(blocks > 0 ? blocks : 1), 0.0);
  parallel_for(blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      int64_t i0 = b * kReduceBlock, i1 = std::min(n, i0 + kReduceBlock);
      double acc = 0.0;
      for (int64_t i = i0; i < i1; ++i) acc += f(i);
      part[size_t(b)] = acc;
    }
  });
  double total = 0.0;
  for (double p : part) total += p;
  return total;
}

// out[j] = sum over rows r of row_fn(r, j), for j in [0, cols): rows are cut into fixed blocks,
// each block's partial row is summed in order, then the partials in block order.
template <typename F>
void deterministic_column_sums(int64_t rows, int64_t cols, float* out, F value) {
  constexpr int64_t kRowBlock = 64;
  int64_t blocks = (rows + kRowBlock - 1) / kRowBlock;
  std::vector<double> part(size_t(std::max<int64_t>(blocks, 1) * cols), 0.0);
  parallel_for(blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      double* acc = part.data() + b * cols;
      int64_t r1 = std::min(rows, (b + 1) * kRowBlock);
      for (int64_t r = b * kRowBlock; r < r1; ++r)
        for (int64_t j = 0; j < cols; ++j) acc[j] += value(r, j);
    }
  });
  for (int64_t j = 0; j < cols; ++j) {
    double s = 0.0;
    for (int64_t b = 0; b < blocks; ++b) s += part[size_t(b * cols + j)];
    out[j] = float(s);
  }
}

}  // namespace cpu
}  // namespace adashift

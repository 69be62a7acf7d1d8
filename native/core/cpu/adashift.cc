// CPU AdaShift kernels. Work is split by (n, c) planes; within a plane the loops run cell by
// cell over the cell's contiguous row segments, so the inner loop is a plain vectorisable run
// with one shift value, and each cell's reduction is summed in a fixed order (deterministic
// for any thread count).
#include <algorithm>
#include <vector>
#include "../ops/adashift.h"
#include "../math.h"
#include "../threadpool.h"
#include "loops.h"

namespace adashift {
namespace cpu {

namespace {

struct Cell {
  int64_t token;          // r * Pw + q
  int h0, h1, w0, w1;     // pixel rows [h0, h1), columns [w0, w1)
  int64_t count() const { return int64_t(h1 - h0) * (w1 - w0); }
};

template <typename CellFn>
inline void for_each_cell(const RegionGrid& g, CellFn fn) {
  const int H = int(g.H), W = int(g.W);
  for (int r = 0; r < g.Ph; ++r) {
    const int h0 = math::cell_begin(r, H, g.Ph), h1 = math::cell_begin(r + 1, H, g.Ph);
    for (int q = 0; q < g.Pw; ++q)
      fn(Cell{int64_t(r) * g.Pw + q, h0, h1, math::cell_begin(q, W, g.Pw),
              math::cell_begin(q + 1, W, g.Pw)});
  }
}

// fn(n, c, plane offset) for every (n, c) plane, planes split across the pool.
template <typename PlaneFn>
inline void for_each_plane(const RegionGrid& g, PlaneFn fn) {
  const int64_t planes = g.N * g.C, hw = g.H * g.W;
  parallel_for(planes, std::max<int64_t>(1, (int64_t(1) << 14) / std::max<int64_t>(hw, 1)),
               [&](int64_t p0, int64_t p1) {
                 for (int64_t p = p0; p < p1; ++p) fn(p / g.C, p % g.C, p * hw);
               });
}

// Index of token p of sample n, channel c in a [N, T, C] tensor.
inline int64_t tok(const RegionGrid& g, int64_t n, int64_t p, int64_t c) {
  return (n * g.tokens() + p) * g.C + c;
}

}  // namespace

// Runs fn(offset, length) over the contiguous pieces of a cell within a plane: the whole
// cell at once when it spans full rows (always for AdaShift-B), else row by row.
template <typename RunFn>
inline void for_each_run(const RegionGrid& g, const Cell& cell, int64_t base, RunFn fn) {
  if (cell.w0 == 0 && cell.w1 == g.W) {
    fn(base + int64_t(cell.h0) * g.W, int64_t(cell.h1 - cell.h0) * g.W);
    return;
  }
  for (int h = cell.h0; h < cell.h1; ++h) fn(base + int64_t(h) * g.W + cell.w0, cell.w1 - cell.w0);
}

// Grids whose cells split rows (Pw > 1) are processed a band at a time: the rows of one cell
// row form a contiguous run of the plane, and a per-pixel copy of the band's shifts (and
// pooled gradients) lets one vectorised loop cover the whole band instead of many short
// cell segments. Cell sums come from per-column sums of the band, added in a fixed order.
struct Band {
  int r, h0, h1;
  int64_t len(const RegionGrid& g) const { return int64_t(h1 - h0) * g.W; }
};

template <typename BandFn>
inline void for_each_band(const RegionGrid& g, BandFn fn) {
  for (int r = 0; r < g.Ph; ++r)
    fn(Band{r, math::cell_begin(r, int(g.H), g.Ph), math::cell_begin(r + 1, int(g.H), g.Ph)});
}

// Scratch for one band, per thread (reused across calls: no allocation per plane).
inline std::vector<float>& scratch(int which, size_t n) {
  thread_local std::vector<float> buf[3];
  if (buf[which].size() < n) buf[which].resize(n);
  return buf[which];
}

// dst[h * W + w] = value of the cell of column w in this band, for every row of the band.
template <typename CellValue>
inline void expand_band(const RegionGrid& g, const Band& b, float* dst, CellValue value) {
  const int W = int(g.W);
  for (int q = 0; q < g.Pw; ++q) {
    const int w0 = math::cell_begin(q, W, g.Pw), w1 = math::cell_begin(q + 1, W, g.Pw);
    const float v = value(int64_t(b.r) * g.Pw + q, int64_t(b.h1 - b.h0) * (w1 - w0));
    for (int w = w0; w < w1; ++w) dst[w] = v;
  }
  for (int h = 1; h < b.h1 - b.h0; ++h) std::copy(dst, dst + W, dst + int64_t(h) * W);
}

// Sums of each cell of the band from per-pixel values: column sums, then segments in order.
inline void band_cell_sums(const RegionGrid& g, const Band& b, const float* values, float* cols,
                           float* cell_out /* [Pw] */) {
  const int W = int(g.W);
  loops::column_sums(values, b.h1 - b.h0, W, cols);
  for (int q = 0; q < g.Pw; ++q) {
    const int w0 = math::cell_begin(q, W, g.Pw), w1 = math::cell_begin(q + 1, W, g.Pw);
    float acc = 0.0f;
    for (int w = w0; w < w1; ++w) acc += cols[w];
    cell_out[q] = acc;
  }
}

void region_pool_forward(const RegionGrid& g, const float* x, float* t) {
  for_each_plane(g, [&](int64_t n, int64_t c, int64_t base) {
    if (g.Pw == 1) {
      for_each_cell(g, [&](const Cell& cell) {
        float acc = 0.0f;
        for_each_run(g, cell, base, [&](int64_t o, int64_t len) { acc += loops::sum(x + o, len); });
        t[tok(g, n, cell.token, c)] = acc / float(cell.count());
      });
      return;
    }
    float* cols = scratch(0, size_t(g.W) + size_t(g.Pw)).data();
    float* cells = cols + g.W;
    for_each_band(g, [&](const Band& b) {
      band_cell_sums(g, b, x + base + int64_t(b.h0) * g.W, cols, cells);
      for (int q = 0; q < g.Pw; ++q) {
        const int64_t cols_in_cell = math::cell_begin(q + 1, int(g.W), g.Pw) - math::cell_begin(q, int(g.W), g.Pw);
        t[tok(g, n, int64_t(b.r) * g.Pw + q, c)] = cells[q] / float(int64_t(b.h1 - b.h0) * cols_in_cell);
      }
    });
  });
}

void region_pool_backward(const RegionGrid& g, const float* dt, float* dx) {
  for_each_plane(g, [&](int64_t n, int64_t c, int64_t base) {
    for_each_cell(g, [&](const Cell& cell) {
      const float v = dt[tok(g, n, cell.token, c)] / float(cell.count());
      for_each_run(g, cell, base, [&](int64_t o, int64_t len) { std::fill(dx + o, dx + o + len, v); });
    });
  });
}

void gate_forward(const RegionGrid& g, const float* x, const float* s, float* y) {
  for_each_plane(g, [&](int64_t n, int64_t c, int64_t base) {
    if (g.Pw == 1) {
      for_each_cell(g, [&](const Cell& cell) {
        const float sv = s[tok(g, n, cell.token, c)];
        for_each_run(g, cell, base, [&](int64_t o, int64_t len) { loops::gate_forward(x + o, sv, y + o, len); });
      });
      return;
    }
    for_each_band(g, [&](const Band& b) {
      float* sb = scratch(0, size_t(b.len(g))).data();
      expand_band(g, b, sb, [&](int64_t token, int64_t) { return s[tok(g, n, token, c)]; });
      const int64_t o = base + int64_t(b.h0) * g.W;
      loops::gate_forward_v(x + o, sb, y + o, b.len(g));
    });
  });
}

void gate_backward_reduce(const RegionGrid& g, const float* x, const float* dy, const float* s,
                          float* ds) {
  for_each_plane(g, [&](int64_t n, int64_t c, int64_t base) {
    if (g.Pw == 1) {
      for_each_cell(g, [&](const Cell& cell) {
        const float sv = s[tok(g, n, cell.token, c)];
        float acc = 0.0f;
        for_each_run(g, cell, base, [&](int64_t o, int64_t len) { acc += loops::gate_shift_grad(x + o, dy + o, sv, len); });
        ds[tok(g, n, cell.token, c)] = acc;
      });
      return;
    }
    for_each_band(g, [&](const Band& b) {
      const int64_t len = b.len(g);
      float* sb = scratch(0, size_t(len)).data();
      float* contrib = scratch(1, size_t(len)).data();
      float* cols = scratch(2, size_t(g.W) + size_t(g.Pw)).data();
      expand_band(g, b, sb, [&](int64_t token, int64_t) { return s[tok(g, n, token, c)]; });
      const int64_t o = base + int64_t(b.h0) * g.W;
      loops::gate_shift_grad_v(x + o, dy + o, sb, contrib, len);
      band_cell_sums(g, b, contrib, cols, cols + g.W);
      for (int q = 0; q < g.Pw; ++q) ds[tok(g, n, int64_t(b.r) * g.Pw + q, c)] = cols[g.W + q];
    });
  });
}

void gate_backward_apply(const RegionGrid& g, const float* x, const float* dy, const float* s,
                         const float* dt, float* dx) {
  for_each_plane(g, [&](int64_t n, int64_t c, int64_t base) {
    if (g.Pw == 1) {
      for_each_cell(g, [&](const Cell& cell) {
        const int64_t ti = tok(g, n, cell.token, c);
        const float sv = s[ti];
        const float pooled = dt ? dt[ti] / float(cell.count()) : 0.0f;
        for_each_run(g, cell, base, [&](int64_t o, int64_t len) { loops::gate_input_grad(x + o, dy + o, sv, pooled, dx + o, len); });
      });
      return;
    }
    for_each_band(g, [&](const Band& b) {
      const int64_t len = b.len(g);
      float* sb = scratch(0, size_t(len)).data();
      float* add = scratch(1, size_t(len)).data();
      expand_band(g, b, sb, [&](int64_t token, int64_t) { return s[tok(g, n, token, c)]; });
      expand_band(g, b, add, [&](int64_t token, int64_t count) {
        return dt ? dt[tok(g, n, token, c)] / float(count) : 0.0f;
      });
      const int64_t o = base + int64_t(b.h0) * g.W;
      loops::gate_input_grad_v(x + o, dy + o, sb, add, dx + o, len);
    });
  });
}

}  // namespace cpu
}  // namespace adashift

// CPU AdaShift kernels. Work is split by (n, c) planes; within a plane the loops run cell by
// cell over the cell's contiguous row segments, so the inner loop is a plain vectorisable run
// with one shift value, and each cell's reduction is summed in a fixed order (deterministic
// for any thread count).
#include <algorithm>
#include "../ops/adashift.h"
#include "../math.h"
#include "../threadpool.h"

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

void region_pool_forward(const RegionGrid& g, const float* x, float* t) {
  for_each_plane(g, [&](int64_t n, int64_t c, int64_t base) {
    for_each_cell(g, [&](const Cell& cell) {
      float acc = 0.0f;
      for (int h = cell.h0; h < cell.h1; ++h) {
        const float* row = x + base + int64_t(h) * g.W;
        float s = 0.0f;
        for (int w = cell.w0; w < cell.w1; ++w) s += row[w];
        acc += s;
      }
      t[tok(g, n, cell.token, c)] = acc / float(cell.count());
    });
  });
}

void region_pool_backward(const RegionGrid& g, const float* dt, float* dx) {
  for_each_plane(g, [&](int64_t n, int64_t c, int64_t base) {
    for_each_cell(g, [&](const Cell& cell) {
      const float v = dt[tok(g, n, cell.token, c)] / float(cell.count());
      for (int h = cell.h0; h < cell.h1; ++h) {
        float* row = dx + base + int64_t(h) * g.W;
        for (int w = cell.w0; w < cell.w1; ++w) row[w] = v;
      }
    });
  });
}

void gate_forward(const RegionGrid& g, const float* x, const float* s, float* y) {
  for_each_plane(g, [&](int64_t n, int64_t c, int64_t base) {
    for_each_cell(g, [&](const Cell& cell) {
      const float sv = s[tok(g, n, cell.token, c)];
      for (int h = cell.h0; h < cell.h1; ++h) {
        const int64_t o = base + int64_t(h) * g.W;
        const float* xr = x + o;
        float* yr = y + o;
        for (int w = cell.w0; w < cell.w1; ++w) yr[w] = math::gate(xr[w], sv);
      }
    });
  });
}

void gate_backward_reduce(const RegionGrid& g, const float* x, const float* dy, const float* s,
                          float* ds) {
  for_each_plane(g, [&](int64_t n, int64_t c, int64_t base) {
    for_each_cell(g, [&](const Cell& cell) {
      const float sv = s[tok(g, n, cell.token, c)];
      float acc = 0.0f;
      for (int h = cell.h0; h < cell.h1; ++h) {
        const int64_t o = base + int64_t(h) * g.W;
        const float* xr = x + o;
        const float* dyr = dy + o;
        float part = 0.0f;
        for (int w = cell.w0; w < cell.w1; ++w) part += math::gate_grad(xr[w], sv, dyr[w]).ds;
        acc += part;
      }
      ds[tok(g, n, cell.token, c)] = acc;
    });
  });
}

void gate_backward_apply(const RegionGrid& g, const float* x, const float* dy, const float* s,
                         const float* dt, float* dx) {
  for_each_plane(g, [&](int64_t n, int64_t c, int64_t base) {
    for_each_cell(g, [&](const Cell& cell) {
      const int64_t ti = tok(g, n, cell.token, c);
      const float sv = s[ti];
      const float pooled = dt ? dt[ti] / float(cell.count()) : 0.0f;
      for (int h = cell.h0; h < cell.h1; ++h) {
        const int64_t o = base + int64_t(h) * g.W;
        const float* xr = x + o;
        const float* dyr = dy + o;
        float* dxr = dx + o;
        for (int w = cell.w0; w < cell.w1; ++w)
          dxr[w] = math::gate_grad(xr[w], sv, dyr[w]).dx + pooled;
      }
    });
  });
}

}  // namespace cpu
}  // namespace adashift

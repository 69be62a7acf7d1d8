// CPU AdaShift kernels. Work is split by (n, c) planes; within a plane the loops run cell by
// cell over the cell's contiguous row segments, so the inner loop is a plain vectorisable run
// with one shift value, and each cell's reduction is summed in a fixed order (deterministic
// for any thread count).
#include <algorithm>
#include <memory>
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

// Index of token p of sample n, channel c in a [N, T, C] tensor ([N, C, T] when channel_major).
inline int64_t tok(const RegionGrid& g, int64_t n, int64_t p, int64_t c) {
  return g.channel_major ? (n * g.C + c) * g.tokens() + p : (n * g.tokens() + p) * g.C + c;
}

}  // namespace

// Runs fn(offset, length) over a cell of a grid with one cell per row band (Pw = 1, always
// for AdaShift-B): the cell's rows are one contiguous run of the plane.
template <typename RunFn>
inline void for_each_run(const RegionGrid& g, const Cell& cell, int64_t base, RunFn fn) {
  fn(base + int64_t(cell.h0) * g.W, int64_t(cell.h1 - cell.h0) * g.W);
}

// Grids whose cells split rows (Pw > 1) are processed a plane at a time: the plane's cell
// values are laid out per pixel once (a map of H*W floats, in L1), so each pass is one
// vectorised loop over the whole plane instead of many short cell segments. Cell sums come
// from per-band column sums, then each cell's columns added in order (a fixed order).
struct GridLayout {
  std::vector<int> row0;      // [Ph + 1] first pixel row of each cell row
  std::vector<int> col0;      // [Pw + 1] first pixel column of each cell column
  std::vector<int> flat_cell;  // cell column of pixel column i % W, over the tallest cell row
  std::vector<float> inv;      // [T] 1 / |cell| of each token
  bool identity;               // every cell is one pixel (P >= H and W): maps are the values
  explicit GridLayout(const RegionGrid& g) : row0(size_t(g.Ph) + 1), col0(size_t(g.Pw) + 1), inv(size_t(g.tokens())), identity(g.Ph == g.H && g.Pw == g.W) {
    for (int r = 0; r <= g.Ph; ++r) row0[size_t(r)] = math::cell_begin(r, int(g.H), g.Ph);
    for (int q = 0; q <= g.Pw; ++q) col0[size_t(q)] = math::cell_begin(q, int(g.W), g.Pw);
    int tallest = 0;
    for (int r = 0; r < g.Ph; ++r) tallest = std::max(tallest, row0[size_t(r) + 1] - row0[size_t(r)]);
    flat_cell.resize(size_t(tallest) * size_t(g.W));
    for (size_t i = 0; i < flat_cell.size(); ++i) flat_cell[i] = math::cell_of(int(i % size_t(g.W)), int(g.W), g.Pw);
    for (int r = 0; r < g.Ph; ++r)
      for (int q = 0; q < g.Pw; ++q) inv[size_t(r) * size_t(g.Pw) + size_t(q)] = 1.0f / float(count(r, q));
  }
  int64_t count(int r, int q) const {
    return int64_t(row0[size_t(r) + 1] - row0[size_t(r)]) * (col0[size_t(q) + 1] - col0[size_t(q)]);
  }
};

// The layout of the calling thread's last grid (the fused AdaShift-MA calls the region passes
// once per sample with the same grid). The reference stays valid while the caller's pass runs:
// only a call on the same thread with another grid replaces it.
inline const GridLayout& layout_of(const RegionGrid& g) {
  thread_local std::unique_ptr<GridLayout> cached;
  thread_local int64_t key[4] = {-1, -1, -1, -1};
  if (!cached || key[0] != g.H || key[1] != g.W || key[2] != g.Ph || key[3] != g.Pw) {
    cached = std::make_unique<GridLayout>(g);
    key[0] = g.H; key[1] = g.W; key[2] = g.Ph; key[3] = g.Pw;
  }
  return *cached;
}

// Per-thread scratch (reused across planes and calls: no allocation per plane).
inline float* scratch(int which, size_t n) {
  thread_local std::vector<float> buf[4];
  if (buf[which].size() < n) buf[which].resize(n);
  return buf[which].data();
}

// The plane's per-pixel map of its cell values vals [T]: map[h * W + w] = vals[cell of (h, w)],
// laid out in map; with one-pixel cells that is vals itself (returned, nothing written).
inline const float* expand_plane(const RegionGrid& g, const GridLayout& L, const float* vals, float* map) {
  if (L.identity) return vals;
  loops::expand_cells(vals, L.row0.data(), L.flat_cell.data(), g.Ph, g.Pw, g.W, map);
  return map;
}

// The sums of values [H*W] over each cell, in cells [T] (cols: scratch of Ph*W floats); with
// one-pixel cells that is values itself (returned, nothing written).
inline const float* cell_sums(const RegionGrid& g, const GridLayout& L, const float* values,
                              float* cols, float* cells) {
  if (L.identity) return values;
  loops::band_column_sums(values, g.W, L.row0.data(), g.Ph, cols);
  for (int r = 0; r < g.Ph; ++r)
    for (int q = 0; q < g.Pw; ++q) {
      const float* c = cols + int64_t(r) * g.W;
      float acc = 0.0f;
      for (int w = L.col0[size_t(q)]; w < L.col0[size_t(q) + 1]; ++w) acc += c[w];
      cells[int64_t(r) * g.Pw + q] = acc;
    }
  return cells;
}

// The plane (n, c)'s T values of src: in place when channel_major, else gathered into vals.
inline const float* plane_tokens(const RegionGrid& g, const float* src, int64_t n, int64_t c, float* vals) {
  if (g.channel_major) return src + tok(g, n, 0, c);
  for (int64_t p = 0; p < g.tokens(); ++p) vals[p] = src[tok(g, n, p, c)];
  return vals;
}

// vals[p] = src[token p of plane (n, c)] / |cell p| (the pooled path's gradient per pixel).
inline void tokens_per_pixel(const RegionGrid& g, const GridLayout& L, const float* src, int64_t n,
                             int64_t c, float* vals) {
  for (int64_t p = 0; p < g.tokens(); ++p) vals[p] = src[tok(g, n, p, c)] * L.inv[size_t(p)];
}

// Per plane, the shift gradient's per-pixel terms (and, when dx is given, the direct input
// gradient in the same pass), summed per cell into ds.
static void shift_grads_by_plane(const RegionGrid& g, const float* x, const float* dy, const float* s,
                                 float* dx, float* ds) {
  const GridLayout& L = layout_of(g);
  const int64_t HW = g.H * g.W;
  for_each_plane(g, [&](int64_t n, int64_t c, int64_t base) {
    float* vals = scratch(0, size_t(g.tokens()));
    float* smap = scratch(1, size_t(HW));
    float* contrib = scratch(2, size_t(HW));
    float* cols = scratch(3, size_t(g.Ph * g.W));
    const float* sm = expand_plane(g, L, plane_tokens(g, s, n, c, vals), smap);
    if (dx) loops::gate_grads_v(x + base, dy + base, sm, dx + base, contrib, HW);
    else loops::gate_shift_grad_v(x + base, dy + base, sm, contrib, HW);
    const float* sums = cell_sums(g, L, contrib, cols, vals);
    for (int64_t p = 0; p < g.tokens(); ++p) ds[tok(g, n, p, c)] = sums[p];
  });
}

void region_pool_forward(const RegionGrid& g, const float* x, float* t) {
  if (g.Pw == 1) {
    for_each_plane(g, [&](int64_t n, int64_t c, int64_t base) {
      for_each_cell(g, [&](const Cell& cell) {
        float acc = 0.0f;
        for_each_run(g, cell, base, [&](int64_t o, int64_t len) { acc += loops::sum(x + o, len); });
        t[tok(g, n, cell.token, c)] = acc / float(cell.count());
      });
    });
    return;
  }
  const GridLayout& L = layout_of(g);
  for_each_plane(g, [&](int64_t n, int64_t c, int64_t base) {
    float* cols = scratch(0, size_t(g.Ph * g.W));
    float* cells = scratch(1, size_t(g.tokens()));
    const float* sums = cell_sums(g, L, x + base, cols, cells);
    for (int64_t p = 0; p < g.tokens(); ++p) t[tok(g, n, p, c)] = sums[p] * L.inv[size_t(p)];
  });
}

void region_pool_backward(const RegionGrid& g, const float* dt, float* dx) {
  if (g.Pw == 1) {
    for_each_plane(g, [&](int64_t n, int64_t c, int64_t base) {
      for_each_cell(g, [&](const Cell& cell) {
        const float v = dt[tok(g, n, cell.token, c)] / float(cell.count());
        for_each_run(g, cell, base, [&](int64_t o, int64_t len) { std::fill(dx + o, dx + o + len, v); });
      });
    });
    return;
  }
  const GridLayout& L = layout_of(g);
  for_each_plane(g, [&](int64_t n, int64_t c, int64_t base) {
    float* vals = scratch(0, size_t(g.tokens()));
    tokens_per_pixel(g, L, dt, n, c, vals);
    const float* map = expand_plane(g, L, vals, dx + base);
    if (map != dx + base) std::copy(map, map + g.H * g.W, dx + base);
  });
}

void gate_forward(const RegionGrid& g, const float* x, const float* s, float* y) {
  if (g.Pw == 1) {
    for_each_plane(g, [&](int64_t n, int64_t c, int64_t base) {
      for_each_cell(g, [&](const Cell& cell) {
        const float sv = s[tok(g, n, cell.token, c)];
        for_each_run(g, cell, base, [&](int64_t o, int64_t len) { loops::gate_forward(x + o, sv, y + o, len); });
      });
    });
    return;
  }
  const GridLayout& L = layout_of(g);
  const int64_t HW = g.H * g.W;
  for_each_plane(g, [&](int64_t n, int64_t c, int64_t base) {
    float* vals = scratch(0, size_t(g.tokens()));
    float* smap = scratch(1, size_t(HW));
    loops::gate_forward_v(x + base, expand_plane(g, L, plane_tokens(g, s, n, c, vals), smap), y + base, HW);
  });
}

void gate_backward_reduce(const RegionGrid& g, const float* x, const float* dy, const float* s,
                          float* ds) {
  if (g.Pw == 1) {
    for_each_plane(g, [&](int64_t n, int64_t c, int64_t base) {
      for_each_cell(g, [&](const Cell& cell) {
        const float sv = s[tok(g, n, cell.token, c)];
        float acc = 0.0f;
        for_each_run(g, cell, base, [&](int64_t o, int64_t len) { acc += loops::gate_shift_grad(x + o, dy + o, sv, len); });
        ds[tok(g, n, cell.token, c)] = acc;
      });
    });
    return;
  }
  shift_grads_by_plane(g, x, dy, s, nullptr, ds);
}

void gate_backward_apply(const RegionGrid& g, const float* x, const float* dy, const float* s,
                         const float* dt, float* dx) {
  if (g.Pw == 1) {
    for_each_plane(g, [&](int64_t n, int64_t c, int64_t base) {
      for_each_cell(g, [&](const Cell& cell) {
        const int64_t ti = tok(g, n, cell.token, c);
        const float sv = s[ti];
        const float pooled = dt ? dt[ti] / float(cell.count()) : 0.0f;
        for_each_run(g, cell, base, [&](int64_t o, int64_t len) { loops::gate_input_grad(x + o, dy + o, sv, pooled, dx + o, len); });
      });
    });
    return;
  }
  const GridLayout& L = layout_of(g);
  const int64_t HW = g.H * g.W;
  for_each_plane(g, [&](int64_t n, int64_t c, int64_t base) {
    float* vals = scratch(0, size_t(g.tokens()));
    float* smap = scratch(1, size_t(HW));
    float* add = scratch(2, size_t(HW));
    float* dvals = scratch(3, size_t(g.tokens()));
    const float* sm = expand_plane(g, L, plane_tokens(g, s, n, c, vals), smap);
    const float* am = add;
    if (dt) {
      tokens_per_pixel(g, L, dt, n, c, dvals);
      am = expand_plane(g, L, dvals, add);
    } else {
      std::fill(add, add + HW, 0.0f);
    }
    loops::gate_input_grad_v(x + base, dy + base, sm, am, dx + base, HW);
  });
}

void gate_backward_grads(const RegionGrid& g, const float* x, const float* dy, const float* s,
                         float* dx, float* ds) {
  shift_grads_by_plane(g, x, dy, s, dx, ds);
}

void region_pool_backward_add(const RegionGrid& g, const float* dt, float* dx) {
  const GridLayout& L = layout_of(g);
  const int64_t HW = g.H * g.W;
  for_each_plane(g, [&](int64_t n, int64_t c, int64_t base) {
    float* vals = scratch(0, size_t(g.tokens()));
    float* add = scratch(1, size_t(HW));
    tokens_per_pixel(g, L, dt, n, c, vals);
    loops::add_v(dx + base, expand_plane(g, L, vals, add), HW);
  });
}

}  // namespace cpu
}  // namespace adashift

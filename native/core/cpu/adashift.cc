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

// Grids whose cells split rows (Pw > 1) are processed a block of planes at a time: the block's
// cell values are laid out per pixel once (a map in L1), so each pass is one vectorised loop
// over the whole block instead of many short cell segments or one call per small plane. The k
// planes of a block are consecutive in memory, so they stack into one tall plane of k*H rows
// and k*Ph bands. Cell sums come from per-band column sums, then each cell's columns added in
// order: every plane's sums are the same additions in the same order whatever the block size.
struct GridLayout {
  int k;                       // planes stacked
  std::vector<int> row0;       // [k*Ph + 1] first pixel row of each band of the stack
  std::vector<int> col0;       // [Pw + 1] first pixel column of each cell column
  std::vector<int> flat_cell;  // cell column of pixel column i % W, over the tallest cell row
  std::vector<float> inv;      // [k*T] 1 / |cell| of each token of the stack
  bool identity;               // every cell is one pixel (P >= H and W): maps are the values
  GridLayout(const RegionGrid& g, int planes)
      : k(planes), row0(size_t(planes) * size_t(g.Ph) + 1), col0(size_t(g.Pw) + 1),
        inv(size_t(planes) * size_t(g.tokens())), identity(g.Ph == g.H && g.Pw == g.W) {
    for (int j = 0; j < k; ++j)
      for (int r = 0; r < g.Ph; ++r)
        row0[size_t(j) * size_t(g.Ph) + size_t(r)] = j * int(g.H) + math::cell_begin(r, int(g.H), g.Ph);
    row0[size_t(k) * size_t(g.Ph)] = k * int(g.H);
    for (int q = 0; q <= g.Pw; ++q) col0[size_t(q)] = math::cell_begin(q, int(g.W), g.Pw);
    int tallest = 0;
    for (int r = 0; r < g.Ph; ++r) tallest = std::max(tallest, row0[size_t(r) + 1] - row0[size_t(r)]);
    flat_cell.resize(size_t(tallest) * size_t(g.W));
    for (size_t i = 0; i < flat_cell.size(); ++i) flat_cell[i] = math::cell_of(int(i % size_t(g.W)), int(g.W), g.Pw);
    for (size_t i = 0; i < inv.size(); ++i) {
      const int r = int(i % size_t(g.tokens())) / g.Pw, q = int(i % size_t(g.tokens())) % g.Pw;
      inv[i] = 1.0f / float(count(r, q));
    }
  }
  int64_t count(int r, int q) const {
    return int64_t(row0[size_t(r) + 1] - row0[size_t(r)]) * (col0[size_t(q) + 1] - col0[size_t(q)]);
  }
};

// Planes per block: enough to make a loop of about 2K pixels, 1 for planes that size or more.
inline int block_planes(const RegionGrid& g) {
  const int64_t hw = std::max<int64_t>(g.H * g.W, 1);
  return int(std::max<int64_t>(1, std::min<int64_t>(g.N * g.C, 2048 / hw)));
}

// The layout of the calling thread's last grid (the fused AdaShift-MA calls the region passes
// once per sample with the same grid). The reference stays valid while the caller's pass runs:
// only a call on the same thread with another grid replaces it.
inline const GridLayout& layout_of(const RegionGrid& g) {
  thread_local std::unique_ptr<GridLayout> cached;
  thread_local int64_t key[5] = {-1, -1, -1, -1, -1};
  const int k = block_planes(g);
  if (!cached || key[0] != g.H || key[1] != g.W || key[2] != g.Ph || key[3] != g.Pw || key[4] != k) {
    cached = std::make_unique<GridLayout>(g, k);
    key[0] = g.H; key[1] = g.W; key[2] = g.Ph; key[3] = g.Pw; key[4] = k;
  }
  return *cached;
}

// fn(first plane, planes, offset) for blocks of up to L.k consecutive planes (global index
// n * C + c), the blocks split across the pool.
template <typename BlockFn>
inline void for_each_block(const RegionGrid& g, const GridLayout& L, BlockFn fn) {
  const int64_t planes = g.N * g.C, hw = g.H * g.W, kb = L.k;
  const int64_t blocks = (planes + kb - 1) / kb;
  parallel_for(blocks, std::max<int64_t>(1, (int64_t(1) << 14) / std::max<int64_t>(kb * hw, 1)),
               [&](int64_t b0, int64_t b1) {
                 for (int64_t b = b0; b < b1; ++b) {
                   const int64_t p0 = b * kb;
                   fn(p0, int(std::min<int64_t>(kb, planes - p0)), p0 * hw);
                 }
               });
}

// Per-thread scratch (reused across planes and calls: no allocation per plane).
inline float* scratch(int which, size_t n) {
  thread_local std::vector<float> buf[4];
  if (buf[which].size() < n) buf[which].resize(n);
  return buf[which].data();
}

// The block's per-pixel map of its k planes' cell values vals [k*T]: map[h * W + w] = vals[cell
// of (h, w)] over the stack, laid out in map; with one-pixel cells that is vals itself
// (returned, nothing written).
inline const float* expand_block(const RegionGrid& g, const GridLayout& L, int k, const float* vals, float* map) {
  if (L.identity) return vals;
  loops::expand_cells(vals, L.row0.data(), L.flat_cell.data(), k * g.Ph, g.Pw, g.W, map);
  return map;
}

// The sums of values [k*H*W] over each cell of the k planes, in cells [k*T] (cols: scratch of
// k*Ph*W floats); with one-pixel cells that is values itself (returned, nothing written).
inline const float* cell_sums(const RegionGrid& g, const GridLayout& L, int k, const float* values,
                              float* cols, float* cells) {
  if (L.identity) return values;
  loops::band_cell_sums(values, g.W, L.row0.data(), k * g.Ph, L.col0.data(), g.Pw, cols, cells);
  return cells;
}

// Token p of global plane i = n * C + c.
inline int64_t tok_of(const RegionGrid& g, int64_t i, int64_t p) { return tok(g, i / g.C, p, i % g.C); }

// The T values of each of the k planes from p0 on, plane after plane: in place when
// channel_major (consecutive planes' tokens are contiguous), else gathered into vals.
inline const float* block_tokens(const RegionGrid& g, const float* src, int64_t p0, int k, float* vals) {
  const int64_t T = g.tokens();
  if (g.channel_major) return src + p0 * T;
  for (int j = 0; j < k; ++j)
    for (int64_t p = 0; p < T; ++p) vals[j * T + p] = src[tok_of(g, p0 + j, p)];
  return vals;
}

// Stores sums [k*T] (plane after plane) as the tokens of the k planes from p0 on.
inline void store_block_tokens(const RegionGrid& g, const float* sums, int64_t p0, int k, float* dst) {
  const int64_t T = g.tokens();
  if (g.channel_major) {
    std::copy(sums, sums + k * T, dst + p0 * T);
    return;
  }
  for (int j = 0; j < k; ++j)
    for (int64_t p = 0; p < T; ++p) dst[tok_of(g, p0 + j, p)] = sums[j * T + p];
}

// vals[j*T + p] = src[token p of plane p0 + j] / |cell p| (the pooled path's gradient per pixel).
inline void tokens_per_pixel(const RegionGrid& g, const GridLayout& L, const float* src, int64_t p0,
                             int k, float* vals) {
  const float* t = block_tokens(g, src, p0, k, vals);
  for (int64_t i = 0; i < k * g.tokens(); ++i) vals[i] = t[i] * L.inv[size_t(i)];
}

// Per plane, the shift gradient's per-pixel terms (and, when dx is given, the direct input
// gradient in the same pass), summed per cell into ds.
// Rows at least this wide run the backward band by band: each band's shifts laid out for one
// row (W floats), the shift gradient summed per column in the pass itself. Narrower rows run as
// one loop over the block (per-row loops would be mostly remainder).
constexpr int64_t kBandRowsMinWidth = 48;
// row0 of a one-row band: expand_cells then lays out one row of a band's shifts.
constexpr int kOneRow[2] = {0, 1};

// The k*Ph bands of a block in turn, each band's shifts (from the block's tokens sv) laid out
// for one row in srow [W]: fn(band b, offset of its first row, its rows).
template <typename BandFn>
inline void for_each_band(const RegionGrid& g, const GridLayout& L, int k, const float* sv,
                          int64_t base, float* srow, BandFn fn) {
  for (int b = 0; b < k * g.Ph; ++b) {
    loops::expand_cells(sv + int64_t(b) * g.Pw, kOneRow, L.flat_cell.data(), 1, g.Pw, g.W, srow);
    fn(b, base + int64_t(L.row0[size_t(b)]) * g.W, L.row0[size_t(b) + 1] - L.row0[size_t(b)]);
  }
}

static void pool_block(const RegionGrid& g, const GridLayout& L, const float* x, float* t, int64_t p0, int k,
                       int64_t base);

// pooled: when given, each block's cell means too (pool_block, as region_pool_forward), taken
// right after the block's gradients, while its x is in cache.
static void shift_grads_by_plane(const RegionGrid& g, const float* x, const float* dy, const float* s,
                                 float* dx, float* ds, float* pooled) {
  const GridLayout& L = layout_of(g);
  const int64_t HW = g.H * g.W, T = g.tokens();
  if (g.W >= kBandRowsMinWidth && !L.identity) {
    for_each_block(g, L, [&](int64_t p0, int k, int64_t base) {
      float* vals = scratch(0, size_t(k * T));
      float* srow = scratch(1, size_t(g.W));
      float* cols = scratch(3, size_t(k * g.Ph * g.W));
      for_each_band(g, L, k, block_tokens(g, s, p0, k, vals), base, srow, [&](int b, int64_t o, int rows) {
        loops::gate_grads_band(x + o, dy + o, srow, dx ? dx + o : nullptr, cols + int64_t(b) * g.W, rows, g.W);
      });
      float* sums = scratch(2, size_t(k * T));
      loops::cells_from_columns(cols, g.W, k * g.Ph, L.col0.data(), g.Pw, sums);
      store_block_tokens(g, sums, p0, k, ds);
      if (pooled) pool_block(g, L, x, pooled, p0, k, base);
    });
    return;
  }
  for_each_block(g, L, [&](int64_t p0, int k, int64_t base) {
    float* vals = scratch(0, size_t(k * T));
    float* smap = scratch(1, size_t(k * HW));
    float* contrib = scratch(2, size_t(k * HW));
    float* cols = scratch(3, size_t(k * g.Ph * g.W));
    const float* sm = expand_block(g, L, k, block_tokens(g, s, p0, k, vals), smap);
    if (dx) loops::gate_grads_v(x + base, dy + base, sm, dx + base, contrib, k * HW);
    else loops::gate_shift_grad_v(x + base, dy + base, sm, contrib, k * HW);
    store_block_tokens(g, cell_sums(g, L, k, contrib, cols, vals), p0, k, ds);
    if (pooled) pool_block(g, L, x, pooled, p0, k, base);
  });
}

// The cell means of the k planes of a block from p0 on (base: their offset), stored as tokens.
static void pool_block(const RegionGrid& g, const GridLayout& L, const float* x, float* t, int64_t p0, int k,
                       int64_t base) {
  const int64_t T = g.tokens();
  float* cols = scratch(0, size_t(k * g.Ph * g.W));
  float* cells = scratch(1, size_t(k * T));
  const float* sums = cell_sums(g, L, k, x + base, cols, cells);
  float* means = scratch(2, size_t(k * T));
  for (int64_t i = 0; i < k * T; ++i) means[i] = sums[i] * L.inv[size_t(i)];
  store_block_tokens(g, means, p0, k, t);
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
  for_each_block(g, L, [&](int64_t p0, int k, int64_t base) { pool_block(g, L, x, t, p0, k, base); });
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
  for_each_block(g, L, [&](int64_t p0, int k, int64_t base) {
    float* vals = scratch(0, size_t(k * g.tokens()));
    tokens_per_pixel(g, L, dt, p0, k, vals);
    const float* map = expand_block(g, L, k, vals, dx + base);
    if (map != dx + base) std::copy(map, map + k * g.H * g.W, dx + base);
  });
}

// The gate over the k planes of a block from p0 on (base: their offset).
static void gate_block(const RegionGrid& g, const GridLayout& L, const float* x, const float* s, float* y,
                       int64_t p0, int k, int64_t base) {
  float* vals = scratch(0, size_t(k * g.tokens()));
  const float* sv = block_tokens(g, s, p0, k, vals);
  if (g.W >= kBandRowsMinWidth && !L.identity) {
    float* srow = scratch(1, size_t(g.W));
    for_each_band(g, L, k, sv, base, srow, [&](int, int64_t o, int rows) {
      loops::gate_forward_band(x + o, srow, y + o, rows, g.W);
    });
    return;
  }
  float* smap = scratch(1, size_t(k * g.H * g.W));
  loops::gate_forward_v(x + base, expand_block(g, L, k, sv, smap), y + base, k * g.H * g.W);
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
  for_each_block(g, L, [&](int64_t p0, int k, int64_t base) { gate_block(g, L, x, s, y, p0, k, base); });
}

void gate_backward_reduce(const RegionGrid& g, const float* x, const float* dy, const float* s,
                          float* ds, float* pooled) {
  if (g.Pw == 1) {
    for_each_plane(g, [&](int64_t n, int64_t c, int64_t base) {
      for_each_cell(g, [&](const Cell& cell) {
        const float sv = s[tok(g, n, cell.token, c)];
        float acc = 0.0f;
        for_each_run(g, cell, base, [&](int64_t o, int64_t len) { acc += loops::gate_shift_grad(x + o, dy + o, sv, len); });
        ds[tok(g, n, cell.token, c)] = acc;
      });
    });
    if (pooled) region_pool_forward(g, x, pooled);
    return;
  }
  shift_grads_by_plane(g, x, dy, s, nullptr, ds, pooled);
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
  const int64_t HW = g.H * g.W, T = g.tokens();
  for_each_block(g, L, [&](int64_t p0, int k, int64_t base) {
    float* vals = scratch(0, size_t(k * T));
    float* smap = scratch(1, size_t(k * HW));
    float* add = scratch(2, size_t(k * HW));
    float* dvals = scratch(3, size_t(k * T));
    const float* sm = expand_block(g, L, k, block_tokens(g, s, p0, k, vals), smap);
    const float* am = add;
    if (dt) {
      tokens_per_pixel(g, L, dt, p0, k, dvals);
      am = expand_block(g, L, k, dvals, add);
    } else {
      std::fill(add, add + k * HW, 0.0f);
    }
    loops::gate_input_grad_v(x + base, dy + base, sm, am, dx + base, k * HW);
  });
}

void gate_backward_grads(const RegionGrid& g, const float* x, const float* dy, const float* s,
                         float* dx, float* ds, float* pooled) {
  // One-cell-wide grids pool by runs of whole rows (region_pool_forward's own path): pooled
  // after the pass, with those bits.
  shift_grads_by_plane(g, x, dy, s, dx, ds, g.Pw == 1 ? nullptr : pooled);
  if (pooled && g.Pw == 1) region_pool_forward(g, x, pooled);
}

void region_pool_backward_add(const RegionGrid& g, const float* dt, float* dx) {
  const GridLayout& L = layout_of(g);
  const int64_t HW = g.H * g.W;
  for_each_block(g, L, [&](int64_t p0, int k, int64_t base) {
    float* vals = scratch(0, size_t(k * g.tokens()));
    float* add = scratch(1, size_t(k * HW));
    tokens_per_pixel(g, L, dt, p0, k, vals);
    loops::add_v(dx + base, expand_block(g, L, k, vals, add), k * HW);
  });
}

}  // namespace cpu
}  // namespace adashift

// CUDA AdaShift kernels: region pooling and the shift gate, forward and backward.
//
// x is [N, C, H, W] contiguous; per-region tensors (t, s, ds, dt) are [N, T, C] with
// T = Ph * Pw, so token ti of plane p = n * C + c sits at (n * T + ti) * C + c. Work is split by
// (n, c) planes: each thread block loops over planes in grid-stride order (gridDim.x is capped,
// so any N * C works).
//
//   1 x 1 grid (AdaShift-B): the cell is the whole contiguous plane and its token index is p.
//     Element-wise passes and the reduction walk the plane as a flat array (float4 when
//     H*W % 4 == 0 and the pointers are 16-byte aligned); the reduction is a block sum of
//     per-thread partials in a fixed order.
//   Ph x Pw grid (AdaShift-MA): element-wise passes walk the plane row by row, L lanes across a
//     row and blockDim / L rows at once (float4 along a row when W % 4 == 0 and aligned); the
//     cell of each row/column and the plane's T shift values (and dt / |cell|) are staged in
//     shared memory. Reductions sum each cell-row's columns over its rows (one thread per
//     column or float4 of columns, coalesced along the rows), then each cell's column sums, in
//     shared memory (k_cells_colsum); planes too wide for that give each cell to a team of
//     `team` lanes inside one warp, which walks the cell's rows and sums with shuffles.
//
// Every per-element formula comes from math.h (gate, gate_grad, cell_of, cell_begin). The cell
// means and the pooled gradient dt / |cell| are divisions here; the CPU's banded grid paths
// multiply by 1/|cell| instead, so the two can differ by one rounding (well inside the parity
// tolerance; the sums themselves differ by summation order anyway).
#include "../ops/adashift.h"
#include "common.cuh"

namespace adashift {
namespace cuda {

using namespace detail;

namespace {

enum class Ew { GateFwd, PoolBwd, Apply };

// One output element of an element-wise pass. sv: the cell's shift; pooled: dt / |cell| (0
// when absent).
template <Ew K>
__device__ __forceinline__ float ew_value(float x, float dy, float sv, float pooled) {
  if (K == Ew::GateFwd) return math::gate(x, sv);
  if (K == Ew::PoolBwd) return pooled;
  return math::gate_grad(x, sv, dy).dx + pooled;
}

// ---- 1 x 1 grid: whole-plane kernels ---------------------------------------------------------
template <Ew K, bool VEC>
__global__ void k_plane_ew(int64_t planes, int64_t hw, const float* x, const float* dy,
                           const float* s, const float* dt, float* out) {
  const float4 zero = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  for (int64_t p = blockIdx.x; p < planes; p += gridDim.x) {
    const float sv = K == Ew::PoolBwd ? 0.0f : s[p];
    const float pooled = (K != Ew::GateFwd && dt) ? dt[p] / float(hw) : 0.0f;
    const int64_t base = p * hw;
    if (VEC) {
      const int64_t n4 = hw >> 2, b4 = base >> 2;
      for (int64_t i = threadIdx.x; i < n4; i += blockDim.x) {
        const float4 xv = K == Ew::PoolBwd ? zero : ld4(x, b4 + i);
        const float4 dv = K == Ew::Apply ? ld4(dy, b4 + i) : zero;
        st4(out, b4 + i,
            make_float4(ew_value<K>(xv.x, dv.x, sv, pooled), ew_value<K>(xv.y, dv.y, sv, pooled),
                        ew_value<K>(xv.z, dv.z, sv, pooled), ew_value<K>(xv.w, dv.w, sv, pooled)));
      }
    } else {
      for (int64_t i = threadIdx.x; i < hw; i += blockDim.x) {
        const float xv = K == Ew::PoolBwd ? 0.0f : x[base + i];
        const float dv = K == Ew::Apply ? dy[base + i] : 0.0f;
        out[base + i] = ew_value<K>(xv, dv, sv, pooled);
      }
    }
  }
}

// GATE: ds[p] = sum of gate_grad(x, s[p], dy).ds over the plane; else t[p] = mean of x.
template <bool GATE, bool VEC>
__global__ void k_plane_reduce(int64_t planes, int64_t hw, const float* x, const float* dy,
                               const float* s, float* out) {
  __shared__ float sh[32];
  for (int64_t p = blockIdx.x; p < planes; p += gridDim.x) {
    const float sv = GATE ? s[p] : 0.0f;
    const int64_t base = p * hw;
    float acc = 0.0f;
    if (VEC) {
      const int64_t n4 = hw >> 2, b4 = base >> 2;
      for (int64_t i = threadIdx.x; i < n4; i += blockDim.x) {
        const float4 xv = ld4(x, b4 + i);
        if (GATE) {
          const float4 dv = ld4(dy, b4 + i);
          acc += math::gate_grad(xv.x, sv, dv.x).ds;
          acc += math::gate_grad(xv.y, sv, dv.y).ds;
          acc += math::gate_grad(xv.z, sv, dv.z).ds;
          acc += math::gate_grad(xv.w, sv, dv.w).ds;
        } else {
          acc += xv.x;
          acc += xv.y;
          acc += xv.z;
          acc += xv.w;
        }
      }
    } else {
      for (int64_t i = threadIdx.x; i < hw; i += blockDim.x)
        acc += GATE ? math::gate_grad(x[base + i], sv, dy[base + i]).ds : x[base + i];
    }
    const float total = block_sum(acc, sh);
    if (threadIdx.x == 0) out[p] = GATE ? total : total / float(hw);
  }
}

// ---- Ph x Pw grid: element-wise passes -------------------------------------------------------
// Dynamic shared memory when `tab`: rowcell[H], colcell[W], rowcnt[Ph], colcnt[Pw] (ints), then
// for each of the block's ppb planes its shifts s_sh[T] and pooled gradients p_sh[T] (floats).
// A block takes ppb consecutive planes at a time: their T values are staged together (planes of
// consecutive channels have adjacent values in [N, T, C], so the staging loads share sectors),
// then its threads walk the ppb * H rows, L lanes across a row and RP rows at once. Without
// `tab` (tables too large for shared memory; ppb is 1) the same values are computed directly.
template <Ew K, bool VEC>
__global__ void k_cells_ew(RegionGrid g, bool tab, int ppb, const float* x, const float* dy,
                           const float* s, const float* dt, float* out) {
  extern __shared__ int smem[];
  const int H = int(g.H), W = int(g.W), Ph = g.Ph, Pw = g.Pw, T = Ph * Pw;
  const int64_t C = g.C, planes = g.N * g.C, hw = int64_t(H) * W;
  int* rowcell = smem;
  int* colcell = rowcell + H;
  int* rowcnt = colcell + W;
  int* colcnt = rowcnt + Ph;
  float* s_sh = reinterpret_cast<float*>(colcnt + Pw);
  float* p_sh = s_sh + ppb * T;
  if (tab) {
    for (int i = threadIdx.x; i < H; i += blockDim.x) rowcell[i] = math::cell_of(i, H, Ph);
    for (int i = threadIdx.x; i < W; i += blockDim.x) colcell[i] = math::cell_of(i, W, Pw);
    for (int i = threadIdx.x; i < Ph; i += blockDim.x)
      rowcnt[i] = math::cell_begin(i + 1, H, Ph) - math::cell_begin(i, H, Ph);
    for (int i = threadIdx.x; i < Pw; i += blockDim.x)
      colcnt[i] = math::cell_begin(i + 1, W, Pw) - math::cell_begin(i, W, Pw);
    __syncthreads();
  }
  // Lanes per row (L) and rows in flight (RP); threads with ro >= RP only help with staging.
  const int Wv = VEC ? W / 4 : W;
  const int L = Wv < int(blockDim.x) ? Wv : int(blockDim.x);
  const int RP = int(blockDim.x) / L;
  const int co = int(threadIdx.x) % L, ro = int(threadIdx.x) / L;
  // token ti of plane p: (n * T + ti) * C + c
  auto token = [&](int64_t p, int ti) -> int64_t { return ((p / C) * T + ti) * C + p % C; };

  for (int64_t p0 = int64_t(blockIdx.x) * ppb; p0 < planes; p0 += int64_t(gridDim.x) * ppb) {
    const int np = planes - p0 < ppb ? int(planes - p0) : ppb;  // planes in this group
    if (tab) {
      __syncthreads();  // the previous group's readers are done with s_sh / p_sh
      for (int i = threadIdx.x; i < np * T; i += blockDim.x) {
        const int lp = i % np, ti = i / np;  // consecutive threads: consecutive planes
        const int64_t tok = token(p0 + lp, ti);
        if (K != Ew::PoolBwd) s_sh[lp * T + ti] = s[tok];
        if (K != Ew::GateFwd)
          p_sh[lp * T + ti] =
              dt ? dt[tok] / float(int64_t(rowcnt[ti / Pw]) * colcnt[ti % Pw]) : 0.0f;
      }
      __syncthreads();
    }
    // The shift and pooled gradient of cell (r, q) of the group's plane lp (without tables the
    // group is the one plane p0, whose token ti is at tokbase + ti * C).
    const int64_t tokbase = token(p0, 0);
    auto shift = [&](int lp, int r, int q) -> float {
      if (K == Ew::PoolBwd) return 0.0f;
      const int ti = r * Pw + q;
      return tab ? s_sh[lp * T + ti] : s[tokbase + int64_t(ti) * C];
    };
    auto pooled = [&](int lp, int r, int q) -> float {
      if (K == Ew::GateFwd) return 0.0f;
      const int ti = r * Pw + q;
      if (tab) return p_sh[lp * T + ti];
      if (!dt) return 0.0f;
      const int64_t count =
          int64_t(math::cell_begin(r + 1, H, Ph) - math::cell_begin(r, H, Ph)) *
          (math::cell_begin(q + 1, W, Pw) - math::cell_begin(q, W, Pw));
      return dt[tokbase + int64_t(ti) * C] / float(count);
    };
    auto colq = [&](int w) -> int { return tab ? colcell[w] : math::cell_of(w, W, Pw); };

    if (ro < RP) {
      for (int R = ro; R < np * H; R += RP) {  // row h of the group's plane lp
        const int lp = R / H, h = R % H;
        const int r = tab ? rowcell[h] : math::cell_of(h, H, Ph);
        const int64_t o = (p0 + lp) * hw + int64_t(h) * W;  // first element of the row
        for (int col = co; col < Wv; col += L) {
          if (VEC) {
            const int w = col * 4;
            const int64_t i4 = (o + w) >> 2;
            const float4 xv = K == Ew::PoolBwd ? make_float4(0.f, 0.f, 0.f, 0.f) : ld4(x, i4);
            const float4 dv = K == Ew::Apply ? ld4(dy, i4) : make_float4(0.f, 0.f, 0.f, 0.f);
            const int q0 = colq(w), q1 = colq(w + 1), q2 = colq(w + 2), q3 = colq(w + 3);
            st4(out, i4,
                make_float4(ew_value<K>(xv.x, dv.x, shift(lp, r, q0), pooled(lp, r, q0)),
                            ew_value<K>(xv.y, dv.y, shift(lp, r, q1), pooled(lp, r, q1)),
                            ew_value<K>(xv.z, dv.z, shift(lp, r, q2), pooled(lp, r, q2)),
                            ew_value<K>(xv.w, dv.w, shift(lp, r, q3), pooled(lp, r, q3))));
          } else {
            const int q = colq(col);
            const float xv = K == Ew::PoolBwd ? 0.0f : x[o + col];
            const float dv = K == Ew::Apply ? dy[o + col] : 0.0f;
            out[o + col] = ew_value<K>(xv, dv, shift(lp, r, q), pooled(lp, r, q));
          }
        }
      }
    }
  }
}

// ---- Ph x Pw grid: reductions by column sums -------------------------------------------------
// A plane's cell sums in two steps inside one block, through shared memory:
//   1. item (r, j) adds the rows of cell-row r, in order, for each column of column group j (4
//      adjacent columns read as one float4 when W % 4 == 0, else 1), and stores one sum per
//      column: colsum[r][w];
//   2. each cell adds its columns' sums in column order.
// The items of one cell-row read adjacent pieces of each row (coalesced), each with as many
// independent loads as its cell-row has rows; a block takes several planes when one needs few
// items (ppb planes of tpp threads each). Orders depend only on the shape: deterministic. Used
// when a plane's column sums fit in kColsumFloats of shared memory; k_cells_reduce otherwise.
constexpr int kColsumBlock = 256;
constexpr int kColsumFloats = 8192;  // 32 KB

template <bool GATE, bool VEC>
__global__ void __launch_bounds__(kColsumBlock) k_cells_colsum(RegionGrid g, int ppb, const float* x,
                                                             const float* dy, const float* s,
                                                             float* out) {
  extern __shared__ float colsum[];  // ppb x Ph x W floats
  const int H = int(g.H), W = int(g.W), Ph = g.Ph, Pw = g.Pw, T = Ph * Pw;
  const int64_t C = g.C, planes = g.N * g.C, hw = int64_t(H) * W;
  const int G = VEC ? W / 4 : W;  // column groups per cell-row
  const int tpp = kColsumBlock / ppb, lp = int(threadIdx.x) / tpp, lt = int(threadIdx.x) % tpp;
  float* cs = colsum + lp * Ph * W;
  for (int64_t pg = blockIdx.x; pg * ppb < planes; pg += gridDim.x) {
    const int64_t p = pg * ppb + lp;
    const bool active = lp < ppb && p < planes;
    const int64_t n = p / C, c = p % C;
    const int64_t tokbase = n * T * C + c;  // token ti of this plane: tokbase + ti * C
    const int64_t base = p * hw;
    if (active) {
      for (int item = lt; item < Ph * G; item += tpp) {
        const int r = item / G, j = item % G;
        const int h0 = math::cell_begin(r, H, Ph), h1 = math::cell_begin(r + 1, H, Ph);
        constexpr int NC = VEC ? 4 : 1;
        const int w0 = j * NC;
        float sv[NC], acc[NC];
#pragma unroll
        for (int k = 0; k < NC; ++k) {
          acc[k] = 0.0f;
          sv[k] = GATE ? s[tokbase + int64_t(r * Pw + math::cell_of(w0 + k, W, Pw)) * C] : 0.0f;
        }
#pragma unroll 4
        for (int h = h0; h < h1; ++h) {
          const int64_t o = base + int64_t(h) * W + w0;
          // this row's NC columns (one float4 when VEC), and dy's when GATE
          float xa[NC], da[NC];
          if (VEC) {
            const float4 xv = ld4(x, o >> 2);
            const float4 dv = GATE ? ld4(dy, o >> 2) : make_float4(0.f, 0.f, 0.f, 0.f);
            const float xs[4] = {xv.x, xv.y, xv.z, xv.w}, ds[4] = {dv.x, dv.y, dv.z, dv.w};
#pragma unroll
            for (int k = 0; k < NC; ++k) {
              xa[k] = xs[k];
              da[k] = ds[k];
            }
          } else {
            xa[0] = x[o];
            da[0] = GATE ? dy[o] : 0.0f;
          }
#pragma unroll
          for (int k = 0; k < NC; ++k) acc[k] += GATE ? math::gate_grad(xa[k], sv[k], da[k]).ds : xa[k];
        }
#pragma unroll
        for (int k = 0; k < NC; ++k) cs[r * W + w0 + k] = acc[k];
      }
    }
    __syncthreads();
    if (active) {
      for (int cell = lt; cell < T; cell += tpp) {
        const int r = cell / Pw, q = cell % Pw;
        const int w0 = math::cell_begin(q, W, Pw), w1 = math::cell_begin(q + 1, W, Pw);
        float acc = 0.0f;
        for (int w = w0; w < w1; ++w) acc += cs[r * W + w];
        const int64_t count =
            int64_t(math::cell_begin(r + 1, H, Ph) - math::cell_begin(r, H, Ph)) * (w1 - w0);
        out[tokbase + int64_t(cell) * C] = GATE ? acc : acc / float(count);
      }
    }
    __syncthreads();  // the next planes' step 1 overwrites colsum
  }
}

// ---- Ph x Pw grid: reductions by cell teams (large planes) -----------------------------------
// Each cell belongs to one team of `team` lanes (power of two <= 32, aligned inside a warp).
// Within the team, L lanes cover adjacent columns and team / L rows are in flight; each lane adds
// its elements row by row, then the team sums with xor shuffles. Cell-to-team assignment and
// lane order depend only on the shape: deterministic.
template <bool GATE>
__global__ void k_cells_reduce(RegionGrid g, int team, const float* x, const float* dy,
                               const float* s, float* out) {
  const int H = int(g.H), W = int(g.W), Ph = g.Ph, Pw = g.Pw, T = Ph * Pw;
  const int64_t C = g.C, planes = g.N * g.C, hw = int64_t(H) * W;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const int per_warp = 32 / team;
  const int tl = lane & (team - 1), tw = lane / team;  // lane in team, team in warp
  for (int64_t p = blockIdx.x; p < planes; p += gridDim.x) {
    const int64_t n = p / C, c = p % C;
    const int64_t tokbase = n * T * C + c;
    const int64_t base = p * hw;
    // The bounds of this loop are the same for every lane of a warp (team_sum needs them all).
    for (int cb = warp * per_warp; cb < T; cb += nwarps * per_warp) {
      const int cell = cb + tw;
      float acc = 0.0f;
      int64_t count = 1;
      if (cell < T) {
        const int r = cell / Pw, q = cell % Pw;
        const int h0 = math::cell_begin(r, H, Ph), h1 = math::cell_begin(r + 1, H, Ph);
        const int w0 = math::cell_begin(q, W, Pw), w1 = math::cell_begin(q + 1, W, Pw);
        const int cw = w1 - w0;
        count = int64_t(h1 - h0) * cw;
        const int L = cw < team ? cw : team, RP = team / L;
        const int co = tl % L, ro = tl / L;
        if (ro < RP) {
          const float sv = GATE ? s[tokbase + int64_t(cell) * C] : 0.0f;
          for (int h = h0 + ro; h < h1; h += RP) {
            const int64_t o = base + int64_t(h) * W;
            for (int w = w0 + co; w < w1; w += L)
              acc += GATE ? math::gate_grad(x[o + w], sv, dy[o + w]).ds : x[o + w];
          }
        }
      }
      acc = team_sum(acc, team);
      if (cell < T && tl == 0)
        out[tokbase + int64_t(cell) * C] = GATE ? acc : acc / float(count);
    }
  }
}

// ---- launch helpers -------------------------------------------------------------------------
bool is_1x1(const RegionGrid& g) { return g.Ph == 1 && g.Pw == 1; }

template <Ew K>
void launch_ew(cudaStream_t st, const RegionGrid& g, const float* x, const float* dy,
               const float* s, const float* dt, float* out) {
  const int64_t planes = g.N * g.C, hw = g.H * g.W;
  if (planes <= 0 || hw <= 0) return;
  const bool aligned = aligned16(x) && aligned16(dy) && aligned16(out);
  if (is_1x1(g)) {
    const bool vec = aligned && hw % 4 == 0;
    const int block = block_for_items(vec ? hw / 4 : hw);
    const int grid = grid_for_items(planes, block);
    if (vec)
      k_plane_ew<K, true><<<grid, block, 0, st>>>(planes, hw, x, dy, s, dt, out);
    else
      k_plane_ew<K, false><<<grid, block, 0, st>>>(planes, hw, x, dy, s, dt, out);
    CUDA_CHECK_LAUNCH();
    return;
  }
  const bool vec = aligned && g.W % 4 == 0;
  const int64_t items = g.H * (vec ? g.W / 4 : g.W);  // per plane
  const int block = block_for_items(items);
  // Planes per block: about four items per thread, as many as the shared memory holds (at most
  // 32); one when even one plane's tables do not fit (then no tables at all).
  const size_t fixed = sizeof(int) * size_t(g.H + g.W + g.Ph + g.Pw);
  const size_t per_plane = sizeof(float) * 2 * size_t(g.tokens());
  int64_t ppb = (4 * int64_t(block)) / items;
  ppb = ppb < 1 ? 1 : ppb > 32 ? 32 : ppb;
  while (ppb > 1 && fixed + per_plane * size_t(ppb) > 48 * 1024) --ppb;
  const bool tab = fixed + per_plane * size_t(ppb) <= 48 * 1024;
  const size_t dyn = tab ? fixed + per_plane * size_t(ppb) : 0;
  const int grid = grid_for_items((planes + ppb - 1) / ppb, block);
  if (vec)
    k_cells_ew<K, true><<<grid, block, dyn, st>>>(g, tab, int(ppb), x, dy, s, dt, out);
  else
    k_cells_ew<K, false><<<grid, block, dyn, st>>>(g, tab, int(ppb), x, dy, s, dt, out);
  CUDA_CHECK_LAUNCH();
}

template <bool GATE>
void launch_reduce(cudaStream_t st, const RegionGrid& g, const float* x, const float* dy,
                   const float* s, float* out) {
  const int64_t planes = g.N * g.C, hw = g.H * g.W;
  if (planes <= 0 || hw <= 0) return;
  if (is_1x1(g)) {
    const bool vec = aligned16(x) && aligned16(dy) && hw % 4 == 0;
    const int block = block_for_items(vec ? hw / 4 : hw);
    const int grid = grid_for_items(planes, block);
    if (vec)
      k_plane_reduce<GATE, true><<<grid, block, 0, st>>>(planes, hw, x, dy, s, out);
    else
      k_plane_reduce<GATE, false><<<grid, block, 0, st>>>(planes, hw, x, dy, s, out);
    CUDA_CHECK_LAUNCH();
    return;
  }
  if (int64_t(g.Ph) * g.W <= kColsumFloats) {
    // Planes per block: as many as the block's threads cover with one item each (at least one).
    const int64_t items = int64_t(g.Ph) * (g.W % 4 == 0 ? g.W / 4 : g.W);
    int64_t ppb = kColsumBlock / items;
    if (ppb < 1) ppb = 1;
    if (ppb * g.Ph * g.W > kColsumFloats) ppb = kColsumFloats / (g.Ph * g.W);
    const int grid = grid_for_items((planes + ppb - 1) / ppb, kColsumBlock);
    const bool vec = g.W % 4 == 0 && aligned16(x) && aligned16(dy);
    const size_t smem = sizeof(float) * size_t(ppb * g.Ph * g.W);
    if (vec)
      k_cells_colsum<GATE, true><<<grid, kColsumBlock, smem, st>>>(g, int(ppb), x, dy, s, out);
    else
      k_cells_colsum<GATE, false><<<grid, kColsumBlock, smem, st>>>(g, int(ppb), x, dy, s, out);
    CUDA_CHECK_LAUNCH();
    return;
  }
  // Team size: the largest cell's pixel count rounded up to a power of two, at most a warp.
  const int64_t max_rows = (g.H + g.Ph - 1) / g.Ph, max_cols = (g.W + g.Pw - 1) / g.Pw;
  const int64_t max_count = max_rows * max_cols;
  int team = 1;
  while (team < 32 && team < max_count) team <<= 1;
  const int64_t T = g.tokens();
  const int64_t teams_per_warp = 32 / team;
  int64_t warps = (T + teams_per_warp - 1) / teams_per_warp;
  if (warps > 8) warps = 8;
  const int block = int(warps) * 32;
  const int grid = grid_for_items(planes, block);
  k_cells_reduce<GATE><<<grid, block, 0, st>>>(g, team, x, dy, s, out);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

// ---- launchers ------------------------------------------------------------------------------
void region_pool_forward(cudaStream_t st, const RegionGrid& g, const float* x, float* t) {
  launch_reduce<false>(st, g, x, nullptr, nullptr, t);
}

void region_pool_backward(cudaStream_t st, const RegionGrid& g, const float* dt, float* dx) {
  launch_ew<Ew::PoolBwd>(st, g, nullptr, nullptr, nullptr, dt, dx);
}

void gate_forward(cudaStream_t st, const RegionGrid& g, const float* x, const float* s, float* y) {
  launch_ew<Ew::GateFwd>(st, g, x, nullptr, s, nullptr, y);
}

void gate_backward_reduce(cudaStream_t st, const RegionGrid& g, const float* x, const float* dy,
                          const float* s, float* ds) {
  launch_reduce<true>(st, g, x, dy, s, ds);
}

void gate_backward_apply(cudaStream_t st, const RegionGrid& g, const float* x, const float* dy,
                         const float* s, const float* dt, float* dx) {
  launch_ew<Ew::Apply>(st, g, x, dy, s, dt, dx);
}

}  // namespace cuda
}  // namespace adashift

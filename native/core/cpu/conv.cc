// CPU 2-D convolution on the GEMM (cpu/gemm.h). Two lowerings, picked by shape and backend:
//
// With the own GEMM ("windows"): each sample is copied once into zero-padded planes of width
// Wp (for stride 1, Wp = W + 2 pad_w; a stride s splits each channel into s x s phase planes,
// see Padded). On that layout every kernel tap (c, i, j) sees the output pixels as one
// contiguous run: output (oh, ow) of tap r = (c, i, j) is xp[off(r) + oh * Wp + ow]. So with
// Q = Ho * Wp columns (Wp - Wo per row unused):
//   forward   ytmp [Cout, Q] = W [Cout, K] @ X~ [K, Q], X~[r][q] = xp[off(r) + q]; the GEMM
//             reads (or packs) X~'s slivers straight from xp (no im2col matrix); the used
//             columns go to y (+ bias).
//   dX        the same forward on dy padded by (kh-1-pad_h, kw-1-pad_w) with the weight
//             flipped and transposed (W~[c][co, kh-1-i, kw-1-j] = W[co][c][i][j]): no col2im.
//             With a stride, one such correlation per phase of the input, with that phase's
//             taps (DxPhase), all reading one padded copy of dy and written into dx with the
//             stride (DxPlan).
//   dW        dW[co][r] = sum over samples and output pixels p of dy[co][p] * xp[off(r) + q(p)],
//             q(p) = p's place in the padded layout, as dW^T [K, Cout], each tap row read in
//             place at the exact output pixels against dy^T: with at least kMaxGroups samples
//             and a dW of at most kMaxSampleDwFloats, sample by sample in the groups below,
//             next to the sample's dX (sample_weight_grad_rows), else for all samples at once
//             (batched_weight_grad; also the pointwise dW).
// Narrow outputs (rows of at most 32 pixels) run the forward and dX correlations by "pixel
// rows" instead when that wastes less (gemm_pixel_rows): runs of up to 8 output pixels against
// 32-channel slivers of the weight, the input read in place, no padding column computed.
// Otherwise ("columns": always with BLAS, and dX when the padding reaches past the kernel):
// im2col + GEMM. With K = Cin*kh*kw
// and P = Ho*Wo: forward y[n] = W @ cols(x[n]); dW += dy[n] @ cols(x[n])^T; dcols = W^T @ dy[n]
// then col2im (scatter-add into dx[n]). Columns are built a chunk of output pixels at a time
// (at most kColsBudget floats). A 1x1, stride-1, unpadded convolution is a GEMM on x itself.
// db: per-channel sums of dy (cpu/reduce.h: fixed blocks, double partials).
//
// Threads: with the own GEMM and enough samples, samples are spread over the pool and each
// runs single-threaded kernels; otherwise samples run in order and the GEMM (own: blocks of C
// over the pool; BLAS: its own threads, called from this thread only) and the copies are
// parallel inside. dW is accumulated in a structure fixed by the shape: samples are cut into
// min(N, kMaxGroups) contiguous groups, each group sums its samples in order into its own
// partial, and the partials are added in group order. The own kernels' bits do not depend on
// the thread count or on how their output is split, so with the own GEMM every result is
// bit-identical for any number of threads. (OpenBLAS splits its work by its thread count, so
// with it results are reproducible at a fixed thread count only.)
//
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <tuple>
#include <vector>
#include "../ops/conv.h"
#include "../threadpool.h"
#include "gemm.h"
#include "loops.h"
#include "reduce.h"

namespace adashift {
namespace cpu {

namespace {

constexpr int64_t kColsBudget = int64_t(1) << 20;  // floats of im2col columns held at once
constexpr int64_t kMaxGroups = 16;                  // dW partials (fixed by N, not threads)
// The largest dW (floats) computed sample by sample into the groups' partials: each sample
// reads and writes its group's partial, which must stay in cache. Batch 32, 3x3, dX+dW: 128
// channels at 16x16 (147K floats) 13.1 -> 11.1 ms that way, 256 at 8x8 (590K) 15.4 -> 34.8 ms.
constexpr int64_t kMaxSampleDwFloats = int64_t(1) << 18;
// ... and only for maps of more output pixels than this: a sample's product has that depth, so on
// small maps each register tile runs a few dozen steps between writes to the partial, where the
// batched form keeps it in registers over every sample. dX + dW, batch 64, 3x3, 2 threads (AMD
// family 25 model 17, alternated calls, batched / per sample): 64 channels at 7x7 0.94, 8x8
// 0.95, 128 at 4x4 0.76, 32 at 7x7 0.97; at 14x14 1.00-1.05 and 16 channels at 28x28 1.09.
constexpr int64_t kMinSampleDwDepth = 64;

using GemmFn = void (*)(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t,
                        const float*, int64_t, float, float*, int64_t);

// Per-thread buffers, grown on demand and reused across calls: 0 im2col columns, 1 their
// gradient (or a strided dX phase's output before it is placed), 2 a padded copy of one sample,
// 3 a GEMM output tile, then the padded dy of dX, the padded copy of x for the per-sample
// weight gradient and its packed dy (each padded copy in a slot of its own, so it keeps its
// zero borders from sample to sample).
constexpr int kDxPadSlot = 4, kDwPadSlot = 5, kDwPackSlot = 6;
constexpr int kScratchSlots = kDwPackSlot + 1;

// The input of one sample, zero-padded, as phase planes: with stride (sh, sw), channel c has
// sh * sw planes, plane (a, b) holding the padded input at rows a, a + sh, ... and columns
// b, b + sw, ...; each plane is Hp x Wp with Hp = Ho + (kh - 1) / sh, Wp = Wo + (kw - 1) / sw.
// Tap (c, i, j) then reads plane (c, i % sh, j % sw) shifted by (i / sh, j / sw), and output
// (oh, ow) sits at oh * Wp + ow of every plane: the stride-1 windows layout, for any stride
// (with stride 1 there is one plane per channel, the padded input itself).
struct Padded {
  int64_t C, H, W, ph, pw, sh, sw, Hp, Wp, plane, total;
  int64_t kh, kw;  // phases (a, b) with a >= kh or b >= kw hold no tap: zero-filled only
  auto fields() const { return std::tie(C, H, W, ph, pw, sh, sw, Hp, Wp, plane, total, kh, kw); }
  bool operator==(const Padded& o) const { return fields() == o.fields(); }
};

// What a thread keeps between calls, on the heap behind one thread_local pointer: the static TLS
// a shared object can get at load is small (the CUDA emulation's addon, whose runtime needs
// initial-exec TLS, failed to load with "cannot allocate memory in static TLS block" once these
// arrays were thread_local themselves: 2.3 KB of TLS in all; 0.9 KB now).
struct ThreadBuffers {
  std::vector<float> buf[kScratchSlots];
  // pad_sample's record per slot: the buffer last padded there and its geometry
  const float* pad_buf[kScratchSlots] = {};
  Padded pad_geom[kScratchSlots] = {};
  // batched_weight_grad's padded samples and packed dy
  std::vector<float> xkeep, bkeep;
};
ThreadBuffers& thread_buffers() {
  thread_local std::unique_ptr<ThreadBuffers> t;
  if (!t) t = std::make_unique<ThreadBuffers>();
  return *t;
}

std::vector<float>& scratch(int which, size_t n) {
  std::vector<float>& b = thread_buffers().buf[which];
  if (b.size() < n) b.resize(n);
  return b;
}

// Output pixels per im2col chunk: all of them when the columns fit the budget.
int64_t pixel_chunk(const Conv2dDims& d) {
  const int64_t K = d.K(), P = d.P();
  if (K * P <= kColsBudget) return P;
  return std::max<int64_t>(std::min<int64_t>(P, 64), kColsBudget / K);
}

// Valid output columns [lo, hi) of kernel column j: 0 <= ow*sw - pw + j < W.
inline void valid_cols(const Conv2dDims& d, int64_t j, int64_t& lo, int64_t& hi) {
  const int64_t m = d.pad_w - j;
  lo = m <= 0 ? 0 : (m + d.stride_w - 1) / d.stride_w;
  const int64_t n = d.W - 1 + d.pad_w - j;
  hi = n < 0 ? 0 : std::min<int64_t>(d.Wo, n / d.stride_w + 1);
  lo = std::min(lo, d.Wo);
  if (hi < lo) hi = lo;
}

// Calls run(r_offset_in_row_of_cols, oh, ow0, ow1) over the output rows that overlap the pixel
// range [p0, p1).
template <typename F>
inline void for_each_out_row(const Conv2dDims& d, int64_t p0, int64_t p1, F run) {
  int64_t p = p0;
  while (p < p1) {
    const int64_t oh = p / d.Wo, ow0 = p % d.Wo;
    const int64_t ow1 = std::min<int64_t>(d.Wo, ow0 + (p1 - p));
    run(p - p0, oh, ow0, ow1);
    p += ow1 - ow0;
  }
}

// cols[r][q], r in [r0, r1) of K, q < p1 - p0: the input of one sample under kernel tap r at
// output pixel p0 + q (0 in the padding).
void im2col(const Conv2dDims& d, const float* x, int64_t p0, int64_t p1, int64_t r0, int64_t r1,
            float* cols) {
  const int64_t L = p1 - p0, kk = d.kh * d.kw;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t c = r / kk, i = (r / d.kw) % d.kh, j = r % d.kw;
    const float* xc = x + c * d.H * d.W;
    float* out = cols + r * L;
    int64_t lo_j, hi_j;
    valid_cols(d, j, lo_j, hi_j);
    for_each_out_row(d, p0, p1, [&](int64_t q, int64_t oh, int64_t ow0, int64_t ow1) {
      float* o = out + q;  // o[ow - ow0]
      const int64_t ih = oh * d.stride_h - d.pad_h + i;
      if (ih < 0 || ih >= d.H) {
        std::fill(o, o + (ow1 - ow0), 0.0f);
        return;
      }
      const int64_t lo = std::min(std::max(lo_j, ow0), ow1), hi = std::max(std::min(hi_j, ow1), lo);
      std::fill(o, o + (lo - ow0), 0.0f);
      if (hi > lo) {
        const float* xr = xc + ih * d.W + (lo * d.stride_w - d.pad_w + j);  // input at ow = lo
        float* ol = o + (lo - ow0);
        if (d.stride_w == 1)
          std::memcpy(ol, xr, size_t(hi - lo) * sizeof(float));
        else
          for (int64_t t = 0; t < hi - lo; ++t) ol[t] = xr[t * d.stride_w];
      }
      std::fill(o + (hi - ow0), o + (ow1 - ow0), 0.0f);
    });
  }
}

// dx[c] += the columns of channels [c0, c1) at pixels [p0, p1) (scatter-add, in a fixed
// order: taps, then pixels).
void col2im(const Conv2dDims& d, const float* cols, int64_t p0, int64_t p1, int64_t c0,
            int64_t c1, float* dx) {
  const int64_t L = p1 - p0;
  for (int64_t c = c0; c < c1; ++c) {
    float* dxc = dx + c * d.H * d.W;
    for (int64_t i = 0; i < d.kh; ++i)
      for (int64_t j = 0; j < d.kw; ++j) {
        const float* in = cols + ((c * d.kh + i) * d.kw + j) * L;
        int64_t lo_j, hi_j;
        valid_cols(d, j, lo_j, hi_j);
        for_each_out_row(d, p0, p1, [&](int64_t q, int64_t oh, int64_t ow0, int64_t ow1) {
          const int64_t ih = oh * d.stride_h - d.pad_h + i;
          if (ih < 0 || ih >= d.H) return;
          const int64_t lo = std::max(lo_j, ow0), hi = std::min(hi_j, ow1);
          if (hi <= lo) return;
          const float* src = in + q + (lo - ow0);
          float* xr = dxc + ih * d.W + (lo * d.stride_w - d.pad_w + j);  // input at ow = lo
          const int64_t n = hi - lo;
          if (d.stride_w == 1) {
#pragma omp simd
            for (int64_t t = 0; t < n; ++t) xr[t] += src[t];
          } else {
            for (int64_t t = 0; t < n; ++t) xr[t * d.stride_w] += src[t];
          }
        });
      }
  }
}

// Samples across the pool (single-threaded GEMMs inside) or one after another (parallel
// inside). Only the own GEMM goes inside pool tasks; BLAS is called from this thread only.
bool across_samples(int64_t units) {
  const int t = num_threads();
  return t > 1 && gemm_backend() == GemmBackend::Own && units >= 2 * int64_t(t);
}

// The copies around a BLAS call stay on this thread: OpenBLAS's workers keep spinning for a
// while after each call, and pool threads next to them would only oversubscribe the cores.
bool parallel_copies(bool inner_parallel) {
  return inner_parallel && gemm_backend() == GemmBackend::Own;
}

void build_cols(const Conv2dDims& d, const float* x, int64_t p0, int64_t p1, float* cols,
                bool inner_parallel) {
  const int64_t K = d.K(), L = p1 - p0;
  if (!parallel_copies(inner_parallel)) {
    im2col(d, x, p0, p1, 0, K, cols);
    return;
  }
  parallel_for(K, std::max<int64_t>(1, 16384 / std::max<int64_t>(L, 1)),
               [&](int64_t r0, int64_t r1) { im2col(d, x, p0, p1, r0, r1, cols); });
}

void scatter_cols(const Conv2dDims& d, const float* cols, int64_t p0, int64_t p1, float* dx,
                  bool inner_parallel) {
  if (!parallel_copies(inner_parallel)) {
    col2im(d, cols, p0, p1, 0, d.Cin, dx);
    return;
  }
  const int64_t per_channel = d.kh * d.kw * (p1 - p0);
  parallel_for(d.Cin, std::max<int64_t>(1, 16384 / std::max<int64_t>(per_channel, 1)),
               [&](int64_t c0, int64_t c1) { col2im(d, cols, p0, p1, c0, c1, dx); });
}

AS_VECTORIZE void add_bias(float* __restrict y, const float* __restrict b, int64_t C, int64_t P) {
  for (int64_t c = 0; c < C; ++c) {
    float* __restrict yc = y + c * P;
    const float bc = b[c];
#pragma omp simd
    for (int64_t p = 0; p < P; ++p) yc[p] += bc;
  }
}

AS_VECTORIZE void add_into(float* __restrict acc, const float* __restrict v, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) acc[i] += v[i];
}

// A sample's dx += the gradient folded into it (conv2d_backward's dx_add), split over the pool
// when the sample's own kernels are.
void add_sample(float* dxn, const float* add, int64_t n, bool inner_parallel) {
  if (inner_parallel)
    parallel_for(n, 16384, [&](int64_t i0, int64_t i1) { add_into(dxn + i0, add + i0, i1 - i0); });
  else
    add_into(dxn, add, n);
}

// ---- the windows lowering (own GEMM) -----------------------------------------------------------
Padded padded(const Conv2dDims& d) {
  Padded g{d.Cin, d.H, d.W, d.pad_h, d.pad_w, d.stride_h, d.stride_w, 0, 0, 0, 0, d.kh, d.kw};
  g.Hp = d.Ho + (d.kh - 1) / d.stride_h;
  g.Wp = d.Wo + (d.kw - 1) / d.stride_w;
  g.plane = g.Hp * g.Wp;
  // Reads run past the last plane by up to (kw - 1) / sw (windows) plus a register tile's
  // width (windows read in place by the GEMM).
  g.total = g.C * g.sh * g.sw * g.plane + d.kw + kWindowsTileCols;
  return g;
}

// With zero_borders false only the input's values are written: the rest must already be zero
// (from an earlier call with the same geometry on the same buffer).
void pad_planes(const float* __restrict x, const Padded& g, int64_t c0, int64_t c1, float* __restrict xp,
                bool zero_borders) {
  const int64_t per_channel = g.sh * g.sw * g.plane;
  if (zero_borders) std::fill(xp + c0 * per_channel, xp + c1 * per_channel, 0.0f);
  // Phases (a, b) with a >= kh or b >= kw are read only past the end of a used plane's last
  // row: zeros.
  for (int64_t a = 0; a < std::min(g.sh, g.kh); ++a)
    for (int64_t b = 0; b < std::min(g.sw, g.kw); ++b) {
      // plane row u holds input row u * sh + a - ph, column v input column v * sw + b - pw:
      // valid for u in [u0, u1), v in [v0, v1)
      const int64_t u0 = std::min(g.Hp, std::max<int64_t>(0, (g.ph - a + g.sh - 1) / g.sh));
      const int64_t u1 = std::max(u0, std::min(g.Hp, (g.H + g.ph - a + g.sh - 1) / g.sh));
      const int64_t v0 = std::min(g.Wp, std::max<int64_t>(0, (g.pw - b + g.sw - 1) / g.sw));
      const int64_t v1 = std::max(v0, std::min(g.Wp, (g.W + g.pw - b + g.sw - 1) / g.sw));
      if (u1 == u0 || v1 == v0) continue;
      for (int64_t c = c0; c < c1; ++c) {
        const float* __restrict src = x + c * g.H * g.W + (u0 * g.sh + a - g.ph) * g.W + (v0 * g.sw + b - g.pw);
        float* __restrict o = xp + ((c * g.sh + a) * g.sw + b) * g.plane + u0 * g.Wp + v0;
        loops::copy_rows(src, g.sh * g.W, g.sw, o, g.Wp, u1 - u0, v1 - v0);
      }
    }
}

// The padded copy of one sample into xp. The zeros around the values depend only on the
// geometry: when xp is the calling thread's scratch(slot) (slot >= 0; a buffer only pad_sample
// writes, living as long as the thread), a later sample of the geometry last padded into that
// slot's buffer rewrites the values only (on 7x7 maps the borders are most of the writes). The
// record is per slot and holds the buffer's address, so a slot whose buffer moved (grown) is
// zeroed again, and no other buffer can pass for it.
void pad_sample(const float* x, const Padded& g, float* xp, bool inner_parallel, int slot) {
  ThreadBuffers& tb = thread_buffers();
  const float** slot_buf = tb.pad_buf;
  Padded* slot_geom = tb.pad_geom;
  const bool own = slot >= 0 && slot < kScratchSlots;
  const bool zero = !(own && slot_buf[slot] == xp && slot_geom[slot] == g);
  const int64_t per_channel = g.sh * g.sw * g.plane;
  if (inner_parallel)
    parallel_for(g.C, std::max<int64_t>(1, 16384 / std::max<int64_t>(per_channel, 1)),
                 [&](int64_t c0, int64_t c1) { pad_planes(x, g, c0, c1, xp, zero); });
  else
    pad_planes(x, g, 0, g.C, xp, zero);
  if (zero) std::fill(xp + g.C * per_channel, xp + g.total, 0.0f);
  if (own) {
    slot_buf[slot] = xp;
    slot_geom[slot] = g;
  }
}

// off[r] for taps r = (c, i, j): where tap r's run of output columns starts in the planes.
std::vector<int64_t> tap_offsets(const Conv2dDims& d, const Padded& g) {
  std::vector<int64_t> off(size_t(d.Cin * d.kh * d.kw));
  for (int64_t c = 0; c < d.Cin; ++c)
    for (int64_t i = 0; i < d.kh; ++i)
      for (int64_t j = 0; j < d.kw; ++j) {
        const int64_t plane = (c * g.sh + i % g.sh) * g.sw + j % g.sw;
        off[size_t((c * d.kh + i) * d.kw + j)] = plane * g.plane + (i / g.sh) * g.Wp + j / g.sw;
      }
  return off;
}

template <int NR>
__attribute__((always_inline)) inline void copy_windows(const float* xp, const int64_t* off,
                                                        int64_t p0, int64_t kc, int64_t q0,
                                                        int nr, float* o) {
  for (int64_t k = 0; k < kc; ++k) {
    const float* __restrict src = xp + off[p0 + k] + q0;
    float* __restrict d = o + k * NR;
    if (nr == NR) {
#pragma omp simd
      for (int t = 0; t < NR; ++t) d[t] = src[t];
    } else {
      for (int t = 0; t < nr; ++t) d[t] = src[t];
      for (int t = nr; t < NR; ++t) d[t] = 0.0f;
    }
  }
}

AS_VECTORIZE void pack_windows(const float* xp, const int64_t* off, int64_t q_base, int64_t p0,
                               int64_t kc, int64_t j0, int64_t nc, int NR, int64_t s0, int64_t s1,
                               float* out) {
  for (int64_t s = s0; s < s1; ++s) {
    float* o = out + s * kc * NR;
    const int64_t c0 = j0 + s * NR;
    const int nr = int(std::min<int64_t>(NR, j0 + nc - c0));
    if (NR == 32) copy_windows<32>(xp, off, p0, kc, q_base + c0, nr, o);
    else if (NR == 16) copy_windows<16>(xp, off, p0, kc, q_base + c0, nr, o);
    else
      for (int64_t k = 0; k < kc; ++k) {
        const float* src = xp + off[p0 + k] + q_base + c0;
        for (int t = 0; t < NR; ++t) o[k * NR + t] = t < nr ? src[t] : 0.0f;
      }
  }
}

// The implicit matrix X~[r][q] = xp[off[r] + q_base + q] as the GEMM's B.
struct Windows final : GemmBSource {
  const float* xp;
  const int64_t* off;
  int64_t q_base;
  Windows(const float* x, const int64_t* o, int64_t q) : xp(x), off(o), q_base(q) {}
  void pack(int64_t p0, int64_t kc, int64_t j0, int64_t nc, int NR, int64_t s0, int64_t s1,
            float* out) const override {
    pack_windows(xp, off, q_base, p0, kc, j0, nc, NR, s0, s1, out);
  }
};

// Where a correlation's output goes: element (c, u, v) at base[c * cs + u * rs + v * vs]. A
// convolution's y is {y, Ho * Wo, Wo, 1}; a strided dX phase lands in dx with the stride.
struct OutLayout {
  float* base;
  int64_t cs, rs, vs;
  OutLayout rows_from(int64_t u) const { return OutLayout{base + u * rs, cs, rs, vs}; }
};

// out (+ bias) from the GEMM rows [oh0, oh1) in the padded layout (out at row oh0).
void take_rows(const float* __restrict t, int64_t Cout, int64_t rows, int64_t Wp, int64_t Wo,
               const float* __restrict b, const OutLayout& out) {
  for (int64_t co = 0; co < Cout; ++co) {
    const float bc = b ? b[co] : 0.0f;
    if (out.vs == 1) {
      loops::add_rows(t + co * rows * Wp, Wp, bc, out.base + co * out.cs, out.rs, rows, Wo);
      continue;
    }
    for (int64_t r = 0; r < rows; ++r) {
      const float* __restrict src = t + (co * rows + r) * Wp;
      float* __restrict dst = out.base + co * out.cs + r * out.rs;
      for (int64_t ow = 0; ow < Wo; ++ow) dst[ow * out.vs] = src[ow] + bc;
    }
  }
}

// Output rows up to this wide run by pixel rows (gemm_pixel_rows) where the AVX-512 tile is
// there: the windows lowering computes Wp - Wo padding columns per row and rounds each row
// block up to the tile width (64 columns for 49 outputs at 7x7, 224 for 196 at 14x14).
constexpr int64_t kPixelRowsMaxWidth = 32;

// The weight [N, K] packed for gemm_pixel_rows when the convolution t takes that path, else
// empty.
std::vector<float> pixel_weights(const Conv2dDims& t, const Padded& g, const float* w, int64_t N,
                                 int64_t K) {
  if (!gemm_pixel_rows_available() || t.Wo > kPixelRowsMaxWidth || t.Wo < 1 || N < 1) return {};
  // Products computed per useful one: pixel rows round the channels up to the 32-wide sliver;
  // the windows lowering computes Wp columns per Wo and rounds the row block up to its tile's
  // columns and the channels up to 8 rows.
  const double pixel = double((N + 31) / 32 * 32) / double(N);
  const double cols = double(t.Ho * g.Wp), tile = double(kWindowsTileCols);
  const double windows = std::ceil(cols / tile) * tile / double(t.Ho * t.Wo) *
                         (double((N + 7) / 8 * 8) / double(N));
  if (!(pixel < windows)) return {};
  std::vector<float> out(size_t(gemm_rows_packed_size(N, K, 32)));
  gemm_rows_pack(w, K, N, K, out.data(), 32);
  return out;
}

// One sample by pixel rows: each output row in runs of at most 8 pixels (as equal as possible),
// each run against all output channels, written straight into y.
void pixel_rows_forward(const Conv2dDims& d, const Padded& g, const int64_t* off, const float* xp,
                        const float* wpix, int64_t N, const float* b, float* y, bool inner_parallel) {
  const int64_t runs = (d.Wo + 7) / 8, base = d.Wo / runs, rem = d.Wo % runs, K = d.K();
  auto run = [&](int64_t i) {
    const int64_t oh = i / runs, r = i % runs;
    const int64_t w0 = r * base + std::min(r, rem);
    gemm_pixel_rows(xp + oh * g.Wp + w0, off, K, wpix, N, int(base + (r < rem ? 1 : 0)), b,
                    y + oh * d.Wo + w0, d.P());
  };
  if (inner_parallel) {
    parallel_for(d.Ho * runs, 1, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) run(i);
    });
  } else {
    for (int64_t i = 0; i < d.Ho * runs; ++i) run(i);
  }
}

// One sample of a stride-1 convolution in the windows lowering on its padded copy xp: -> out,
// with the weight [Cout, Cin*kh*kw] packed once per call (and, for pixel rows, wpix from
// pixel_weights); off from tap_offsets.
void windows_forward_padded(const Conv2dDims& d, const Padded& g, const int64_t* off,
                            const float* xp, const GemmPackedA& w, const std::vector<float>& wpix,
                            const float* b, const OutLayout& out, bool inner_parallel) {
  if (!wpix.empty()) {
    // pixel rows write [Cout, Ho, Wo] contiguously: straight into out when it is laid out so,
    // else into a buffer, then placed
    if (out.cs == d.P() && out.rs == d.Wo && out.vs == 1) {
      pixel_rows_forward(d, g, off, xp, wpix.data(), d.Cout, b, out.base, inner_parallel);
      return;
    }
    float* tmp = scratch(1, size_t(d.Cout * d.P())).data();
    pixel_rows_forward(d, g, off, xp, wpix.data(), d.Cout, b, tmp, inner_parallel);
    for (int64_t c = 0; c < d.Cout; ++c)
      for (int64_t u = 0; u < d.Ho; ++u) {
        float* row = out.base + c * out.cs + u * out.rs;
        const float* src = tmp + (c * d.Ho + u) * d.Wo;
        for (int64_t v = 0; v < d.Wo; ++v) row[v * out.vs] = src[v];
      }
    return;
  }
  // Whole output rows per GEMM, with at most kColsBudget floats of output tile.
  const int64_t rows = std::max<int64_t>(
      1, std::min<int64_t>(d.Ho, kColsBudget / std::max<int64_t>(d.Cout * g.Wp, 1)));
  float* t = scratch(3, size_t(d.Cout * rows * g.Wp)).data();
  for (int64_t oh0 = 0; oh0 < d.Ho; oh0 += rows) {
    const int64_t nr = std::min(rows, d.Ho - oh0), L = nr * g.Wp;
    if (inner_parallel) {
      Windows src(xp, off, oh0 * g.Wp);
      gemm_packed_a(w, L, 1.0f, src, 0.0f, t, L, true);
    } else {
      // On one thread the GEMM reads the windows in place (the same bits, no packing).
      gemm_packed_a_windows(w, L, xp, off, oh0 * g.Wp, t, L);
    }
    take_rows(t, d.Cout, nr, g.Wp, d.Wo, b, out.rows_from(oh0));
  }
}

// The same from x [Cin, H, W] (padded into this thread's scratch slot) to y [Cout, Ho, Wo].
void windows_forward(const Conv2dDims& d, const Padded& g, const int64_t* off, const float* x,
                     const GemmPackedA& w, const std::vector<float>& wpix, const float* b, float* y,
                     bool inner_parallel, int pad_slot = 2) {
  float* xp = scratch(pad_slot, size_t(g.total)).data();
  pad_sample(x, g, xp, inner_parallel, pad_slot);
  windows_forward_padded(d, g, off, xp, w, wpix, b, OutLayout{y, d.P(), d.Wo, 1}, inner_parallel);
}

// dX of one phase (a, b) of the padded input: the input positions (s u + a, s v + b) get
// dx[u][v] = sum over taps i = a + s i', j = b + s j' of w[i][j] dy[u - i'][v - j'], a stride-1
// correlation of dy with the phase's taps flipped, run as a windows forward whose output rows
// start at the first row u0 the input needs, written into dx with the stride.
struct DxPhase {
  int64_t a, b, u0, v0;
  Conv2dDims t;                      // the correlation as a forward convolution of dy
  std::vector<int64_t> off;          // its taps' offsets in the plan's padded dy
  std::unique_ptr<GemmPackedA> w;    // the phase's flipped taps [Cin, Cout * kh' * kw'], packed
  std::vector<float> wpix;           // the same for pixel rows (pixel_weights), or empty
};

// dX of a windows-lowered convolution: its phases all read one padded copy of dy (padded by the
// largest padding any phase needs; a phase that needs less starts its taps further in), so dy is
// padded once per sample, not once per phase.
struct DxPlan {
  std::vector<DxPhase> phases;  // empty: the phases' taps are all outside dx
  Padded g{};                   // the padded dy
  bool covered = true;          // every position of dx gets a phase's output (no zero fill)
};

struct WindowsPlan {
  bool fwd = false, bwd_dx = false;
  Padded gx{};                        // padded x (forward, dW)
  std::vector<int64_t> offx;          // tap offsets on it
  std::unique_ptr<GemmPackedA> w;     // the weight [Cout, K], packed (forward)
  std::vector<float> wpix;            // the same for pixel rows (pixel_weights), or empty
  DxPlan dx;                          // dX (bwd_dx)
  // Pointwise convolutions with the own GEMM: the weight [Cout, Cin] (forward) or its transpose
  // (dX), packed once per call instead of once per sample.
  std::unique_ptr<GemmPackedA> pointwise;
  // dW sample by sample in the groups (dw_rows): the partials are dW^T [K, Cout], each sample's
  // taps read in place from its padded copy at the exact output pixels (kmap) against its dy.
  bool dw_rows = false;
  std::vector<int32_t> kmap;
  int64_t dw_tile = 0, dw_tap_pitch = 0;  // dw_row_tile, and gx.Wp for the taps tile (else 0)
};

// Weight-gradient row tiles (rows of dW^T = taps) for the rows kernels: a multiple of every
// register tile's height (8 with the AVX-512 tiles, whose 16-row tile leaves a last 8 rows to an
// 8-row tile; 6 and 4 otherwise); 8 when there are few rows (144 for 16 channels: 72 per thread,
// where tiles of 16 split 80 / 64), 48 otherwise. Each row is computed whole inside one tile:
// the tiling does not change any bit. A stride-1 3x3 weight gradient with at most 16 output
// channels runs on the taps tile (gemm_rows_batched's tap_pitch: two channels' 9 taps per tile),
// so tiles are whole pairs of channels (18 rows).
bool dw_taps3x3(const Conv2dDims& d, const Padded* g) {
  return g && gemm_pixel_rows_available() && loops::avx512_paths() && d.kh == 3 && d.kw == 3 &&
         d.stride_h == 1 && d.stride_w == 1 && d.Cout <= 16;
}
int64_t dw_row_tile(const Conv2dDims& d, const Padded* g) {
  return dw_taps3x3(d, g) ? 18 : gemm_pixel_rows_available() && d.K() <= 384 ? 8 : 48;
}
// Pixel p of the output sits at (p / Wo) * Wp + p % Wo of the padded layout's rows: the depth of
// the weight-gradient products runs over the exact output pixels (padding columns never multiplied).
std::vector<int32_t> output_pixel_map(const Conv2dDims& d, const Padded& g) {
  std::vector<int32_t> kmap(size_t(d.P()));
  for (int64_t q = 0; q < d.P(); ++q) kmap[size_t(q)] = int32_t((q / d.Wo) * g.Wp + q % d.Wo);
  return kmap;
}

// dW^T [K, Cout] (+)= the weight gradient of one sample (accumulate: added to what dwt holds),
// rows split across the pool when inner_parallel. The sample's padded copy and packed dy stay in
// this thread's cache for the products.
void sample_weight_grad_rows(const Conv2dDims& d, const WindowsPlan& plan, const float* xn,
                             const float* dyn, bool accumulate, float* dwt, bool inner_parallel) {
  const Padded& g = plan.gx;
  const int64_t K = d.K(), Cout = d.Cout, P = d.P();
  float* xp = scratch(kDwPadSlot, size_t(g.total)).data();
  pad_sample(xn, g, xp, inner_parallel, kDwPadSlot);
  const int nr = gemm_rows_sliver(Cout);
  float* packed = scratch(kDwPackSlot, size_t(gemm_rows_packed_size(Cout, P, nr))).data();
  gemm_rows_pack(dyn, P, Cout, P, packed, nr);
  const float* xps[1] = {xp};
  const int64_t tile = plan.dw_tile;
  auto rows = [&](int64_t t0, int64_t t1) {
    gemm_rows_batched(t0 * tile, std::min(K, t1 * tile), Cout, P, plan.offx.data(), xps, 1, packed,
                      accumulate, dwt, Cout, plan.kmap.data(), plan.dw_tap_pitch);
  };
  if (inner_parallel) parallel_for((K + tile - 1) / tile, 1, rows);
  else rows(0, (K + tile - 1) / tile);
}

// dX as stride-1 correlations of dy, one per phase of the stride (one in all for stride 1, whose
// output is dx itself). False when the padding is too large for that (the columns path then).
bool plan_dx_phases(const Conv2dDims& d, const float* w, DxPlan& out) {
  for (int64_t a = 0; a < d.stride_h; ++a)
    for (int64_t b = 0; b < d.stride_w; ++b) {
      const int64_t kh = a < d.kh ? (d.kh - a + d.stride_h - 1) / d.stride_h : 0;
      const int64_t kw = b < d.kw ? (d.kw - b + d.stride_w - 1) / d.stride_w : 0;
      // rows u of this phase inside the input: pad_h <= s u + a < pad_h + H
      const int64_t u0 = std::max<int64_t>(0, (d.pad_h - a + d.stride_h - 1) / d.stride_h);
      const int64_t u1 = d.pad_h + d.H - 1 - a < 0 ? 0 : (d.pad_h + d.H - 1 - a) / d.stride_h + 1;
      const int64_t v0 = std::max<int64_t>(0, (d.pad_w - b + d.stride_w - 1) / d.stride_w);
      const int64_t v1 = d.pad_w + d.W - 1 - b < 0 ? 0 : (d.pad_w + d.W - 1 - b) / d.stride_w + 1;
      if (u1 <= u0 || v1 <= v0) continue;  // no input position in this phase
      if (kh == 0 || kw == 0) {            // positions but no tap: 0 there
        out.covered = false;
        continue;
      }
      if (u0 > kh - 1 || v0 > kw - 1) return false;
      DxPhase ph;
      ph.a = a;
      ph.b = b;
      ph.u0 = u0;
      ph.v0 = v0;
      Conv2dDims& t = ph.t;
      t = Conv2dDims{};
      t.N = d.N;
      t.Cin = d.Cout;
      t.H = d.Ho;
      t.W = d.Wo;
      t.Cout = d.Cin;
      t.kh = kh;
      t.kw = kw;
      t.Ho = u1 - u0;
      t.Wo = v1 - v0;
      t.stride_h = t.stride_w = 1;
      t.pad_h = kh - 1 - u0;
      t.pad_w = kw - 1 - v0;
      out.phases.push_back(std::move(ph));
    }
  if (out.phases.empty()) return true;
  // The shared padded dy: the largest padding of any phase, rows and columns for every phase's
  // taps past it.
  Padded& g = out.g;
  g = Padded{d.Cout, d.Ho, d.Wo, 0, 0, 1, 1, 0, 0, 0, 0, 1, 1};
  for (const DxPhase& ph : out.phases) {
    g.ph = std::max(g.ph, ph.t.pad_h);
    g.pw = std::max(g.pw, ph.t.pad_w);
    g.kh = std::max(g.kh, ph.t.kh);
    g.kw = std::max(g.kw, ph.t.kw);
  }
  for (const DxPhase& ph : out.phases) {
    g.Hp = std::max(g.Hp, g.ph - ph.t.pad_h + ph.t.Ho + ph.t.kh - 1);
    g.Wp = std::max(g.Wp, g.pw - ph.t.pad_w + ph.t.Wo + ph.t.kw - 1);
  }
  g.plane = g.Hp * g.Wp;
  // Windows read past a plane's last row by at most Wp (a phase's shift and taps) plus a
  // register tile's width.
  g.total = g.C * g.plane + g.Wp + kWindowsTileCols;
  for (DxPhase& ph : out.phases) {
    const Conv2dDims& t = ph.t;
    ph.off = tap_offsets(t, g);
    const int64_t shift = (g.ph - t.pad_h) * g.Wp + (g.pw - t.pad_w);
    for (int64_t& o : ph.off) o += shift;
    const int64_t kh = t.kh, kw = t.kw, kk = kh * kw;
    std::vector<float> flip(size_t(d.Cin * d.Cout * kk));
    for (int64_t co = 0; co < d.Cout; ++co)
      for (int64_t c = 0; c < d.Cin; ++c)
        for (int64_t i = 0; i < kh; ++i)
          for (int64_t j = 0; j < kw; ++j)
            flip[size_t((c * d.Cout + co) * kk + (kh - 1 - i) * kw + (kw - 1 - j))] =
                w[((co * d.Cin + c) * d.kh + ph.a + i * d.stride_h) * d.kw + ph.b + j * d.stride_w];
    ph.w = std::make_unique<GemmPackedA>(false, d.Cin, d.Cout * kk, flip.data(), d.Cout * kk);
    ph.wpix = pixel_weights(t, g, flip.data(), d.Cin, d.Cout * kk);
  }
  return true;
}

// dx [Cin, H, W] of one sample from dy through the plan's phases.
void windows_input_grad(const Conv2dDims& d, const DxPlan& plan, const float* dy, float* dx,
                        bool inner_parallel) {
  const std::vector<DxPhase>& phases = plan.phases;
  if (phases.empty()) {
    std::fill(dx, dx + d.Cin * d.H * d.W, 0.0f);
    return;
  }
  // dy padded once, in a slot of its own (its zero borders stay from sample to sample)
  float* dyp = scratch(kDxPadSlot, size_t(plan.g.total)).data();
  pad_sample(dy, plan.g, dyp, inner_parallel, kDxPadSlot);
  if (!plan.covered) std::fill(dx, dx + d.Cin * d.H * d.W, 0.0f);
  for (const DxPhase& ph : phases) {
    const Conv2dDims& t = ph.t;
    const int64_t h0 = ph.u0 * d.stride_h + ph.a - d.pad_h, w0 = ph.v0 * d.stride_w + ph.b - d.pad_w;
    const OutLayout into_dx{dx + h0 * d.W + w0, d.H * d.W, d.stride_h * d.W, d.stride_w};
    windows_forward_padded(t, plan.g, ph.off.data(), dyp, *ph.w, ph.wpix, nullptr, into_dx,
                           inner_parallel);
  }
}

// The windows lowering serves every non-pointwise convolution with the own GEMM (strided ones
// through phase planes); dX needs the padding below the kernel size (plan_dx_phases).
bool windows_usable(const Conv2dDims& d) {
  return gemm_backend() == GemmBackend::Own && !d.pointwise();
}

// ---- per sample: windows, columns (any stride; the BLAS path) or pointwise -------------------
void forward_sample(const Conv2dDims& d, const float* x, const float* w, const float* b, float* y,
                    const WindowsPlan& plan, bool inner_parallel) {
  if (plan.fwd) {
    windows_forward(d, plan.gx, plan.offx.data(), x, *plan.w, plan.wpix, b, y, inner_parallel);
    return;
  }
  const GemmFn G = inner_parallel ? &gemm : &gemm_serial;
  const int64_t K = d.K(), P = d.P();
  if (d.pointwise()) {
    if (plan.pointwise)
      gemm_packed_a(*plan.pointwise, P, 1.0f, GemmMatrixB(false, x, P), 0.0f, y, P, inner_parallel);
    else
      G(false, false, d.Cout, P, d.Cin, 1.0f, w, d.Cin, x, P, 0.0f, y, P);
  } else {
    const int64_t chunk = pixel_chunk(d);
    float* cols = scratch(0, size_t(K * chunk)).data();
    for (int64_t p0 = 0; p0 < P; p0 += chunk) {
      const int64_t p1 = std::min(P, p0 + chunk), L = p1 - p0;
      build_cols(d, x, p0, p1, cols, inner_parallel);
      G(false, false, d.Cout, L, K, 1.0f, w, K, cols, L, 0.0f, y + p0, P);
    }
  }
  if (b) add_bias(y, b, d.Cout, P);
}

// Samples [n0, n1) in order: dW accumulates into dw_acc (overwritten by the first sample; dW^T
// [K, Cout] with plan.dw_rows, else [Cout, K]), dx written per sample.
void backward_group(const Conv2dDims& d, const float* dy, const float* x, const float* w,
                    float* dx, const float* dx_add, float* dw_acc, int64_t n0, int64_t n1,
                    const WindowsPlan& plan, bool inner_parallel) {
  const GemmFn G = inner_parallel ? &gemm : &gemm_serial;
  const int64_t K = d.K(), P = d.P();
  const int64_t x_stride = d.Cin * d.H * d.W, y_stride = d.Cout * P;
  const int64_t chunk = pixel_chunk(d);
  for (int64_t n = n0; n < n1; ++n) {
    const float* xn = x + n * x_stride;
    const float* dyn = dy + n * y_stride;
    if (dw_acc) {
      if (plan.dw_rows) {
        sample_weight_grad_rows(d, plan, xn, dyn, n != n0, dw_acc, inner_parallel);
      } else if (d.pointwise()) {
        G(false, true, d.Cout, d.Cin, P, 1.0f, dyn, P, xn, P, n == n0 ? 0.0f : 1.0f, dw_acc, d.Cin);
      } else {
        float* cols = scratch(0, size_t(K * chunk)).data();
        for (int64_t p0 = 0; p0 < P; p0 += chunk) {
          const int64_t p1 = std::min(P, p0 + chunk), L = p1 - p0;
          build_cols(d, xn, p0, p1, cols, inner_parallel);
          G(false, true, d.Cout, K, L, 1.0f, dyn + p0, P, cols, L,
            n == n0 && p0 == 0 ? 0.0f : 1.0f, dw_acc, K);
        }
      }
    }
    if (dx) {
      float* dxn = dx + n * x_stride;
      if (plan.bwd_dx) {
        windows_input_grad(d, plan.dx, dyn, dxn, inner_parallel);
      } else if (d.pointwise()) {
        if (plan.pointwise)
          gemm_packed_a(*plan.pointwise, P, 1.0f, GemmMatrixB(false, dyn, P), 0.0f, dxn, P,
                        inner_parallel);
        else
          G(true, false, d.Cin, P, d.Cout, 1.0f, w, d.Cin, dyn, P, 0.0f, dxn, P);
      } else {
        std::fill(dxn, dxn + x_stride, 0.0f);
        float* dcols = scratch(1, size_t(K * chunk)).data();
        for (int64_t p0 = 0; p0 < P; p0 += chunk) {
          const int64_t p1 = std::min(P, p0 + chunk), L = p1 - p0;
          G(true, false, K, L, d.Cout, 1.0f, w, K, dyn + p0, P, 0.0f, dcols, L);
          scatter_cols(d, dcols, p0, p1, dxn, inner_parallel);
        }
      }
      if (dx_add) add_sample(dxn, dx_add + n * x_stride, x_stride, inner_parallel);
    }
  }
}

// dW of all samples at once, for the windows shapes with short rows and for pointwise
// convolutions (plan null): dW^T [K, Cout] = sum over samples of A~_n dy~_n^T, where row r of
// A~_n is tap r of sample n read in place (the padded copy; x itself when pointwise) and dy~_n
// (dy in the padded layout) is the only packed operand. Row tiles of K go across the pool; each
// element sums the samples in order in registers and is written once (per pass of at most
// kBatchFloats of copies), so the bits do not depend on the thread count. Then dW = (dW^T)^T.
void batched_weight_grad(const Conv2dDims& d, const WindowsPlan* plan, const float* x,
                         const float* dy, float* dw) {
  constexpr int64_t kBatchFloats = int64_t(1) << 22;
  const Padded* g = plan ? &plan->gx : nullptr;
  const bool taps3x3 = dw_taps3x3(d, g);
  const int64_t kRowTile = dw_row_tile(d, g);
  const int64_t K = d.K(), Cout = d.Cout, P = d.P();
  const int64_t x_stride = d.Cin * d.H * d.W, y_stride = Cout * P;
  const std::vector<int32_t> kmap = g ? output_pixel_map(d, *g) : std::vector<int32_t>();
  const int nr = gemm_rows_sliver(Cout);
  const int64_t xsize = g ? g->total : 0, psize = gemm_rows_packed_size(Cout, P, nr);
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(d.N, kBatchFloats / (xsize + psize)));
  // The batch's padded samples and packed dy, in buffers kept by the calling thread: a fresh
  // multi-megabyte vector per call would be zero-filled and page-faulted in every step (at
  // most kBatchFloats floats in all stay with the thread).
  std::vector<float>& xkeep = thread_buffers().xkeep;
  std::vector<float>& bkeep = thread_buffers().bkeep;
  if (xkeep.size() < size_t(g ? chunk * xsize : 0)) xkeep.resize(size_t(chunk * xsize));
  if (bkeep.size() < size_t(chunk * psize)) bkeep.resize(size_t(chunk * psize));
  float* const xbuf = xkeep.data();
  float* const bbuf = bkeep.data();
  std::vector<const float*> xps(static_cast<size_t>(chunk));
  std::vector<int64_t> rows_off;
  if (!g) {
    rows_off.resize(size_t(K));
    for (int64_t c = 0; c < K; ++c) rows_off[size_t(c)] = c * P;
  }
  const int64_t* off = g ? plan->offx.data() : rows_off.data();
  std::vector<float> dwt(size_t(K * Cout));
  for (int64_t n0 = 0; n0 < d.N; n0 += chunk) {
    const int64_t nc = std::min(chunk, d.N - n0);
    parallel_for(nc, 1, [&](int64_t s0, int64_t s1) {
      for (int64_t s = s0; s < s1; ++s) {
        const float* xn = x + (n0 + s) * x_stride;
        const float* dyn = dy + (n0 + s) * y_stride;
        float* packed = bbuf + s * psize;
        if (g) {
          float* xp = xbuf + s * xsize;
          pad_sample(xn, *g, xp, false, -1);
          xps[size_t(s)] = xp;
        } else {
          xps[size_t(s)] = xn;
        }
        gemm_rows_pack(dyn, P, Cout, P, packed, nr);
      }
    });
    parallel_for((K + kRowTile - 1) / kRowTile, 1, [&](int64_t t0, int64_t t1) {
      gemm_rows_batched(t0 * kRowTile, std::min(K, t1 * kRowTile), Cout, P, off, xps.data(), nc,
                        bbuf, n0 > 0, dwt.data(), Cout, g ? kmap.data() : nullptr,
                        taps3x3 ? g->Wp : 0);
    });
  }
  loops::transpose(dwt.data(), Cout, K, Cout, dw, K);
}

}  // namespace

void conv2d_forward(const Conv2dDims& d, const float* x, const float* w, const float* b,
                    float* y) {
  const int64_t x_stride = d.Cin * d.H * d.W, y_stride = d.Cout * d.P();
  WindowsPlan plan;
  if (windows_usable(d)) {
    plan.fwd = true;
    plan.gx = padded(d);
    plan.offx = tap_offsets(d, plan.gx);
    plan.w = std::make_unique<GemmPackedA>(false, d.Cout, d.K(), w, d.K());
    plan.wpix = pixel_weights(d, plan.gx, w, d.Cout, d.K());
  } else if (d.pointwise() && gemm_backend() == GemmBackend::Own) {
    plan.pointwise = std::make_unique<GemmPackedA>(false, d.Cout, d.Cin, w, d.Cin);
  }
  if (across_samples(d.N)) {
    parallel_for(d.N, 1, [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n)
        forward_sample(d, x + n * x_stride, w, b, y + n * y_stride, plan, false);
    });
    return;
  }
  for (int64_t n = 0; n < d.N; ++n)
    forward_sample(d, x + n * x_stride, w, b, y + n * y_stride, plan, true);
}

void conv2d_backward(const Conv2dDims& d, const float* dy, const float* x, const float* w,
                     float* dx, float* dw, float* db, const float* dx_add) {
  const int64_t P = d.P();
  if (db) {
    // db[c] = sum over samples (fixed blocks, in order) of the plane sums of dy[n, c].
    deterministic_column_sums(d.N, d.Cout, db, [&](int64_t n, int64_t c) {
      return double(loops::sum(dy + (n * d.Cout + c) * P, P));
    });
  }
  if (!dx && !dw) return;
  const int64_t K = d.K(), CK = d.Cout * K;
  if (dw && d.N == 0) std::fill(dw, dw + CK, 0.0f);
  const int64_t groups = std::min<int64_t>(d.N, kMaxGroups);
  if (groups == 0) return;

  WindowsPlan plan;
  const bool windows = windows_usable(d);
  if (windows) {
    plan.gx = padded(d);
    plan.offx = tap_offsets(d, plan.gx);
    // dX = stride-1 correlations of dy with the flipped weight, one per phase of the stride.
    if (dx) plan.bwd_dx = plan_dx_phases(d, w, plan.dx);
  } else if (dx && d.pointwise() && gemm_backend() == GemmBackend::Own) {
    plan.pointwise = std::make_unique<GemmPackedA>(true, d.Cin, d.Cout, w, d.Cin);  // W^T
  }
  // dW with the own GEMM. Windows shapes with a full set of groups and a dW that stays in cache:
  // sample by sample inside the groups below, next to the sample's dX, each sample's padded copy
  // and packed dy made and used while in cache (the batched form below wrote them for the whole
  // batch first and then read them back once per row tile: 16 channels at 28x28, batch 64, ~7
  // MB written and ~29 MB read back). Each sample adds its products into its group's partial, so
  // a large dW moves more than that: kMaxSampleDwFloats; on small maps its short products
  // write it too often: kMinSampleDwDepth. Otherwise (fewer samples than groups, larger dW,
  // small maps, or pointwise): all samples at once, the rows across the pool. The groups also
  // serve the BLAS backend.
  if (dw && gemm_backend() == GemmBackend::Own && (d.pointwise() || windows)) {
    if (windows && d.N >= kMaxGroups && K * d.Cout <= kMaxSampleDwFloats && d.P() > kMinSampleDwDepth) {
      plan.dw_rows = true;
      plan.kmap = output_pixel_map(d, plan.gx);
      plan.dw_tile = dw_row_tile(d, &plan.gx);
      plan.dw_tap_pitch = dw_taps3x3(d, &plan.gx) ? plan.gx.Wp : 0;
    } else {
      batched_weight_grad(d, windows ? &plan : nullptr, x, dy, dw);
      dw = nullptr;
      if (!dx) return;
    }
  }

  // The groups' partials: dW [Cout, K] (the one group's straight into dw), or dW^T [K, Cout]
  // with dw_rows (added, then transposed into dw).
  // Each group's first sample overwrites its partial whole, so the partials (megabytes for wide
  // layers) are allocated without a zero fill.
  const bool separate = dw && (groups > 1 || plan.dw_rows);
  std::unique_ptr<float[]> part(separate ? new float[size_t(groups * CK)] : nullptr);
  auto dw_of = [&](int64_t g) -> float* {
    if (!dw) return nullptr;
    return separate ? part.get() + g * CK : dw;
  };
  auto group_begin = [&](int64_t g) { return d.N * g / groups; };
  if (across_samples(groups)) {
    parallel_for(groups, 1, [&](int64_t g0, int64_t g1) {
      for (int64_t g = g0; g < g1; ++g)
        backward_group(d, dy, x, w, dx, dx_add, dw_of(g), group_begin(g), group_begin(g + 1), plan, false);
    });
  } else {
    for (int64_t g = 0; g < groups; ++g)
      backward_group(d, dy, x, w, dx, dx_add, dw_of(g), group_begin(g), group_begin(g + 1), plan, true);
  }
  if (separate) {
    // partial 0 + partial 1 + ... in group order, element-wise (split over the pool)
    // dW^T sums into partial 0 itself (read once, element by element, before it is written)
    float* sum = plan.dw_rows ? part.get() : dw;
    parallel_for(CK, 4096, [&](int64_t e0, int64_t e1) {
      if (sum != part.get()) std::memcpy(sum + e0, part.get() + e0, size_t(e1 - e0) * sizeof(float));
      for (int64_t g = 1; g < groups; ++g) add_into(sum + e0, part.get() + g * CK + e0, e1 - e0);
    });
    if (plan.dw_rows) loops::transpose(part.get(), d.Cout, K, d.Cout, dw, K);
  }
}

}  // namespace cpu
}  // namespace adashift

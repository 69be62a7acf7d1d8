// CPU BatchNorm (+ activation) kernels. Work is split by ranges of (n, c) planes across the
// thread pool; each plane is a contiguous run walked by one vectorised loop (compiled per ISA,
// see loops.h; one call per range of planes, so small planes pay no call each). Plane
// reductions add fixed chunks of kChunk elements (float vector lanes inside a chunk, chunks in
// double, in order); channel results add the planes in order of n in double. No result depends
// on the thread count. With a residual r (BnApply::r), every pass computes the activation's
// input as bn(x) + r (a template flag, so the plain passes carry no test per element) and the
// backward apply pass also writes r's gradient.
//
// Statistics: per plane the corrected two-pass algorithm (mean, then sum of squared deviations
// from it, minus the deviations' sum squared over n, Chan-Golub-LeVeque), the plane still in
// cache for the second pass; the planes of a channel (equal counts) merge with Chan's formula.
#include <algorithm>
#include <cmath>
#include <vector>
#include "../ops/norm.h"
#include "../math.h"
#include "../threadpool.h"
#include "loops.h"

namespace adashift {
namespace cpu {

namespace {

constexpr int64_t kChunk = 4096;
using math::bnact::kGate;
using math::bnact::kGELU;
using math::bnact::kGELUTanh;
using math::bnact::kNone;
using math::bnact::kReLU;
using math::bnact::kSiLU;

// ---- vectorised inner loops (one function per loop and activation) --------------------------
AS_VECTORIZE float v_sum(const float* __restrict x, int64_t n) {
  float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) acc += x[i];
  return acc;
}

// z = bn(x) (+ r, the residual, with RES) is the activation's input in every pass.
template <int ACT, bool RES>
__attribute__((always_inline)) inline void fwd_body(const float* __restrict x,
                                                    const float* __restrict r, float mean,
                                                    float scale, float bias, float s,
                                                    float* __restrict y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    float z = math::bn_norm(x[i], mean, scale, bias);
    if (RES) z += r[i];
    y[i] = math::bn_act<ACT>(z, s);
  }
}

// out: sum dz_d, sum dz_d * (x - mean), sum ds-term; with DZ also dz_d itself per element.
template <int ACT, bool RES, bool DZ>
__attribute__((always_inline)) inline void red_body(const float* __restrict x,
                                                    const float* __restrict r,
                                                    const float* __restrict dy, float mean,
                                                    float scale, float bias, float s, int64_t n,
                                                    float* out, float* __restrict dz) {
  float a = 0.0f, b = 0.0f, c = 0.0f;
#pragma omp simd reduction(+ : a, b, c)
  for (int64_t i = 0; i < n; ++i) {
    float z = math::bn_norm(x[i], mean, scale, bias);
    if (RES) z += r[i];
    const math::GateGrad g = math::bn_act_grad<ACT>(z, s, dy[i]);
    if (DZ) dz[i] = g.dx;
    a += g.dx;
    b += g.dx * (x[i] - mean);
    c += g.ds;
  }
  out[0] = a;
  out[1] = b;
  out[2] = c;
}

struct ApplyK {
  float mean, invstd, scale, bias, s, add, k1, k2;
};

// dx, and with RES the residual's gradient dr = dz.
template <int ACT, bool RES>
__attribute__((always_inline)) inline void app_body(const float* __restrict x,
                                                    const float* __restrict r,
                                                    const float* __restrict dy, ApplyK k,
                                                    float* __restrict dx, float* __restrict dr,
                                                    int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    float z = math::bn_norm(x[i], k.mean, k.scale, k.bias);
    if (RES) z += r[i];
    const float dz = math::bn_act_grad<ACT>(z, k.s, dy[i]).dx + k.add;
    if (RES) dr[i] = dz;
    dx[i] = math::bn_input_grad(dz, x[i], k.mean, k.invstd, k.scale, k.k1, k.k2);
  }
}

// The per-plane passes run a range of planes [p0, p1) per call, so small planes (7x7) do not
// pay a call per plane; within a plane, chunks of kChunk as described at the top.
template <int ACT>
__attribute__((always_inline)) inline void fwd_planes_body(const BnShape& d, const BnApply& k,
                                                           const float* x, float* y, int64_t p0,
                                                           int64_t p1) {
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t c = p % d.C, off = p * d.HW;
    const float scale = k.invstd[c] * k.weight[c], sv = k.s ? k.s[p] : 0.0f;
    if (k.r)
      fwd_body<ACT, true>(x + off, k.r + off, k.mean[c], scale, k.bias[c], sv, y + off, d.HW);
    else
      fwd_body<ACT, false>(x + off, nullptr, k.mean[c], scale, k.bias[c], sv, y + off, d.HW);
  }
}

template <int ACT, bool RES>
__attribute__((always_inline)) inline void red_chunk(const float* x, const float* r, const float* dy,
                                                     float mean, float scale, float bias, float s,
                                                     int64_t n, float* out, float* dz) {
  if (dz) red_body<ACT, RES, true>(x, r, dy, mean, scale, bias, s, n, out, dz);
  else red_body<ACT, RES, false>(x, r, dy, mean, scale, bias, s, n, out, nullptr);
}

template <int ACT>
__attribute__((always_inline)) inline void red_planes_body(const BnShape& d, const BnApply& k,
                                                           const float* x, const float* dy,
                                                           int64_t p0, int64_t p1, float* sum_dz,
                                                           float* sum_dz_xhat, float* ds,
                                                           float* dz) {
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t c = p % d.C, off = p * d.HW;
    const float scale = k.invstd[c] * k.weight[c];
    const float sv = k.s ? k.s[p] : 0.0f;
    double a = 0.0, b = 0.0, e = 0.0;
    for (int64_t i = 0; i < d.HW; i += kChunk) {
      float o[3];
      const int64_t n = std::min(kChunk, d.HW - i);
      float* dzc = dz ? dz + off + i : nullptr;
      if (k.r)
        red_chunk<ACT, true>(x + off + i, k.r + off + i, dy + off + i, k.mean[c], scale, k.bias[c],
                             sv, n, o, dzc);
      else
        red_chunk<ACT, false>(x + off + i, nullptr, dy + off + i, k.mean[c], scale, k.bias[c], sv,
                              n, o, dzc);
      a += o[0];
      b += o[1];
      e += o[2];
    }
    sum_dz[p] = float(a);
    sum_dz_xhat[p] = float(b * double(k.invstd[c]));
    if (ds) ds[p] = float(e);
  }
}

// What the apply pass adds per plane (the mean term of the gradient and the pooled path), and
// where the residual's gradient goes.
struct ApplyExtra {
  const float* dm;  // [N*C] or nullptr
  const float* dweight;
  const float* dbias;
  float inv_count;
  float* dr;        // with BnApply::r
};

template <int ACT>
__attribute__((always_inline)) inline void app_planes_body(const BnShape& d, const BnApply& k,
                                                           const ApplyExtra& e, const float* x,
                                                           const float* dy, float* dx, int64_t p0,
                                                           int64_t p1) {
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t c = p % d.C, off = p * d.HW;
    ApplyK a;
    a.mean = k.mean[c];
    a.invstd = k.invstd[c];
    a.scale = k.invstd[c] * k.weight[c];
    a.bias = k.bias[c];
    a.s = k.s ? k.s[p] : 0.0f;
    a.add = e.dm ? e.dm[p] / float(d.HW) : 0.0f;
    a.k1 = e.dbias ? e.dbias[c] * e.inv_count : 0.0f;
    a.k2 = e.dweight ? e.dweight[c] * e.inv_count : 0.0f;
    if (k.r)
      app_body<ACT, true>(x + off, k.r + off, dy + off, a, dx + off, e.dr + off, d.HW);
    else
      app_body<ACT, false>(x + off, nullptr, dy + off, a, dx + off, nullptr, d.HW);
  }
}

#define AS_BN_LOOPS(NAME, ACT)                                                                  \
  AS_VECTORIZE void fwd_##NAME(const BnShape& d, const BnApply& k, const float* x, float* y,    \
                               int64_t p0, int64_t p1) {                                        \
    fwd_planes_body<ACT>(d, k, x, y, p0, p1);                                                   \
  }                                                                                             \
  AS_VECTORIZE void red_##NAME(const BnShape& d, const BnApply& k, const float* x,              \
                               const float* dy, int64_t p0, int64_t p1, float* sum_dz,          \
                               float* sum_dz_xhat, float* ds, float* dz) {                      \
    red_planes_body<ACT>(d, k, x, dy, p0, p1, sum_dz, sum_dz_xhat, ds, dz);                     \
  }                                                                                             \
  AS_VECTORIZE void app_##NAME(const BnShape& d, const BnApply& k, const ApplyExtra& e,         \
                               const float* x, const float* dy, float* dx, int64_t p0,          \
                               int64_t p1) {                                                    \
    app_planes_body<ACT>(d, k, e, x, dy, dx, p0, p1);                                           \
  }
AS_BN_LOOPS(none, kNone)
AS_BN_LOOPS(relu, kReLU)
AS_BN_LOOPS(silu, kSiLU)
AS_BN_LOOPS(gate, kGate)
AS_BN_LOOPS(gelu, kGELU)
AS_BN_LOOPS(gelu_tanh, kGELUTanh)
#undef AS_BN_LOOPS

using FwdFn = void (*)(const BnShape&, const BnApply&, const float*, float*, int64_t, int64_t);
using RedFn = void (*)(const BnShape&, const BnApply&, const float*, const float*, int64_t,
                       int64_t, float*, float*, float*, float*);
using AppFn = void (*)(const BnShape&, const BnApply&, const ApplyExtra&, const float*,
                       const float*, float*, int64_t, int64_t);

FwdFn fwd_fn(NormAct a) {
  switch (a) {
    case NormAct::ReLU: return fwd_relu;
    case NormAct::SiLU: return fwd_silu;
    case NormAct::Gate: return fwd_gate;
    case NormAct::GELU: return fwd_gelu;
    case NormAct::GELUTanh: return fwd_gelu_tanh;
    default: return fwd_none;
  }
}
RedFn red_fn(NormAct a) {
  switch (a) {
    case NormAct::ReLU: return red_relu;
    case NormAct::SiLU: return red_silu;
    case NormAct::Gate: return red_gate;
    case NormAct::GELU: return red_gelu;
    case NormAct::GELUTanh: return red_gelu_tanh;
    default: return red_none;
  }
}
AppFn app_fn(NormAct a) {
  switch (a) {
    case NormAct::ReLU: return app_relu;
    case NormAct::SiLU: return app_silu;
    case NormAct::Gate: return app_gate;
    case NormAct::GELU: return app_gelu;
    case NormAct::GELUTanh: return app_gelu_tanh;
    default: return app_none;
  }
}

// Per-plane mean and M2 (corrected two-pass: the mean, then the deviations' sum and sum of
// squares from it, M2 = sum d^2 - (sum d)^2 / n), for planes [p0, p1): chunk sums (float
// lanes) added in double, in order.
AS_VECTORIZE void moments_planes(const float* x, int64_t hw, int64_t p0, int64_t p1, double* mean,
                                 double* m2) {
  for (int64_t p = p0; p < p1; ++p) {
    const float* xp = x + p * hw;
    double sum = 0.0;
    for (int64_t i = 0; i < hw; i += kChunk) {
      const int64_t n = std::min(kChunk, hw - i);
      float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
      for (int64_t j = 0; j < n; ++j) acc += xp[i + j];
      sum += acc;
    }
    const float mf = float(sum / double(hw));
    double s1 = 0.0, s2 = 0.0;
    for (int64_t i = 0; i < hw; i += kChunk) {
      const int64_t n = std::min(kChunk, hw - i);
      float a = 0.0f, b = 0.0f;
#pragma omp simd reduction(+ : a, b)
      for (int64_t j = 0; j < n; ++j) {
        const float dv = xp[i + j] - mf;
        a += dv;
        b += dv * dv;
      }
      s1 += a;
      s2 += b;
    }
    mean[p] = double(mf) + s1 / double(hw);
    m2[p] = std::max(0.0, s2 - s1 * s1 / double(hw));
  }
}

// fn(p0, p1) over ranges of planes (p = n * C + c), split across the pool.
template <typename RangeFn>
void for_plane_ranges(const BnShape& d, RangeFn fn) {
  parallel_for(d.planes(), std::max<int64_t>(1, (int64_t(1) << 14) / std::max<int64_t>(d.HW, 1)), fn);
}

// Sum over a plane: chunk sums (float lanes) added in double, in order.
double plane_sum(const float* x, int64_t n) {
  double acc = 0.0;
  for (int64_t i = 0; i < n; i += kChunk) acc += v_sum(x + i, std::min(kChunk, n - i));
  return acc;
}

// rmean: the residual's plane means (added to pooled), or empty.
void write_planes(const BnShape& d, const std::vector<double>& pmean, const float* mean,
                  const float* invstd, const float* weight, const float* bias, float* plane_xhat,
                  float* pooled, const std::vector<double>& rmean) {
  for (int64_t p = 0; p < d.planes(); ++p) {
    const int64_t c = p % d.C;
    const double xh = (pmean[size_t(p)] - double(mean[c])) * double(invstd[c]);
    plane_xhat[p] = float(xh);
    pooled[p] = float(xh * double(weight[c]) + double(bias[c]) +
                      (rmean.empty() ? 0.0 : rmean[size_t(p)]));
  }
}

// The residual's plane means (for pooled), or nothing without one.
std::vector<double> residual_means(const BnShape& d, const float* residual) {
  std::vector<double> rm;
  if (!residual) return rm;
  rm.resize(size_t(d.planes()));
  for_plane_ranges(d, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) rm[size_t(p)] = plane_sum(residual + p * d.HW, d.HW) / double(d.HW);
  });
  return rm;
}

}  // namespace

void batchnorm_stats_train(const BnShape& d, const float* x, const float* weight,
                           const float* bias, float momentum, float eps, float* running_mean,
                           float* running_var, float* mean, float* invstd, float* plane_xhat,
                           float* pooled, const float* residual) {
  const int64_t P = d.planes();
  std::vector<double> pm(static_cast<size_t>(P)), pm2(static_cast<size_t>(P));
  for_plane_ranges(d, [&](int64_t p0, int64_t p1) { moments_planes(x, d.HW, p0, p1, pm.data(), pm2.data()); });
  // The planes of a channel all hold HW elements, so they merge exactly as equal-weight groups
  // (Chan et al. with equal counts): mean = the planes' mean, M2 = sum of the planes' M2 plus
  // HW * the squared deviations of the plane means from it. Planes in order of n.
  const double nb = double(d.HW), cnt = double(d.N) * nb;
  std::vector<double> mus(size_t(d.C), 0.0), m2s(size_t(d.C), 0.0);
  for (int64_t n = 0; n < d.N; ++n)
    for (int64_t c = 0; c < d.C; ++c) mus[size_t(c)] += pm[size_t(n * d.C + c)];
  for (int64_t c = 0; c < d.C; ++c) mus[size_t(c)] /= double(d.N);
  for (int64_t n = 0; n < d.N; ++n)
    for (int64_t c = 0; c < d.C; ++c) {
      const size_t p = size_t(n * d.C + c);
      const double delta = pm[p] - mus[size_t(c)];
      m2s[size_t(c)] += pm2[p] + nb * delta * delta;
    }
  for (int64_t c = 0; c < d.C; ++c) {
    const double mu = mus[size_t(c)], m2 = m2s[size_t(c)];
    const double var = m2 / cnt;
    mean[c] = float(mu);
    invstd[c] = float(1.0 / std::sqrt(var + double(eps)));
    if (running_mean) {
      const double m = double(momentum);
      running_mean[c] = float((1.0 - m) * double(running_mean[c]) + m * mu);
      running_var[c] = float((1.0 - m) * double(running_var[c]) + m * (m2 / (cnt - 1.0)));
    }
  }
  // plane_xhat uses the unrounded plane means but the float mean / invstd the passes use.
  if (plane_xhat)
    write_planes(d, pm, mean, invstd, weight, bias, plane_xhat, pooled, residual_means(d, residual));
}

void batchnorm_stats_eval(const BnShape& d, const float* x, const float* weight,
                          const float* bias, const float* running_mean, const float* running_var,
                          float eps, float* mean, float* invstd, float* plane_xhat, float* pooled,
                          const float* residual) {
  for (int64_t c = 0; c < d.C; ++c) {
    mean[c] = running_mean[c];
    invstd[c] = float(1.0 / std::sqrt(double(running_var[c]) + double(eps)));
  }
  if (!plane_xhat || d.planes() == 0) return;
  std::vector<double> pm(static_cast<size_t>(d.planes()));
  for_plane_ranges(d, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) pm[size_t(p)] = plane_sum(x + p * d.HW, d.HW) / double(d.HW);
  });
  write_planes(d, pm, mean, invstd, weight, bias, plane_xhat, pooled, residual_means(d, residual));
}

void batchnorm_act_forward(const BnShape& d, NormAct act, const BnApply& k, const float* x,
                           float* y) {
  const FwdFn f = fwd_fn(act);
  for_plane_ranges(d, [&](int64_t p0, int64_t p1) { f(d, k, x, y, p0, p1); });
}

void batchnorm_act_backward_reduce(const BnShape& d, NormAct act, const BnApply& k,
                                   const float* x, const float* dy, float* sum_dz,
                                   float* sum_dz_xhat, float* ds, float* dz) {
  const RedFn f = red_fn(act);
  for_plane_ranges(d, [&](int64_t p0, int64_t p1) { f(d, k, x, dy, p0, p1, sum_dz, sum_dz_xhat, ds, dz); });
}

void batchnorm_backward_params(const BnShape& d, const float* sum_dz, const float* sum_dz_xhat,
                               const float* dm, const float* plane_xhat, float* dweight,
                               float* dbias) {
  for (int64_t c = 0; c < d.C; ++c) {
    double s1 = 0.0, s2 = 0.0;
    for (int64_t n = 0; n < d.N; ++n) {
      const int64_t p = n * d.C + c;
      s1 += double(sum_dz[p]);
      s2 += double(sum_dz_xhat[p]);
      if (dm) {
        s1 += double(dm[p]);
        s2 += double(dm[p]) * double(plane_xhat[p]);
      }
    }
    dweight[c] = float(s2);
    dbias[c] = float(s1);
  }
}

void batchnorm_act_backward_apply(const BnShape& d, NormAct act, const BnApply& k,
                                  const float* x, const float* dy, const float* dm,
                                  const float* dweight, const float* dbias, float* dx, float* dr) {
  const AppFn f = app_fn(act);
  const ApplyExtra e{dm, dweight, dbias, float(1.0 / double(d.count())), dr};
  for_plane_ranges(d, [&](int64_t p0, int64_t p1) { f(d, k, e, x, dy, dx, p0, p1); });
}

}  // namespace cpu
}  // namespace adashift

// CPU BatchNorm (+ activation) kernels. Work is split by (n, c) planes across the thread pool;
// each plane is a contiguous run walked by one vectorised loop (compiled per ISA, see
// loops.h). Plane reductions add fixed chunks of kChunk elements (float vector lanes inside a
// chunk, chunks in double, in order); channel results add the planes in order of n in double.
// No result depends on the thread count.
//
// Statistics: per plane the corrected two-pass algorithm (mean, then sum of squared deviations
// from it, minus the deviations' sum squared over n, Chan-Golub-LeVeque), the plane still in
// cache for the second pass; planes combine per channel with Chan's parallel formula.
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

// sum (x - m), sum (x - m)^2
AS_VECTORIZE void v_dev(const float* __restrict x, float m, int64_t n, float* out) {
  float a = 0.0f, b = 0.0f;
#pragma omp simd reduction(+ : a, b)
  for (int64_t i = 0; i < n; ++i) {
    const float d = x[i] - m;
    a += d;
    b += d * d;
  }
  out[0] = a;
  out[1] = b;
}

template <int ACT>
__attribute__((always_inline)) inline void fwd_body(const float* __restrict x, float mean,
                                                    float scale, float bias, float s,
                                                    float* __restrict y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = math::bn_act<ACT>(math::bn_norm(x[i], mean, scale, bias), s);
}

// out: sum dz_d, sum dz_d * (x - mean), sum ds-term
template <int ACT>
__attribute__((always_inline)) inline void red_body(const float* __restrict x,
                                                    const float* __restrict dy, float mean,
                                                    float scale, float bias, float s, int64_t n,
                                                    float* out) {
  float a = 0.0f, b = 0.0f, c = 0.0f;
#pragma omp simd reduction(+ : a, b, c)
  for (int64_t i = 0; i < n; ++i) {
    const float z = math::bn_norm(x[i], mean, scale, bias);
    const math::GateGrad g = math::bn_act_grad<ACT>(z, s, dy[i]);
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

template <int ACT>
__attribute__((always_inline)) inline void app_body(const float* __restrict x,
                                                    const float* __restrict dy, ApplyK k,
                                                    float* __restrict dx, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float z = math::bn_norm(x[i], k.mean, k.scale, k.bias);
    const float dz = math::bn_act_grad<ACT>(z, k.s, dy[i]).dx + k.add;
    dx[i] = math::bn_input_grad(dz, x[i], k.mean, k.invstd, k.scale, k.k1, k.k2);
  }
}

#define AS_BN_LOOPS(NAME, ACT)                                                                 \
  AS_VECTORIZE void fwd_##NAME(const float* x, float mean, float scale, float bias, float s,    \
                               float* y, int64_t n) {                                          \
    fwd_body<ACT>(x, mean, scale, bias, s, y, n);                                              \
  }                                                                                            \
  AS_VECTORIZE void red_##NAME(const float* x, const float* dy, float mean, float scale,        \
                               float bias, float s, int64_t n, float* out) {                   \
    red_body<ACT>(x, dy, mean, scale, bias, s, n, out);                                        \
  }                                                                                            \
  AS_VECTORIZE void app_##NAME(const float* x, const float* dy, ApplyK k, float* dx, int64_t n) { \
    app_body<ACT>(x, dy, k, dx, n);                                                            \
  }
AS_BN_LOOPS(none, kNone)
AS_BN_LOOPS(relu, kReLU)
AS_BN_LOOPS(silu, kSiLU)
AS_BN_LOOPS(gate, kGate)
#undef AS_BN_LOOPS

using FwdFn = void (*)(const float*, float, float, float, float, float*, int64_t);
using RedFn = void (*)(const float*, const float*, float, float, float, float, int64_t, float*);
using AppFn = void (*)(const float*, const float*, ApplyK, float*, int64_t);

FwdFn fwd_fn(NormAct a) {
  switch (a) {
    case NormAct::ReLU: return fwd_relu;
    case NormAct::SiLU: return fwd_silu;
    case NormAct::Gate: return fwd_gate;
    default: return fwd_none;
  }
}
RedFn red_fn(NormAct a) {
  switch (a) {
    case NormAct::ReLU: return red_relu;
    case NormAct::SiLU: return red_silu;
    case NormAct::Gate: return red_gate;
    default: return red_none;
  }
}
AppFn app_fn(NormAct a) {
  switch (a) {
    case NormAct::ReLU: return app_relu;
    case NormAct::SiLU: return app_silu;
    case NormAct::Gate: return app_gate;
    default: return app_none;
  }
}

// fn(plane index p = n * C + c, c, offset of the plane) for every plane, split across the pool.
template <typename PlaneFn>
void for_each_plane(const BnShape& d, PlaneFn fn) {
  const int64_t hw = d.HW;
  parallel_for(d.planes(), std::max<int64_t>(1, (int64_t(1) << 14) / std::max<int64_t>(hw, 1)),
               [&](int64_t p0, int64_t p1) {
                 for (int64_t p = p0; p < p1; ++p) fn(p, p % d.C, p * hw);
               });
}

// Sum over a plane: chunk sums (float lanes) added in double, in order.
double plane_sum(const float* x, int64_t n) {
  double acc = 0.0;
  for (int64_t i = 0; i < n; i += kChunk) acc += v_sum(x + i, std::min(kChunk, n - i));
  return acc;
}

// Per-plane mean and M2 (corrected two-pass).
void plane_moments(const float* x, int64_t n, double* mean, double* m2) {
  const double mu = plane_sum(x, n) / double(n);
  const float mf = float(mu);
  double s1 = 0.0, s2 = 0.0;
  for (int64_t i = 0; i < n; i += kChunk) {
    float o[2];
    v_dev(x + i, mf, std::min(kChunk, n - i), o);
    s1 += o[0];
    s2 += o[1];
  }
  *mean = double(mf) + s1 / double(n);
  *m2 = std::max(0.0, s2 - s1 * s1 / double(n));
}

void write_planes(const BnShape& d, const std::vector<double>& pmean, const float* mean,
                  const float* invstd, const float* weight, const float* bias, float* plane_xhat,
                  float* pooled) {
  for (int64_t p = 0; p < d.planes(); ++p) {
    const int64_t c = p % d.C;
    const double xh = (pmean[size_t(p)] - double(mean[c])) * double(invstd[c]);
    plane_xhat[p] = float(xh);
    pooled[p] = float(xh * double(weight[c]) + double(bias[c]));
  }
}

}  // namespace

void batchnorm_stats_train(const BnShape& d, const float* x, const float* weight,
                           const float* bias, float momentum, float eps, float* running_mean,
                           float* running_var, float* mean, float* invstd, float* plane_xhat,
                           float* pooled) {
  const int64_t P = d.planes();
  std::vector<double> pm(static_cast<size_t>(P)), pm2(static_cast<size_t>(P));
  for_each_plane(d, [&](int64_t p, int64_t, int64_t off) {
    plane_moments(x + off, d.HW, &pm[size_t(p)], &pm2[size_t(p)]);
  });
  const double nb = double(d.HW);
  for (int64_t c = 0; c < d.C; ++c) {
    // Chan et al.: merge the planes of channel c in order of n.
    double cnt = 0.0, mu = 0.0, m2 = 0.0;
    for (int64_t n = 0; n < d.N; ++n) {
      const size_t p = size_t(n * d.C + c);
      const double tot = cnt + nb, delta = pm[p] - mu;
      mu += delta * (nb / tot);
      m2 += pm2[p] + delta * delta * (cnt * nb / tot);
      cnt = tot;
    }
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
  if (plane_xhat) write_planes(d, pm, mean, invstd, weight, bias, plane_xhat, pooled);
}

void batchnorm_stats_eval(const BnShape& d, const float* x, const float* weight,
                          const float* bias, const float* running_mean, const float* running_var,
                          float eps, float* mean, float* invstd, float* plane_xhat, float* pooled) {
  for (int64_t c = 0; c < d.C; ++c) {
    mean[c] = running_mean[c];
    invstd[c] = float(1.0 / std::sqrt(double(running_var[c]) + double(eps)));
  }
  if (!plane_xhat || d.planes() == 0) return;
  std::vector<double> pm(static_cast<size_t>(d.planes()));
  for_each_plane(d, [&](int64_t p, int64_t, int64_t off) {
    pm[size_t(p)] = plane_sum(x + off, d.HW) / double(d.HW);
  });
  write_planes(d, pm, mean, invstd, weight, bias, plane_xhat, pooled);
}

void batchnorm_act_forward(const BnShape& d, NormAct act, const BnApply& k, const float* x,
                           float* y) {
  const FwdFn f = fwd_fn(act);
  for_each_plane(d, [&](int64_t p, int64_t c, int64_t off) {
    const float scale = k.invstd[c] * k.weight[c];
    f(x + off, k.mean[c], scale, k.bias[c], k.s ? k.s[p] : 0.0f, y + off, d.HW);
  });
}

void batchnorm_act_backward_reduce(const BnShape& d, NormAct act, const BnApply& k,
                                   const float* x, const float* dy, float* sum_dz,
                                   float* sum_dz_xhat, float* ds) {
  const RedFn f = red_fn(act);
  for_each_plane(d, [&](int64_t p, int64_t c, int64_t off) {
    const float scale = k.invstd[c] * k.weight[c];
    const float sv = k.s ? k.s[p] : 0.0f;
    double a = 0.0, b = 0.0, e = 0.0;
    for (int64_t i = 0; i < d.HW; i += kChunk) {
      float o[3];
      f(x + off + i, dy + off + i, k.mean[c], scale, k.bias[c], sv, std::min(kChunk, d.HW - i), o);
      a += o[0];
      b += o[1];
      e += o[2];
    }
    sum_dz[p] = float(a);
    sum_dz_xhat[p] = float(b * double(k.invstd[c]));
    if (ds) ds[p] = float(e);
  });
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
                                  const float* dweight, const float* dbias, float* dx) {
  const AppFn f = app_fn(act);
  const float inv_count = float(1.0 / double(d.count()));
  for_each_plane(d, [&](int64_t p, int64_t c, int64_t off) {
    ApplyK a;
    a.mean = k.mean[c];
    a.invstd = k.invstd[c];
    a.scale = k.invstd[c] * k.weight[c];
    a.bias = k.bias[c];
    a.s = k.s ? k.s[p] : 0.0f;
    a.add = dm ? dm[p] / float(d.HW) : 0.0f;
    a.k1 = dbias ? dbias[c] * inv_count : 0.0f;
    a.k2 = dweight ? dweight[c] * inv_count : 0.0f;
    f(x + off, dy + off, a, dx + off, d.HW);
  });
}

}  // namespace cpu
}  // namespace adashift

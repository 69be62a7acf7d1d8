// Scalar math shared by the CPU and CUDA backends. Every kernel's per-element formula lives
// here, so the CPU tests exercise the exact expressions the GPU runs.
#pragma once
#include <cmath>
#include <cstdint>
#include "common.h"

namespace adashift {
namespace math {

// ---- exp and erf that vectorise -------------------------------------------------------------
// libm's expf/erff are scalar calls the compiler cannot vectorise without -ffast-math. These
// branch-free versions (bit tricks + polynomials) vectorise on the CPU and run as plain
// arithmetic on the GPU, so both backends evaluate the same expression.
AS_HD float bits_to_float(int32_t i) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(i);
#else
  float f;
  __builtin_memcpy(&f, &i, sizeof f);
  return f;
#endif
}
AS_HD int32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_int(f);
#else
  int32_t i;
  __builtin_memcpy(&i, &f, sizeof i);
  return i;
#endif
}

// The arg-max rule of the cross-entropy's accuracy count, the same on every backend and for any
// order of visiting the elements: does value v at index i replace the current maximum mx at
// index am? NaN counts as the largest value (as torch.argmax), ties go to the smaller index.
AS_HD bool argmax_takes(float v, int64_t i, float mx, int64_t am) {
  const bool v_nan = v != v, mx_nan = mx != mx;
  if (v_nan || mx_nan) return v_nan && (!mx_nan || i < am);
  return v > mx || (v == mx && i < am);
}

// e^x with relative error below 3e-7 on [-87, 88]; +inf from 88.38 (2^128 e^r: the largest float
// is e^88.72, so e^x between the two comes out inf), 0 below about -87.7 (denormals between), NaN
// for NaN. So sigmoid(x) = 1 / (1 + e^-x) is 0 below -88.38 (in float64 it is below 4e-39 there;
// an e^88 cap made it 6e-39 for every x below -88, and silu(-1e38) -0.6).
// The argument is clamped to |x| <= 89 by an integer min on its magnitude bits, not by float
// compare-and-selects: GCC threads a float select's constant through the rest of the formula
// and splits every caller's loop into saturated and unsaturated lanes (masked arithmetic, and
// two divisions per vector in the sigmoid), 25% slower in the gate's gradient loop. NaN, whose
// magnitude bits exceed 88's, is restored by the final select.
AS_HD float vexp(float x) {
  const int32_t bits = float_to_bits(x);
  const int32_t kMaxMagnitude = 0x42B20000;  // the bits of 89.0f
  int32_t magnitude = bits & 0x7FFFFFFF;
  magnitude = magnitude < kMaxMagnitude ? magnitude : kMaxMagnitude;
  const float a = bits_to_float(magnitude | (bits & INT32_MIN));
  // n = round(a / ln 2) by the 1.5 * 2^23 trick (no float->int conversion needed)
  const float shifter = 12582912.0f;
  float t = a * 1.44269504088896341f + shifter;
  int32_t n = float_to_bits(t) - float_to_bits(shifter);
  float fn = t - shifter;
  // r = a - n ln 2 in two parts (Cody-Waite), |r| <= ln2/2
  float r = a - fn * 0.693145751953125f;
  r = r - fn * 1.428606765330187045e-06f;
  // minimax-style polynomial for e^r on [-ln2/2, ln2/2] (Taylor to degree 6: error < 1.3e-7)
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  // n + 127 is in [-1, 255]: at most 0 gives 0 (e^a below the smallest normal float), 255 +inf
  // (integer max: see above)
  int32_t biased = n + 127;
  biased = biased > 0 ? biased : 0;
  const float e = p * bits_to_float(biased << 23);
  return x != x ? x : e;
}

// erf(x), Abramowitz & Stegun 7.1.26 with the exp above: absolute error below 2e-7.
AS_HD float verf(float x) {
  float a = fabsf(x);
  float t = 1.0f / (1.0f + 0.3275911f * a);
  float poly = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
  float y = 1.0f - poly * vexp(-a * a);
  return x < 0.0f ? -y : y;
}

// tanh(x) = 1 - 2 / (e^{2x} + 1): exact at the saturated ends, absolute error ~1e-7 near 0.
AS_HD float vtanh(float x) { return 1.0f - 2.0f / (vexp(2.0f * x) + 1.0f); }

AS_HD float sigmoid(float x) { return 1.0f / (1.0f + vexp(-x)); }

// --- baseline activations ------------------------------------------------------------------
// PyTorch's: NaN passes (forward and gradient), -0 stays -0; the gradient is 0 at x <= 0.
AS_HD float relu(float x) { return x < 0.0f ? 0.0f : x; }
AS_HD float relu_grad(float x, float dy) { return x <= 0.0f ? 0.0f : dy; }

AS_HD float silu(float x) { return x * sigmoid(x); }
AS_HD float silu_grad(float x, float dy) {
  float g = sigmoid(x);
  return dy * (g + x * g * (1.0f - g));
}

constexpr float kInvSqrt2 = 0.70710678118654752f;
constexpr float kInvSqrt2Pi = 0.39894228040143268f;
constexpr float kSqrt2OverPi = 0.79788456080286536f;
constexpr float kGeluTanhC = 0.044715f;

// GELU, exact form: x * Phi(x)
AS_HD float gelu(float x) { return 0.5f * x * (1.0f + verf(x * kInvSqrt2)); }
AS_HD float gelu_grad(float x, float dy) {
  float cdf = 0.5f * (1.0f + verf(x * kInvSqrt2));
  float pdf = kInvSqrt2Pi * vexp(-0.5f * x * x);
  return dy * (cdf + x * pdf);
}
// GELU, tanh approximation (PyTorch approximate='tanh')
AS_HD float gelu_tanh(float x) {
  float u = kSqrt2OverPi * (x + kGeluTanhC * x * x * x);
  return 0.5f * x * (1.0f + vtanh(u));
}
AS_HD float gelu_tanh_grad(float x, float dy) {
  float u = kSqrt2OverPi * (x + kGeluTanhC * x * x * x);
  float t = vtanh(u);
  float du = kSqrt2OverPi * (1.0f + 3.0f * kGeluTanhC * x * x);
  return dy * (0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du);
}

// --- the AdaShift gate: y = x * sigmoid(x + s) -----------------------------------------------
AS_HD float gate(float x, float s) { return x * sigmoid(x + s); }
// With g = sigmoid(x + s): dy/dx = g + x g (1 - g), dy/ds = x g (1 - g). One sigmoid for both.
struct GateGrad { float dx; float ds; };
// From the gate value g = sigmoid(x + s) (computed once, reused by a later pass).
AS_HD GateGrad gate_grad_from_g(float x, float g, float dy) {
  float t = dy * x * g * (1.0f - g);
  return GateGrad{dy * g + t, t};
}
AS_HD GateGrad gate_grad(float x, float s, float dy) { return gate_grad_from_g(x, sigmoid(x + s), dy); }

// --- region grid (AdaShift-MA cells; B is the 1 x 1 grid) ---------------------------------------
// Pixel row h of H belongs to cell row floor(h * P / H) (P <= H).
AS_HD int cell_of(int h, int H, int P) { return int((int64_t(h) * P) / H); }
// First pixel row of cell r: the smallest h with floor(h*P/H) >= r, i.e. ceil(r*H/P).
AS_HD int cell_begin(int r, int H, int P) { return int((int64_t(r) * H + P - 1) / P); }

// --- counter-based RNG (Philox4x32-10): the same stream on every device ----------------------
struct Philox4 { uint32_t v[4]; };
AS_HD uint32_t mulhilo(uint32_t a, uint32_t b, uint32_t* hi) {
  uint64_t p = uint64_t(a) * uint64_t(b);
  *hi = uint32_t(p >> 32);
  return uint32_t(p);
}
AS_HD Philox4 philox(uint64_t seed, uint64_t counter) {
  uint32_t c0 = uint32_t(counter), c1 = uint32_t(counter >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
  for (int r = 0; r < 10; ++r) {
    uint32_t hi0, hi1;
    uint32_t lo0 = mulhilo(0xD2511F53u, c0, &hi0);
    uint32_t lo1 = mulhilo(0xCD9E8D57u, c2, &hi1);
    uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0; c1 = lo1; c2 = n2; c3 = lo0;
    k0 += 0x9E3779B9u; k1 += 0xBB67AE85u;
  }
  return Philox4{{c0, c1, c2, c3}};
}
// Uniform in (0, 1]: 24 random bits, never 0 so log() is safe.
AS_HD float u32_to_unit(uint32_t x) { return (float(x >> 8) + 1.0f) * (1.0f / 16777216.0f); }
// Element i of a uniform [lo, hi) stream / standard normal stream (Box-Muller on one Philox
// block: elements 4k..4k+3 share counter k).
AS_HD float rand_uniform(uint64_t seed, uint64_t offset, int64_t i, float lo, float hi) {
  uint64_t idx = offset + uint64_t(i);
  Philox4 r = philox(seed, idx >> 2);
  float u = u32_to_unit(r.v[idx & 3]);
  float v = lo + (hi - lo) * (1.0f - u);
  // (1 - u) < 1, but the product can still round up to hi: keep the interval half-open.
  return v < hi ? v : nextafterf(hi, lo);
}
AS_HD float rand_normal(uint64_t seed, uint64_t offset, int64_t i, float mean, float std) {
  uint64_t idx = offset + uint64_t(i);
  Philox4 r = philox(seed, idx >> 2);
  int pair = int(idx & 2);
  float u1 = u32_to_unit(r.v[pair]), u2 = u32_to_unit(r.v[pair + 1]);
  float rad = sqrtf(-2.0f * logf(u1));
  float ang = 6.283185307179586f * u2;
  float z = (idx & 1) ? rad * sinf(ang) : rad * cosf(ang);
  return mean + std * z;
}

}  // namespace math
}  // namespace adashift

// ==== BatchNorm (+ fused activation), pooling windows, cross-entropy ==========================
// (appended by the norm/pool/loss family: native/core/{ops,cpu,cuda}/{norm,pool,loss}.*)
namespace adashift {
namespace math {

// Activation fused after BatchNorm; the values match NormAct in ops/norm.h.
namespace bnact {
constexpr int kNone = 0, kReLU = 1, kSiLU = 2, kGate = 3, kGELU = 4, kGELUTanh = 5;
}

// BatchNorm's output z = (x - mean) * scale + bias, scale = invstd * weight (per channel).
AS_HD float bn_norm(float x, float mean, float scale, float bias) { return (x - mean) * scale + bias; }

// The activation applied to z (s: the AdaShift shift of the plane; unused otherwise).
template <int ACT>
AS_HD float bn_act(float z, float s) {
  if (ACT == bnact::kReLU) return relu(z);
  if (ACT == bnact::kSiLU) return silu(z);
  if (ACT == bnact::kGate) return gate(z, s);
  if (ACT == bnact::kGELU) return gelu(z);
  if (ACT == bnact::kGELUTanh) return gelu_tanh(z);
  return z;
}

// The activation's direct gradient dz_d = dy * act'(z), and (gate only) the shift term
// dy * z g (1 - g) that sums to ds.
template <int ACT>
AS_HD GateGrad bn_act_grad(float z, float s, float dy) {
  if (ACT == bnact::kReLU) return GateGrad{relu_grad(z, dy), 0.0f};
  if (ACT == bnact::kSiLU) return GateGrad{silu_grad(z, dy), 0.0f};
  if (ACT == bnact::kGate) return gate_grad(z, s, dy);
  if (ACT == bnact::kGELU) return GateGrad{gelu_grad(z, dy), 0.0f};
  if (ACT == bnact::kGELUTanh) return GateGrad{gelu_tanh_grad(z, dy), 0.0f};
  return GateGrad{dy, 0.0f};
}

// BatchNorm's input gradient from the full gradient dz at its output. Training:
//   dx = scale * (dz - k1 - xhat * k2), xhat = (x - mean) * invstd,
//   k1 = sum(dz) / M, k2 = sum(dz * xhat) / M over the channel's M = N*H*W elements.
// Eval (running statistics are constants): k1 = k2 = 0, dx = scale * dz.
AS_HD float bn_input_grad(float dz, float x, float mean, float invstd, float scale, float k1,
                          float k2) {
  return scale * (dz - k1 - (x - mean) * invstd * k2);
}

// One pooling window (PyTorch's max_pool2d / avg_pool2d, ceil_mode=False): output (oh, ow)
// covers input rows [h0, h1) and columns [w0, w1), already clipped to the input. divisor:
// avg_pool2d's count: the window clipped to the padded input (count_include_pad) or to the
// input itself.
struct PoolWindow { int h0, h1, w0, w1, divisor; };
AS_HD PoolWindow pool_window(int oh, int ow, int H, int W, int kh, int kw, int sh, int sw, int ph,
                             int pw, bool count_include_pad) {
  int h0 = oh * sh - ph, w0 = ow * sw - pw;
  int h1 = h0 + kh < H + ph ? h0 + kh : H + ph;
  int w1 = w0 + kw < W + pw ? w0 + kw : W + pw;
  const int padded = (h1 - h0) * (w1 - w0);
  h0 = h0 > 0 ? h0 : 0;
  w0 = w0 > 0 ? w0 : 0;
  h1 = h1 < H ? h1 : H;
  w1 = w1 < W ? w1 : W;
  return PoolWindow{h0, h1, w0, w1, count_include_pad ? padded : (h1 - h0) * (w1 - w0)};
}
// The outputs whose windows contain input row h (the same rule per column): [o0, o1).
struct OutRange { int o0, o1; };
AS_HD OutRange pool_outputs_of(int h, int k, int s, int p, int out) {
  // window o covers [o*s - p, o*s - p + k): contains h iff h + p - k < o*s <= h + p
  const int hi = h + p;                         // >= 0
  int o0 = hi - k + 1 <= 0 ? 0 : (hi - k + 1 + s - 1) / s;
  int o1 = hi / s + 1;
  o1 = o1 < out ? o1 : out;
  return OutRange{o0, o1 > o0 ? o1 : o0};
}
// max_pool2d's comparison: a NaN always wins (propagates), ties keep the first maximum.
AS_HD bool pool_takes(float v, float best) { return v > best || v != v; }

// One row's cross-entropy with label smoothing eps over K classes, from the row's max mx:
// log(sum e^(x - mx)) + sum_k t_k (mx - x_k), t = (1 - eps) [k == label] + eps / K, written with
// the label's gap (mx - x_label) and the gaps' sum sd: each term a difference of logits taken
// before any large value is added, so logits of 1e30 keep the loss's O(1) digits. Without
// smoothing the gaps' sum plays no part (an infinite gap times 0 would make NaN).
AS_HD double ce_row_loss(double log_se, double label_gap, double sd, double keep, double eps, int64_t K) {
  const double smooth = eps > 0.0 ? eps / double(K) * sd : 0.0;
  return log_se + keep * label_gap + smooth;
}

// Cross-entropy gradient of one logit: (softmax - target) * scale, with softmax =
// e^((x - mx) - log_se) from the row's max mx and log_se = log sum e^(x - mx), and target =
// (1 - eps) [k == label] + eps / K; scale = g / N. The gap x - mx is taken first: e^(x - lse)
// with lse = mx + log_se rounded to float lost |mx| * 2^-24 of the exponent (a relative error
// of 2.6e-4 in the gradient at logits of 1e4).
AS_HD float ce_grad(float x, float mx, float log_se, float target, float scale) {
  return (vexp((x - mx) - log_se) - target) * scale;
}

}  // namespace math
}  // namespace adashift

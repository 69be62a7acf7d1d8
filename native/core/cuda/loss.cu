// CUDA cross-entropy. Forward: one warp per row (rows in grid-stride order over the global warp
// index): max and first argmax by shuffles, then the exponentials and the logit sum; lane 0
// keeps its warp's running loss and correct count in double, in row order; warps are added in
// warp order per block. With one block (N*K up to 2^20: every classification batch) that is the
// whole fused kernel; larger inputs add a one-thread final pass over the block partials in
// block order. Backward: one thread per logit (math::ce_grad). No atomics: deterministic.
#include "../ops/loss.h"
#include "common.cuh"

namespace adashift {
namespace cuda {

using namespace detail;

namespace {

constexpr int kBlock = 256;
constexpr int kWarps = kBlock / 32;

__device__ __forceinline__ bool valid_label(float y, int64_t K) {
  return y >= 0.0f && y < float(K) && y == floorf(y);
}

__global__ void __launch_bounds__(kBlock)
k_ce_fwd(const float* __restrict__ logits, const float* __restrict__ labels, int64_t N, int64_t K,
         float smoothing, float* __restrict__ lse, double* __restrict__ part,
         float* __restrict__ loss, float* __restrict__ correct) {
  __shared__ double sh_loss[kWarps], sh_ok[kWarps];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t gw = int64_t(blockIdx.x) * kWarps + warp, nw = int64_t(gridDim.x) * kWarps;
  const double eps = smoothing, keep = 1.0 - eps;
  double wloss = 0.0, wok = 0.0;
  for (int64_t i = gw; i < N; i += nw) {
    const float* x = logits + i * K;
    float mx = -INFINITY;
    int64_t am = K;  // sentinel: larger than any index
    for (int64_t k = lane; k < K; k += 32) {
      const float v = x[k];
      if (am == K || math::argmax_takes(v, k, mx, am)) {  // the lane's first element, then larger ones
        mx = v;
        am = k;
      }
    }
    // the lanes' maxima merged by the same rule (a lane without elements holds -inf at the
    // sentinel index K, which any element replaces)
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, mx, o);
      const long long oi = __shfl_xor_sync(0xffffffffu, (long long)am, o);
      if (math::argmax_takes(ov, oi, mx, am)) {
        mx = ov;
        am = oi;
      }
    }
    float se = 0.0f, sd = 0.0f;
    for (int64_t k = lane; k < K; k += 32) {
      const float v = x[k];
      se += math::vexp(v - mx);
      sd += mx - v;
    }
    se = warp_sum(se);
    sd = warp_sum(sd);
    if (lane == 0) {
      const double log_se = log(double(se));
      lse[2 * i] = mx;
      lse[2 * i + 1] = float(log_se);
      const float y = labels[i];
      if (valid_label(y, K)) {
        const int64_t yi = int64_t(y);
        wloss += math::ce_row_loss(log_se, double(mx) - double(x[yi]), double(sd), keep, eps, K);
        wok += am == yi ? 1.0 : 0.0;
      } else {
        wloss += nan("");
      }
    }
  }
  if (lane == 0) {
    sh_loss[warp] = wloss;
    sh_ok[warp] = wok;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double tl = 0.0, tk = 0.0;
    for (int w = 0; w < kWarps; ++w) {
      tl += sh_loss[w];
      tk += sh_ok[w];
    }
    if (gridDim.x == 1) {
      loss[0] = float(tl / double(N));
      correct[0] = float(tk);
    } else {
      part[2 * blockIdx.x] = tl;
      part[2 * blockIdx.x + 1] = tk;
    }
  }
}

__global__ void k_ce_final(const double* __restrict__ part, int blocks, int64_t N,
                           float* __restrict__ loss, float* __restrict__ correct) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  double tl = 0.0, tk = 0.0;
  for (int b = 0; b < blocks; ++b) {
    tl += part[2 * b];
    tk += part[2 * b + 1];
  }
  loss[0] = float(tl / double(N));
  correct[0] = float(tk);
}

__global__ void k_ce_bwd(const float* __restrict__ logits, const float* __restrict__ labels,
                         const float* __restrict__ lse, const float* __restrict__ grad, int64_t N,
                         int64_t K, float smoothing, float* __restrict__ dlogits) {
  const float scale = grad[0] / float(N);
  const float off = smoothing / float(K), on = 1.0f - smoothing + off;
  const int64_t total = N * K;
  for (int64_t j = global_thread(); j < total; j += global_stride()) {
    const int64_t i = j / K, k = j % K;
    const float y = labels[i];
    dlogits[j] = valid_label(y, K) ? math::ce_grad(logits[j], lse[2 * i], lse[2 * i + 1], k == int64_t(y) ? on : off, scale)
                                   : nanf("");
  }
}

}  // namespace

void cross_entropy_forward(cudaStream_t st, const float* logits, const float* labels, int64_t N,
                           int64_t K, float smoothing, float* loss, float* lse, float* correct) {
  int64_t blocks = 1;
  if (N * K > (int64_t(1) << 20)) {
    blocks = (N + kWarps - 1) / kWarps;
    const int64_t cap = int64_t(cuda_current_sm_count()) * 4;
    if (blocks > cap) blocks = cap;
  }
  if (blocks == 1) {
    k_ce_fwd<<<1, kBlock, 0, st>>>(logits, labels, N, K, smoothing, lse, nullptr, loss, correct);
    CUDA_CHECK_LAUNCH();
    return;
  }
  Scratch part(size_t(2 * blocks) * sizeof(double));
  k_ce_fwd<<<unsigned(blocks), kBlock, 0, st>>>(logits, labels, N, K, smoothing, lse,
                                                part.as<double>(), loss, correct);
  CUDA_CHECK_LAUNCH();
  k_ce_final<<<1, 32, 0, st>>>(part.as<double>(), int(blocks), N, loss, correct);
  CUDA_CHECK_LAUNCH();
}

void cross_entropy_backward(cudaStream_t st, const float* logits, const float* labels,
                            const float* lse, const float* grad, int64_t N, int64_t K,
                            float smoothing, float* dlogits) {
  const int64_t n = N * K;
  if (n <= 0) return;
  k_ce_bwd<<<grid_for(n, 256), 256, 0, st>>>(logits, labels, lse, grad, N, K, smoothing, dlogits);
  CUDA_CHECK_LAUNCH();
}

}  // namespace cuda
}  // namespace adashift

#include "loss.h"
#include <cmath>
#include "../dispatch.h"

namespace adashift {

namespace {

struct CeDims { int64_t N, K; };

CeDims ce_check(const Tensor& logits, const Tensor& labels, float smoothing, const char* what) {
  AS_CHECK(logits.dim() == 2, Shape, what, ": logits must have shape [N, K], got ",
           shape_str(logits.shape()));
  const CeDims d{logits.size(0), logits.size(1)};
  AS_CHECK(d.N >= 1 && d.K >= 1, Shape, what, ": logits must have at least one row and one class, got ",
           shape_str(logits.shape()));
  AS_CHECK(d.K <= (int64_t(1) << 24), Shape, what,
           ": at most 2^24 classes (labels are stored as float32), got ", d.K);
  check_same_device(logits, labels, what);
  AS_CHECK(labels.dim() == 1 && labels.size(0) == d.N, Shape, what,
           ": labels must have shape [", d.N, "] (one class index per row of the logits), got ",
           shape_str(labels.shape()));
  AS_CHECK(std::isfinite(smoothing) && smoothing >= 0.0f && smoothing <= 1.0f, Arg, what,
           ": labelSmoothing must be in [0, 1], got ", smoothing);
  if (labels.device().is_cpu()) {
    const float* y = labels.data();
    for (int64_t i = 0; i < d.N; ++i)
      AS_CHECK(y[i] >= 0.0f && y[i] < float(d.K) && y[i] == std::floor(y[i]), Arg, what,
               ": labels must be integers in [0, ", d.K, "), got ", y[i], " at index ", i);
  }
  return d;
}

}  // namespace

CrossEntropyOut cross_entropy_forward(const Tensor& logits, const Tensor& labels,
                                      float smoothing) {
  const CeDims d = ce_check(logits, labels, smoothing, "crossEntropy");
  CrossEntropyOut o;
  o.loss = Tensor({1}, logits.device());
  o.lse = Tensor({d.N, 2}, logits.device());
  o.correct = Tensor({1}, logits.device());
  AS_DISPATCH(logits.device(), cross_entropy_forward, logits.data(), labels.data(), d.N, d.K,
              smoothing, o.loss.data(), o.lse.data(), o.correct.data());
  return o;
}

Tensor cross_entropy_backward(const Tensor& logits, const Tensor& labels, const Tensor& lse,
                              const Tensor& grad, float smoothing) {
  const char* what = "crossEntropy backward";
  const CeDims d = ce_check(logits, labels, smoothing, what);
  check_same_device(logits, lse, what);
  check_same_device(logits, grad, what);
  check_shape(lse, {d.N, 2}, "crossEntropy backward: saved row max and log-sum-exp");
  AS_CHECK(grad.numel() == 1, Shape, what, ": the loss gradient must have one element, got ",
           shape_str(grad.shape()));
  Tensor dl(logits.shape(), logits.device());
  AS_DISPATCH(logits.device(), cross_entropy_backward, logits.data(), labels.data(), lse.data(),
              grad.data(), d.N, d.K, smoothing, dl.data());
  return dl;
}

}  // namespace adashift

// Random AdaShift-MA parameters for the native tests (core_tests, the CUDA parity checks).
#pragma once
#include "core/ops/adashift.h"

// LayerNorm weights around 1, biases and the 'linear' rect's weight around 0 (std 0.3), drawn
// by the caller's generator normal(shape, mean, std); eps 1e-6.
template <typename Normal>
adashift::AdaShiftMAParams random_ma_params(int64_t C, int64_t grid, int64_t heads, bool lin,
                                            Normal normal) {
  adashift::AdaShiftMAParams p;
  p.grid = grid;
  p.heads = heads;
  p.eps = 1e-6f;
  p.q_w = normal({C}, 1.0f, 0.3f); p.q_b = normal({C}, 0.0f, 0.3f);
  p.k_w = normal({C}, 1.0f, 0.3f); p.k_b = normal({C}, 0.0f, 0.3f);
  p.v_w = normal({C}, 1.0f, 0.3f); p.v_b = normal({C}, 0.0f, 0.3f);
  if (lin) p.lin_w = normal({C, C}, 0.0f, 0.3f);
  p.rect_w = normal({C}, 1.0f, 0.3f); p.rect_b = normal({C}, 0.0f, 0.3f);
  return p;
}

#include "dense.h"
#include <cmath>
#include "../dispatch.h"

namespace adashift {

static int64_t rows_of(const Tensor& x) { return x.dim() == 0 ? 1 : x.numel() / std::max<int64_t>(x.size(-1), 1); }

LayerNormOut layernorm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias,
                               float eps) {
  AS_CHECK(x.dim() >= 1 && x.size(-1) >= 1, Shape, "layernorm: input needs a non-empty last axis, got ",
           shape_str(x.shape()));
  int64_t C = x.size(-1), rows = rows_of(x);
  check_same_device(x, weight, "layernorm weight");
  check_same_device(x, bias, "layernorm bias");
  check_shape(weight, {C}, "layernorm weight");
  check_shape(bias, {C}, "layernorm bias");
  AS_CHECK(std::isfinite(eps) && eps > 0, Arg, "layernorm: eps must be a positive number, got ", eps);
  LayerNormOut o{Tensor(x.shape(), x.device()), Tensor({rows}, x.device()), Tensor({rows}, x.device())};
  if (rows > 0)
    AS_DISPATCH(x.device(), layernorm_forward, x.data(), weight.data(), bias.data(), eps, rows, C,
                o.y.data(), o.mean.data(), o.rstd.data());
  return o;
}

LayerNormGrad layernorm_backward(const Tensor& dy, const Tensor& x, const Tensor& mean,
                                 const Tensor& rstd, const Tensor& weight) {
  AS_CHECK(x.dim() >= 1, Shape, "layernorm backward: bad input shape");
  int64_t C = x.size(-1), rows = rows_of(x);
  check_same_device(x, dy, "layernorm backward");
  check_same_device(x, mean, "layernorm backward: saved mean");
  check_same_device(x, rstd, "layernorm backward: saved rstd");
  check_same_device(x, weight, "layernorm backward: weight");
  check_shape(dy, x.shape(), "layernorm backward: output gradient");
  check_shape(mean, {rows}, "layernorm backward: saved mean");
  check_shape(rstd, {rows}, "layernorm backward: saved rstd");
  check_shape(weight, {C}, "layernorm backward: weight");
  LayerNormGrad g{Tensor(x.shape(), x.device()), Tensor({C}, x.device()), Tensor({C}, x.device())};
  AS_DISPATCH(x.device(), layernorm_backward, dy.data(), x.data(), mean.data(), rstd.data(),
              weight.data(), rows, C, g.dx.data(), g.dweight.data(), g.dbias.data());
  return g;
}

Tensor softmax_forward(const Tensor& x) {
  AS_CHECK(x.dim() >= 1 && x.size(-1) >= 1, Shape, "softmax: input needs a non-empty last axis, got ",
           shape_str(x.shape()));
  Tensor y(x.shape(), x.device());
  if (y.numel() > 0) AS_DISPATCH(x.device(), softmax_forward, x.data(), rows_of(x), x.size(-1), y.data());
  return y;
}

Tensor softmax_backward(const Tensor& y, const Tensor& dy) {
  AS_CHECK(y.dim() >= 1 && y.size(-1) >= 1, Shape, "softmax backward: output needs a non-empty last axis, got ",
           shape_str(y.shape()));
  check_same_device(y, dy, "softmax backward");
  check_shape(dy, y.shape(), "softmax backward: output gradient");
  Tensor dx(y.shape(), y.device());
  if (dx.numel() > 0)
    AS_DISPATCH(y.device(), softmax_backward, y.data(), dy.data(), rows_of(y), y.size(-1), dx.data());
  return dx;
}

Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  check_same_device(a, b, "matmul");
  AS_CHECK((a.dim() == 2 || a.dim() == 3) && (b.dim() == 2 || b.dim() == 3), Shape,
           "matmul: operands must be rank 2 or 3, got ", shape_str(a.shape()), " and ",
           shape_str(b.shape()));
  int64_t M = trans_a ? a.size(-1) : a.size(-2);
  int64_t Ka = trans_a ? a.size(-2) : a.size(-1);
  int64_t Kb = trans_b ? b.size(-1) : b.size(-2);
  int64_t N = trans_b ? b.size(-2) : b.size(-1);
  AS_CHECK(Ka == Kb, Shape, "matmul: inner dimensions differ: ", shape_str(a.shape()),
           trans_a ? "^T" : "", " @ ", shape_str(b.shape()), trans_b ? "^T" : "");
  int64_t ba = a.dim() == 3 ? a.size(0) : 1, bb = b.dim() == 3 ? b.size(0) : 1;
  AS_CHECK(ba == bb || a.dim() == 2 || b.dim() == 2, Shape, "matmul: batch sizes differ: ",
           shape_str(a.shape()), " and ", shape_str(b.shape()));
  int64_t batch = std::max(ba, bb);
  bool batched = a.dim() == 3 || b.dim() == 3;
  Tensor c(batched ? std::vector<int64_t>{batch, M, N} : std::vector<int64_t>{M, N}, a.device());
  if (c.numel() == 0) return c;
  MatmulDims d{batch, M, N, Ka, a.dim() == 3 ? M * Ka : 0, b.dim() == 3 ? Ka * N : 0, M * N,
               trans_a, trans_b};
  AS_DISPATCH(a.device(), matmul, d, a.data(), b.data(), c.data());
  return c;
}

Tensor permute(const Tensor& x, const std::vector<int64_t>& perm) {
  int rank = int(x.dim());
  AS_CHECK(rank <= 6, Shape, "permute supports up to 6 axes, got ", rank);
  AS_CHECK(int(perm.size()) == rank, Arg, "permute: expected ", rank, " axes, got ", perm.size());
  std::vector<bool> seen(rank, false);
  int64_t strides[6];
  int64_t s = 1;
  for (int i = rank - 1; i >= 0; --i) { strides[i] = s; s *= x.size(i); }
  PermuteDims d{};
  d.rank = rank;
  std::vector<int64_t> shape(rank);
  for (int i = 0; i < rank; ++i) {
    int64_t p = perm[i];
    AS_CHECK(p >= 0 && p < rank && !seen[p], Arg, "permute: axes must be a permutation of 0..",
             rank - 1);
    seen[p] = true;
    shape[i] = x.size(p);
    d.out_shape[i] = shape[i];
    d.in_strides[i] = strides[p];
  }
  Tensor out(shape, x.device());
  if (out.numel() == 0) return out;
  // Canonical form: drop size-1 axes, then merge neighbours that stay neighbours in x
  // (in_stride[i] == in_stride[i+1] * size[i+1]). A pure reshape becomes one contiguous run.
  PermuteDims c{};
  for (int i = 0; i < rank; ++i) {
    if (d.out_shape[i] == 1) continue;
    if (c.rank > 0 && c.in_strides[c.rank - 1] == d.in_strides[i] * d.out_shape[i]) {
      c.out_shape[c.rank - 1] *= d.out_shape[i];
      c.in_strides[c.rank - 1] = d.in_strides[i];
    } else {
      c.out_shape[c.rank] = d.out_shape[i];
      c.in_strides[c.rank] = d.in_strides[i];
      ++c.rank;
    }
  }
  if (c.rank == 0) { c.rank = 1; c.out_shape[0] = 1; c.in_strides[0] = 1; }
  AS_DISPATCH(x.device(), permute, c, x.data(), out.data());
  return out;
}

}  // namespace adashift

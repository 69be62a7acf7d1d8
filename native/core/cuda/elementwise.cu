// CUDA element-wise kernels, fills, random fills, deterministic reductions and the baseline
// activations. Element-wise kernels are grid-stride loops; when every pointer is 16-byte
// aligned they move float4s and finish the last n % 4 elements one by one, otherwise they
// run a scalar loop. Reductions use per-block partial sums in a scratch buffer and a final
// pass (fixed order, no atomics), so results are bit-identical run to run.
#include "../ops/elementwise.h"
#include "common.cuh"

namespace adashift {
namespace cuda {

using namespace detail;

namespace {

constexpr int kBlock = 256;

// ---- kernels: element-wise maps -----------------------------------------------------------
// out[i] = op(i)
template <class Op, bool VEC>
__global__ void k_gen(Op op, float* out, int64_t n) {
  const int64_t t0 = global_thread(), stride = global_stride();
  int64_t tail = 0;
  if (VEC) {
    const int64_t n4 = n >> 2;
    for (int64_t i = t0; i < n4; i += stride) {
      const int64_t e = i << 2;
      st4(out, i, make_float4(op(e), op(e + 1), op(e + 2), op(e + 3)));
    }
    tail = n4 << 2;
  }
  for (int64_t i = tail + t0; i < n; i += stride) out[i] = op(i);
}

// out[i] = op(a[i]); out may alias a.
template <class Op, bool VEC>
__global__ void k_map1(Op op, const float* a, float* out, int64_t n) {
  const int64_t t0 = global_thread(), stride = global_stride();
  int64_t tail = 0;
  if (VEC) {
    const int64_t n4 = n >> 2;
    for (int64_t i = t0; i < n4; i += stride) {
      const float4 x = ld4(a, i);
      st4(out, i, make_float4(op(x.x), op(x.y), op(x.z), op(x.w)));
    }
    tail = n4 << 2;
  }
  for (int64_t i = tail + t0; i < n; i += stride) out[i] = op(a[i]);
}

// out[i] = op(a[i], b[i]); out may alias a or b.
template <class Op, bool VEC>
__global__ void k_map2(Op op, const float* a, const float* b, float* out, int64_t n) {
  const int64_t t0 = global_thread(), stride = global_stride();
  int64_t tail = 0;
  if (VEC) {
    const int64_t n4 = n >> 2;
    for (int64_t i = t0; i < n4; i += stride) {
      const float4 x = ld4(a, i), y = ld4(b, i);
      st4(out, i, make_float4(op(x.x, y.x), op(x.y, y.y), op(x.z, y.z), op(x.w, y.w)));
    }
    tail = n4 << 2;
  }
  for (int64_t i = tail + t0; i < n; i += stride) out[i] = op(a[i], b[i]);
}

// ---- per-element operations (all formulas from math.h) -------------------------------------
struct ConstOp {
  float v;
  __device__ float operator()(int64_t) const { return v; }
};
struct UniformOp {
  uint64_t seed, offset;
  float lo, hi;
  __device__ float operator()(int64_t i) const { return math::rand_uniform(seed, offset, i, lo, hi); }
};
struct NormalOp {
  uint64_t seed, offset;
  float mean, std;
  __device__ float operator()(int64_t i) const { return math::rand_normal(seed, offset, i, mean, std); }
};
struct AddOp { __device__ float operator()(float x, float y) const { return x + y; } };
struct SubOp { __device__ float operator()(float x, float y) const { return x - y; } };
struct MulOp { __device__ float operator()(float x, float y) const { return x * y; } };
struct DivOp { __device__ float operator()(float x, float y) const { return x / y; } };
struct AxpbyOp {
  float alpha, beta;
  __device__ float operator()(float x, float y) const { return alpha * x + beta * y; }
};
struct AxpbOp {
  float alpha, beta;
  __device__ float operator()(float x) const { return alpha * x + beta; }
};
struct ReluF { __device__ float operator()(float x) const { return math::relu(x); } };
struct GeluF { __device__ float operator()(float x) const { return math::gelu(x); } };
struct GeluTanhF { __device__ float operator()(float x) const { return math::gelu_tanh(x); } };
struct SiluF { __device__ float operator()(float x) const { return math::silu(x); } };
struct ReluB { __device__ float operator()(float x, float dy) const { return math::relu_grad(x, dy); } };
struct GeluB { __device__ float operator()(float x, float dy) const { return math::gelu_grad(x, dy); } };
struct GeluTanhB {
  __device__ float operator()(float x, float dy) const { return math::gelu_tanh_grad(x, dy); }
};
struct SiluB { __device__ float operator()(float x, float dy) const { return math::silu_grad(x, dy); } };

// ---- launch helpers ---------------------------------------------------------------------------
template <class Op>
void launch_gen(cudaStream_t s, Op op, float* out, int64_t n) {
  if (n <= 0) return;
  if (aligned16(out)) {
    k_gen<Op, true><<<grid_for((n + 3) / 4, kBlock), kBlock, 0, s>>>(op, out, n);
  } else {
    k_gen<Op, false><<<grid_for(n, kBlock), kBlock, 0, s>>>(op, out, n);
  }
  CUDA_CHECK_LAUNCH();
}

template <class Op>
void launch_map1(cudaStream_t s, Op op, const float* a, float* out, int64_t n) {
  if (n <= 0) return;
  if (aligned16(a) && aligned16(out)) {
    k_map1<Op, true><<<grid_for((n + 3) / 4, kBlock), kBlock, 0, s>>>(op, a, out, n);
  } else {
    k_map1<Op, false><<<grid_for(n, kBlock), kBlock, 0, s>>>(op, a, out, n);
  }
  CUDA_CHECK_LAUNCH();
}

template <class Op>
void launch_map2(cudaStream_t s, Op op, const float* a, const float* b, float* out, int64_t n) {
  if (n <= 0) return;
  if (aligned16(a) && aligned16(b) && aligned16(out)) {
    k_map2<Op, true><<<grid_for((n + 3) / 4, kBlock), kBlock, 0, s>>>(op, a, b, out, n);
  } else {
    k_map2<Op, false><<<grid_for(n, kBlock), kBlock, 0, s>>>(op, a, b, out, n);
  }
  CUDA_CHECK_LAUNCH();
}

// ---- kernels: reductions ------------------------------------------------------------------
// Pass 1 of sum_all: block b writes the sum of its grid-stride share of x to part[b]. Each
// thread adds its elements in index order (double), then the block adds thread sums in a
// fixed tree.
template <bool VEC>
__global__ void k_sum_partial(const float* x, int64_t n, double* part) {
  __shared__ double sh[32];
  const int64_t t0 = global_thread(), stride = global_stride();
  double acc = 0.0;
  int64_t tail = 0;
  if (VEC) {
    const int64_t n4 = n >> 2;
    for (int64_t i = t0; i < n4; i += stride) {
      const float4 v = ld4(x, i);
      acc += double(v.x);
      acc += double(v.y);
      acc += double(v.z);
      acc += double(v.w);
    }
    tail = n4 << 2;
  }
  for (int64_t i = tail + t0; i < n; i += stride) acc += double(x[i]);
  const double total = block_sum(acc, sh);
  if (threadIdx.x == 0) part[blockIdx.x] = total;
}

// Pass 2 of sum_all: one block adds the partials.
__global__ void k_sum_final(const double* part, int parts, float* out) {
  __shared__ double sh[32];
  double acc = 0.0;
  for (int i = threadIdx.x; i < parts; i += blockDim.x) acc += part[i];
  const double total = block_sum(acc, sh);
  if (threadIdx.x == 0) out[0] = float(total);
}

struct RowValue {
  const float* x;
  int64_t cols;
  __device__ void operator()(int64_t r, int64_t j, double* acc) const {
    acc[0] += double(x[r * cols + j]);
  }
};

// y[r, j] = x[r, j] + b[j]
template <bool VEC>
__global__ void k_add_rowvec(const float* x, const float* b, float* y, int64_t n, int64_t cols) {
  const int64_t t0 = global_thread(), stride = global_stride();
  if (VEC) {  // cols % 4 == 0, so n % 4 == 0 and a float4 never straddles two rows
    const int64_t n4 = n >> 2, cols4 = cols >> 2;
    for (int64_t i = t0; i < n4; i += stride) {
      const float4 v = ld4(x, i), c = ld4(b, i % cols4);
      st4(y, i, make_float4(v.x + c.x, v.y + c.y, v.z + c.z, v.w + c.w));
    }
  } else {
    for (int64_t i = t0; i < n; i += stride) y[i] = x[i] + b[i % cols];
  }
}

}  // namespace

// ---- launchers ------------------------------------------------------------------------------
void fill(cudaStream_t s, float* out, float v, int64_t n) { launch_gen(s, ConstOp{v}, out, n); }

void rand(cudaStream_t s, float* out, int64_t n, RandKind kind, float a, float b, uint64_t seed,
          uint64_t offset) {
  if (kind == RandKind::Uniform)
    launch_gen(s, UniformOp{seed, offset, a, b}, out, n);
  else
    launch_gen(s, NormalOp{seed, offset, a, b}, out, n);
}

void binary(cudaStream_t s, Binary op, const float* a, const float* b, float* out, int64_t n) {
  switch (op) {
    case Binary::Add: launch_map2(s, AddOp{}, a, b, out, n); break;
    case Binary::Sub: launch_map2(s, SubOp{}, a, b, out, n); break;
    case Binary::Mul: launch_map2(s, MulOp{}, a, b, out, n); break;
    case Binary::Div: launch_map2(s, DivOp{}, a, b, out, n); break;
  }
}

void axpby(cudaStream_t s, float alpha, const float* a, float beta, const float* b, float* out,
           int64_t n) {
  if (b)
    launch_map2(s, AxpbyOp{alpha, beta}, a, b, out, n);
  else
    launch_map1(s, AxpbOp{alpha, beta}, a, out, n);
}

void sum_all(cudaStream_t s, const float* x, int64_t n, float* out) {
  if (n <= 0) {
    fill(s, out, 0.0f, 1);
    return;
  }
  const bool vec = aligned16(x);
  const int grid = grid_for(vec ? (n + 3) / 4 : n, kBlock);
  Scratch part(size_t(grid) * sizeof(double));
  if (vec)
    k_sum_partial<true><<<grid, kBlock, 0, s>>>(x, n, part.as<double>());
  else
    k_sum_partial<false><<<grid, kBlock, 0, s>>>(x, n, part.as<double>());
  CUDA_CHECK_LAUNCH();
  k_sum_final<<<1, kBlock, 0, s>>>(part.as<double>(), grid, out);
  CUDA_CHECK_LAUNCH();
}

void sum_rows(cudaStream_t s, const float* x, int64_t rows, int64_t cols, float* out) {
  float* outs[1] = {out};
  column_sums<1>(s, RowValue{x, cols}, rows, cols, outs);
}

void add_rowvec(cudaStream_t s, const float* x, const float* b, float* y, int64_t rows,
                int64_t cols) {
  const int64_t n = rows * cols;
  if (n <= 0) return;
  if (cols % 4 == 0 && aligned16(x) && aligned16(b) && aligned16(y)) {
    k_add_rowvec<true><<<grid_for(n / 4, kBlock), kBlock, 0, s>>>(x, b, y, n, cols);
  } else {
    k_add_rowvec<false><<<grid_for(n, kBlock), kBlock, 0, s>>>(x, b, y, n, cols);
  }
  CUDA_CHECK_LAUNCH();
}

void act_forward(cudaStream_t s, Act a, const float* x, float* y, int64_t n) {
  switch (a) {
    case Act::ReLU: launch_map1(s, ReluF{}, x, y, n); break;
    case Act::GELU: launch_map1(s, GeluF{}, x, y, n); break;
    case Act::GELUTanh: launch_map1(s, GeluTanhF{}, x, y, n); break;
    case Act::SiLU: launch_map1(s, SiluF{}, x, y, n); break;
  }
}

void act_backward(cudaStream_t s, Act a, const float* x, const float* dy, float* dx, int64_t n) {
  switch (a) {
    case Act::ReLU: launch_map2(s, ReluB{}, x, dy, dx, n); break;
    case Act::GELU: launch_map2(s, GeluB{}, x, dy, dx, n); break;
    case Act::GELUTanh: launch_map2(s, GeluTanhB{}, x, dy, dx, n); break;
    case Act::SiLU: launch_map2(s, SiluB{}, x, dy, dx, n); break;
  }
}

}  // namespace cuda
}  // namespace adashift

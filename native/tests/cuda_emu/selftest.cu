// Self-test of the CPU emulation of CUDA (this folder), run by ctest as cuda_emu_selftest. It is
// rewritten by cuda_emu_cu2cc like the kernel sources.
//   - correct kernels give the right results: index variables in 3-D grids and blocks, shared
//     memory with barriers, shuffles, dynamic shared memory, several blocks on the worker pool;
//   - shared memory reads before writes see NaN, in every block;
//   - the warp matrix API (mma.h): a TF32 product through shared memory, stored both ways, and
//     __float_to_tf32's rounding;
//   - stream capture records kernels, memsets and copies, and each graph launch replays them;
//     a synchronisation during a capture invalidates it;
//   - every misuse the emulator promises to catch stops the process with its message: each
//     such case runs in a child process (cuda_emu_selftest <case>) and must die with a signal
//     and print the expected text.
#include <cuda_runtime.h>
#include <mma.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

int g_failures = 0;

void expect(bool ok, const std::string& what) {
  std::printf("%-64s %s\n", what.c_str(), ok ? "PASS" : "FAIL");
  if (!ok) ++g_failures;
}

float* device_floats(size_t n) {
  void* p = nullptr;
  if (cudaMalloc(&p, n * sizeof(float)) != cudaSuccess) {
    std::printf("cudaMalloc failed\n");
    std::exit(1);
  }
  return static_cast<float*>(p);
}

// ---- correct kernels ---------------------------------------------------------------------------
__global__ void k_ids(unsigned* out) {
  const unsigned b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const unsigned t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  out[b * blockDim.x * blockDim.y * blockDim.z + t] = b * 1000 + t;
}

// Each block reverses its 256 values through shared memory and writes its warps' sums.
__global__ void k_reverse(const float* in, float* out, float* sums) {
  __shared__ float tile[256];
  const int t = threadIdx.x;
  const float v = in[blockIdx.x * 256 + t];
  tile[t] = v;
  __syncthreads();
  out[blockIdx.x * 256 + t] = tile[255 - t];
  float s = v;
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  if ((t & 31) == 0) sums[blockIdx.x * 8 + t / 32] = s;
}

// Thread 0 reads the shared value before anyone writes it, then every thread writes it.
__global__ void k_read_first(float* out) {
  __shared__ float cell[4];
  if (threadIdx.x == 0) out[blockIdx.x] = cell[1];
  __syncthreads();
  cell[threadIdx.x % 4] = 1.0f;
}

__global__ void k_dynamic(float* out, int n) {
  extern __shared__ float dyn[];
  if (threadIdx.x == 0) out[0] = dyn[n - 1];  // before any write: NaN
  __syncthreads();
  for (int i = threadIdx.x; i < n; i += blockDim.x) dyn[i] = float(i);
  __syncthreads();
  if (threadIdx.x == 0) out[1] = dyn[n - 1];
}

__global__ void k_add(float* x, float v, int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) x[i] += v;
}

// One warp: D = A B + C with A [16][8] row-major from shared memory, B [8][16] held column-major
// ([16][8]), through shared memory both ways out (row-major to d, column-major to dt).
__global__ void k_wmma(const float* a, const float* b, float* d, float* dt) {
  namespace wmma = nvcuda::wmma;
  __shared__ float sa[16 * 8], sb[16 * 8];
  for (int i = threadIdx.x; i < 128; i += 32) {
    sa[i] = wmma::__float_to_tf32(a[i]);
    sb[i] = wmma::__float_to_tf32(b[i]);
  }
  __syncwarp();
  wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::col_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 8, float> acc;
  wmma::fill_fragment(acc, 0.0f);
  for (int i = 0; i < acc.num_elements; ++i) acc.x[i] = 0.5f;  // + C = 0.5 everywhere
  wmma::load_matrix_sync(fa, sa, 8);
  wmma::load_matrix_sync(fb, sb, 8);
  wmma::mma_sync(acc, fa, fb, acc);
  wmma::store_matrix_sync(d, acc, 16, wmma::mem_row_major);
  wmma::store_matrix_sync(dt, acc, 16, wmma::mem_col_major);
}

// Misuse of the matrix API: a fragment pointer 16 bytes off the 32 required; an operand not
// rounded to TF32; half a warp multiplying.
__global__ void k_wmma_misuse(float* p, int which) {
  namespace wmma = nvcuda::wmma;
  wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 8, float> acc;
  wmma::fill_fragment(acc, 0.0f);
  wmma::fill_fragment(fa, 1.0f);
  wmma::fill_fragment(fb, 1.0f);
  if (which == 0) wmma::load_matrix_sync(fa, p + 4, 8);
  if (which == 1) fa.x[3] = 1.0f + 1.0f / 4096.0f;  // 1 + 2^-12: not a TF32 value
  if (which == 2 && threadIdx.x >= 16) return;
  wmma::mma_sync(acc, fa, fb, acc);
  wmma::store_matrix_sync(p, acc, 16, wmma::mem_row_major);
}

void correct_kernels() {
  {
    const dim3 grid(2, 3, 2), block(4, 4, 2);
    const size_t n = 12 * 32;
    unsigned* d = nullptr;
    cudaMalloc(reinterpret_cast<void**>(&d), n * sizeof(unsigned));
    k_ids<<<grid, block>>>(d);
    std::vector<unsigned> h(n);
    cudaMemcpy(h.data(), d, n * sizeof(unsigned), cudaMemcpyDeviceToHost);
    bool ok = true;
    for (size_t i = 0; i < n; ++i) ok = ok && h[i] == unsigned(i / 32) * 1000 + unsigned(i % 32);
    expect(ok, "threadIdx / blockIdx / blockDim / gridDim in 3-D");
    cudaFree(d);
  }
  {
    const int blocks = 37;  // several rounds of the worker pool, all four schedules
    std::vector<float> h(blocks * 256);
    for (size_t i = 0; i < h.size(); ++i) h[i] = float(i % 97) - 40.0f;
    float *in = device_floats(h.size()), *out = device_floats(h.size()), *sums = device_floats(blocks * 8);
    cudaMemcpy(in, h.data(), h.size() * 4, cudaMemcpyHostToDevice);
    k_reverse<<<blocks, 256>>>(in, out, sums);
    std::vector<float> o(h.size()), s(blocks * 8);
    cudaMemcpy(o.data(), out, o.size() * 4, cudaMemcpyDeviceToHost);
    cudaMemcpy(s.data(), sums, s.size() * 4, cudaMemcpyDeviceToHost);
    bool rev = true, sum = true;
    for (int b = 0; b < blocks; ++b)
      for (int t = 0; t < 256; ++t) rev = rev && o[b * 256 + t] == h[b * 256 + 255 - t];
    for (int w = 0; w < blocks * 8; ++w) {
      float e = 0.0f;
      for (int l = 0; l < 32; ++l) e += h[w * 32 + l];  // integers: any order is exact
      sum = sum && s[w] == e;
    }
    expect(rev, "__shared__ and __syncthreads (37 blocks of 256)");
    expect(sum, "__shfl_xor_sync butterfly sums");
    cudaFree(in);
    cudaFree(out);
    cudaFree(sums);
  }
  {
    float* out = device_floats(3);
    k_read_first<<<3, 64>>>(out);
    float h[3];
    cudaMemcpy(h, out, sizeof h, cudaMemcpyDeviceToHost);
    expect(std::isnan(h[0]) && std::isnan(h[1]) && std::isnan(h[2]),
           "static __shared__ is NaN before its first write, in every block");
    k_dynamic<<<1, 96, 1000 * sizeof(float)>>>(out, 1000);
    cudaMemcpy(h, out, sizeof h, cudaMemcpyDeviceToHost);
    expect(std::isnan(h[0]) && h[1] == 999.0f, "extern __shared__ (NaN before its first write)");
    cudaFree(out);
  }
  {
    // Values with a few bits, so that their TF32 roundings (kept exactly here) are products and
    // sums exact in float: the emulated product must equal the reference to the bit.
    std::vector<float> a(128), b(128);
    for (int i = 0; i < 128; ++i) {
      a[i] = float((i * 7) % 23 - 11) * 0.25f;
      b[i] = float((i * 5) % 19 - 9) * 0.5f;
    }
    a[5] = 1.0f + 1.0f / 2048.0f;  // 1 + 2^-11: a tie, rounded away from zero to 1 + 2^-10
    b[9] = -(1.0f + 1.0f / 2048.0f);
    a[6] = 1.0f + 1.0f / 4096.0f;  // 1 + 2^-12: rounded down to 1
    float *da = device_floats(128), *db = device_floats(128), *dd = device_floats(256),
          *ddt = device_floats(256);
    cudaMemcpy(da, a.data(), 512, cudaMemcpyHostToDevice);
    cudaMemcpy(db, b.data(), 512, cudaMemcpyHostToDevice);
    k_wmma<<<1, 32>>>(da, db, dd, ddt);
    std::vector<float> d(256), dt(256);
    cudaMemcpy(d.data(), dd, 1024, cudaMemcpyDeviceToHost);
    cudaMemcpy(dt.data(), ddt, 1024, cudaMemcpyDeviceToHost);
    auto r = [&](std::vector<float>& v, int i) {  // the TF32 value of v[i]
      if (&v == &a && i == 5) return 1.0f + 1.0f / 1024.0f;
      if (&v == &a && i == 6) return 1.0f;
      if (&v == &b && i == 9) return -(1.0f + 1.0f / 1024.0f);
      return v[i];
    };
    bool ok = true;
    for (int m = 0; m < 16; ++m)
      for (int n = 0; n < 16; ++n) {
        double e = 0.5;
        for (int k = 0; k < 8; ++k) e += double(r(a, m * 8 + k)) * double(r(b, n * 8 + k));
        ok = ok && d[m * 16 + n] == float(e) && dt[n * 16 + m] == float(e);
      }
    expect(ok, "wmma TF32 16x16x8 product, __float_to_tf32 ties away from zero");
    cudaFree(da);
    cudaFree(db);
    cudaFree(dd);
    cudaFree(ddt);
  }
  {
    float* fresh = device_floats(5);
    float h[5];
    cudaMemcpy(h, fresh, sizeof h, cudaMemcpyDeviceToHost);
    expect(std::isnan(h[0]) && std::isnan(h[4]), "cudaMalloc fills with NaN");
    cudaFree(fresh);
  }
}

void graphs() {
  cudaStream_t s;
  cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
  const int n = 1000;
  float *x = device_floats(n), *y = device_floats(n);
  cudaMemsetAsync(x, 0, n * sizeof(float), s);
  auto value = [](const float* p) {
    float h = 0.0f;
    cudaMemcpy(&h, p, sizeof h, cudaMemcpyDeviceToHost);
    return h;
  };
  // A synchronisation during a capture is refused and invalidates it; nothing ran.
  bool ok = cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal) == cudaSuccess;
  k_add<<<2, 128, 0, s>>>(x, 1.0f, n);
  ok = ok && cudaStreamSynchronize(s) == cudaErrorStreamCaptureUnsupported;
  cudaGraph_t g = nullptr;
  ok = ok && cudaStreamEndCapture(s, &g) == cudaErrorStreamCaptureInvalidated && g == nullptr;
  cudaGetLastError();
  expect(ok && value(x) == 0.0f, "synchronising during a capture invalidates it");
  // Recorded, not run; each launch of the graph replays kernels, memset and copy in order.
  ok = cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal) == cudaSuccess;
  cudaMemsetAsync(y, 0, n * sizeof(float), s);
  k_add<<<2, 128, 0, s>>>(x, 1.5f, n);
  cudaMemcpyAsync(y, x, n * sizeof(float), cudaMemcpyDeviceToDevice, s);
  k_add<<<3, 64, 0, s>>>(y, 0.25f, n);
  // A relaxed thread may allocate during the capture (runtime.cu's caching allocator does).
  cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
  cudaThreadExchangeStreamCaptureMode(&mode);
  float* z = nullptr;
  ok = ok && cudaMalloc(reinterpret_cast<void**>(&z), 64) == cudaSuccess;
  cudaThreadExchangeStreamCaptureMode(&mode);
  ok = ok && cudaStreamEndCapture(s, &g) == cudaSuccess && g != nullptr;
  expect(ok && value(x) == 0.0f, "stream capture records without running");
  cudaGraphExec_t exec = nullptr;
  ok = cudaGraphInstantiate(&exec, g, 0) == cudaSuccess;
  ok = ok && cudaGraphLaunch(exec, s) == cudaSuccess;
  const float x1 = value(x), y1 = value(y + n - 1);
  ok = ok && cudaGraphLaunch(exec, s) == cudaSuccess;
  const float x2 = value(x), y2 = value(y + n - 1);
  expect(ok && x1 == 1.5f && y1 == 1.75f && x2 == 3.0f && y2 == 3.25f,
         "graph launches replay the capture in order");
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(g);
  cudaFree(z);
  cudaFree(x);
  cudaFree(y);
  cudaStreamDestroy(s);
}

// ---- misuse: each case must stop the process with its message ----------------------------------
__global__ void k_noop(float* p) {
  if (p && threadIdx.x == 0) p[0] = 0.0f;
}
__global__ void __launch_bounds__(64) k_bounded(float* p) {
  if (p && threadIdx.x == 0) p[0] = 1.0f;
}
__global__ void k_float4(const float* p, float* out) {
  const float4 v = reinterpret_cast<const float4*>(p)[0];
  out[0] = v.x;
}
__global__ void k_sync_after_return(float* p) {
  if (threadIdx.x >= 16) return;
  __syncthreads();
  p[threadIdx.x] = 1.0f;
}
__global__ void k_sync_sites(float* p) {
  if (threadIdx.x & 1) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  p[threadIdx.x] = 1.0f;
}
__global__ void k_shfl_outside_mask(float* p) {
  p[threadIdx.x] = __shfl_xor_sync(0x0000ffffu, float(threadIdx.x), 1);
}
__global__ void k_shfl_source(float* p) {
  if (threadIdx.x < 16) p[threadIdx.x] = __shfl_xor_sync(0x0000ffffu, float(threadIdx.x), 16);
}
__global__ void k_shfl_returned(float* p) {
  if (threadIdx.x == 5) return;
  p[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
}
__global__ void k_deadlock(float* p) {
  float v = 1.0f;
  if ((threadIdx.x & 31) < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
  else __syncthreads();
  p[threadIdx.x] = v;
}
// The pointer travels inside a struct, past the launch's check of pointer arguments.
struct Ptr {
  const float* p;
};
__global__ void k_read(Ptr src, float* out, long long at) { out[0] = src.p[at]; }

struct Misuse {
  const char* name;
  const char* expected;  // in the message
  void (*run)(float* d);
};

const Misuse kMisuses[] = {
    {"zero-grid", "a grid dimension is 0", [](float* d) { k_noop<<<0, 32>>>(d); }},
    {"big-block", "more than 1024 threads", [](float* d) { k_noop<<<1, 1056>>>(d); }},
    {"grid-y", "grid.y or grid.z over 65535", [](float* d) { k_noop<<<dim3(1, 65536), 32>>>(d); }},
    {"dynamic-smem", "48 KiB", [](float* d) { k_noop<<<1, 32, 48 * 1024 + 4>>>(d); }},
    {"launch-bounds", "__launch_bounds__(64)", [](float* d) { k_bounded<<<1, 128>>>(d); }},
    {"host-pointer", "not device memory", [](float*) {
       static float host[4];
       k_noop<<<1, 32>>>(host);
     }},
    {"misaligned-float4", "misaligned float4 load", [](float* d) { k_float4<<<1, 1>>>(d + 1, d); }},
    {"sync-after-return", "__syncthreads", [](float* d) { k_sync_after_return<<<1, 32>>>(d); }},
    {"sync-sites", "different __syncthreads", [](float* d) { k_sync_sites<<<1, 64>>>(d); }},
    {"shfl-lane-outside-mask", "which excludes it", [](float* d) { k_shfl_outside_mask<<<1, 32>>>(d); }},
    {"shfl-source-outside-mask", "not in the mask", [](float* d) { k_shfl_source<<<1, 32>>>(d); }},
    {"shfl-lane-returned", "returned", [](float* d) { k_shfl_returned<<<1, 32>>>(d); }},
    {"deadlock", "deadlock", [](float* d) { k_deadlock<<<1, 64>>>(d); }},
    {"read-past-allocation", "outside every device allocation", [](float* d) {
       k_read<<<1, 1>>>(Ptr{d}, d, 1024);
     }},
    {"read-freed-memory", "outside every device allocation", [](float* d) {
       float* gone = device_floats(1000);
       cudaFree(gone);
       k_read<<<1, 1>>>(Ptr{gone}, d, 0);
     }},
    {"wmma-misaligned", "not 256-bit", [](float* d) { k_wmma_misuse<<<1, 32>>>(d, 0); }},
    {"wmma-not-tf32", "not a TF32 value", [](float* d) { k_wmma_misuse<<<1, 32>>>(d, 1); }},
    {"wmma-half-warp", "wait for it", [](float* d) { k_wmma_misuse<<<1, 32>>>(d, 2); }},
    {"wmma-partial-warp", "do not exist", [](float* d) { k_wmma_misuse<<<1, 16>>>(d, 3); }},
    {"freed-pointer-argument", "not device memory", [](float* d) {
       float* gone = device_floats(1000);
       cudaFree(gone);
       k_noop<<<1, 1>>>(gone);
     }},
};

// Runs one misuse case in a child process; true when it died of a signal saying `expected`.
bool dies_with(const Misuse& m, std::string* out) {
  int fds[2];
  if (pipe(fds) != 0) return false;
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(fds[1], 2);
    dup2(fds[1], 1);
    close(fds[0]);
    signal(SIGABRT, SIG_DFL);
    const struct rlimit no_core = {0, 0};  // no core files from the expected crashes
    setrlimit(RLIMIT_CORE, &no_core);
    execl("/proc/self/exe", "cuda_emu_selftest", m.name, static_cast<char*>(nullptr));
    _exit(127);
  }
  close(fds[1]);
  char buf[4096];
  for (ssize_t r; (r = read(fds[0], buf, sizeof buf)) > 0;) out->append(buf, size_t(r));
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFSIGNALED(status) && out->find(m.expected) != std::string::npos;
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  if (argc == 2) {  // a child: run one misuse case, which must not return
    for (const Misuse& m : kMisuses)
      if (std::strcmp(argv[1], m.name) == 0) {
        float* d = device_floats(1000);  // 4000 bytes: its mapping ends at d + 1024
        k_noop<<<1, 32>>>(d);            // workers and fiber stacks exist before the case
        m.run(d);
        cudaDeviceSynchronize();
        std::printf("cuda_emu_selftest: case %s returned\n", m.name);
        return 0;
      }
    std::printf("cuda_emu_selftest: no case %s\n", argv[1]);
    return 2;
  }
  correct_kernels();
  graphs();
  for (const Misuse& m : kMisuses) {
    std::string out;
    const bool ok = dies_with(m, &out);
    expect(ok, std::string("stops on misuse: ") + m.name);
    if (!ok) std::printf("    expected \"%s\"; the child said:\n%s\n", m.expected, out.c_str());
  }
  std::printf("cuda_emu_selftest: %d failed\n", g_failures);
  return g_failures == 0 ? 0 : 1;
}

// The CPU emulation of CUDA behind cuda_runtime.h / cuda_runtime_api.h (this folder).
//
// Threads. Every CUDA thread of a block is a fiber (its own stack; a hand-written context switch
// on x86-64, ucontext elsewhere) run by one OS thread: a thread runs until it waits
// (__syncthreads, a shuffle) or returns, then another one runs. A thread that returns gives its
// stack to the next, so a kernel without barriers costs two fiber switches per thread. The
// blocks of a launch go to a persistent pool of OS threads (one per core by default), each with
// its own fibers and shared memory.
//
// Schedules. A block runs under one of four schedules: threads in forward or reverse order,
// either one step of each thread per pass (round robin) or each warp as far as it gets before
// the next (a warp far ahead of the others). Correct code gives the same bits under all four;
// a missing barrier does not. The k-th execution of a launch site starts from schedule k and
// block b takes schedule (k + b) % 4, so the parity checks' "run twice, bit-identical"
// comparisons see such races, and so do their comparisons with the CPU.
//
// What aborts, with the kernel, its launch site, block and thread named:
//   launches: a zero grid or block dimension, more than 1024 threads or a block dimension over
//     its limit, grid.x > 2^31 - 1, grid.y or grid.z > 65535, more than 48 KiB of dynamic shared
//     memory (or static + dynamic), a block larger than the kernel's __launch_bounds__, an unknown
//     stream, a pointer argument that is not device memory;
//   __syncthreads: reached after some thread of the block returned, or at different call sites,
//     or a thread returning while others wait at one (all undefined on the GPU);
//   shuffles: a lane outside the mask calling, a source lane outside the warp or the mask, lanes
//     of one warp disagreeing on the mask or the call site (so also two disjoint masks shuffling
//     at once in one warp, which the GPU allows: the kernels here never do), a lane of the mask
//     returning while the others wait, and every deadlock (no thread can run);
//   float4 loads and stores that are not 16-byte aligned;
//   memory faults: device allocations sit between inaccessible pages, and cudaFree unmaps, so a
//     kernel reading past a (rounded) allocation or into freed memory stops at once.
// Device memory is filled with 0xff bytes (NaN) by cudaMalloc, and shared memory (static and
// dynamic) before every block, so values read before they are written show up as NaN.
//
// Not modelled: the GPU memory model (memory is coherent at every instruction; blocks of one
// launch may run concurrently on different OS threads, but nothing checks races between
// blocks), out-of-bounds accesses that stay inside an allocation's rounding or inside the
// block's shared memory, timing, occupancy and registers, FMA contraction (the kernels are
// compiled with -ffp-contract=off, so results follow the host's rounding, not nvcc's), the
// device's libm (sqrt, log... are glibc's).
//
// Environment: ADASHIFT_CUDA_EMU_SMS (multiprocessor count, default 2: grid-stride loops take
// several passes at small sizes), ADASHIFT_CUDA_EMU_THREADS (OS threads running blocks, default
// one per core), ADASHIFT_CUDA_EMU_MEM_MB (device memory, default half the host's). The runtime
// sets ADASHIFT_CUDA_EMU=1 in the environment (unless it is already set) so that the tests know.
#include "cuda_runtime.h"

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#if !defined(__x86_64__) || defined(ADASHIFT_CUDA_EMU_UCONTEXT)
#define EMU_USE_UCONTEXT 1
#include <ucontext.h>
#endif

namespace emu {

thread_local uint3 t_thread_idx __attribute__((tls_model("initial-exec"))) = {0, 0, 0};
thread_local uint3 t_block_idx __attribute__((tls_model("initial-exec"))) = {0, 0, 0};
dim3 g_grid_dim, g_block_dim;

namespace {

constexpr unsigned kMaxThreads = 1024;
constexpr size_t kSharedLimit = 48 * 1024;
constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kArenaBytes = kSharedLimit + 64;

size_t page_size() {
  static const size_t p = size_t(sysconf(_SC_PAGESIZE));
  return p;
}

long env_long(const char* name, long fallback, long lo, long hi) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  long x = std::strtol(v, &end, 10);
  if (*end || x < lo || x > hi) {
    std::fprintf(stderr, "cuda_emu: %s=%s is not a number in [%ld, %ld]; using %ld\n", name, v, lo,
                 hi, fallback);
    return fallback;
  }
  return x;
}

int sm_count() {
  static const int n = int(env_long("ADASHIFT_CUDA_EMU_SMS", 2, 1, 1024));
  return n;
}

size_t memory_limit() {
  static const size_t n = [] {
    const size_t host = size_t(sysconf(_SC_PHYS_PAGES)) * page_size();
    const long mb = env_long("ADASHIFT_CUDA_EMU_MEM_MB", long(host / 2 >> 20), 1, 1L << 30);
    return size_t(mb) << 20;
  }();
  return n;
}

// Marks the process as an emulation before main() (see the header comment).
void install_fault_handler_for_thread();
struct MarkEnvironment {
  MarkEnvironment() {
    setenv("ADASHIFT_CUDA_EMU", "1", 0);
    install_fault_handler_for_thread();
  }
} g_mark_environment;

// ---- fiber contexts ----------------------------------------------------------------------------
void fiber_main();

#ifndef EMU_USE_UCONTEXT
// emu_ctx_switch(save, load): saves the callee-saved registers on the current stack, stores the
// stack pointer in *save and resumes the context whose stack pointer is `load`. A new context
// starts in emu_ctx_start, which calls the function in r13. The SSE and x87 control words are
// not switched: kernels never change the rounding mode, and every fiber inherits the thread's.
extern "C" void emu_ctx_switch(void** save, void* load);
extern "C" void emu_ctx_start();
asm(R"(
  .text
  .globl emu_ctx_switch
  .hidden emu_ctx_switch
  .type emu_ctx_switch, @function
emu_ctx_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size emu_ctx_switch, .-emu_ctx_switch

  .globl emu_ctx_start
  .hidden emu_ctx_start
  .type emu_ctx_start, @function
emu_ctx_start:
  callq *%r13
  ud2
  .size emu_ctx_start, .-emu_ctx_start
)");

struct Context {
  void* sp = nullptr;
};
inline void switch_context(Context& from, Context& to) { emu_ctx_switch(&from.sp, to.sp); }
void make_context(Context& c, char* stack_top) {
  // The frame emu_ctx_switch pops: r15, r14, r13 (entry), r12, rbx, rbp, then the return address
  // (emu_ctx_start). After it rsp is 16-byte aligned at emu_ctx_start's call, as the ABI wants.
  uintptr_t top = reinterpret_cast<uintptr_t>(stack_top) & ~uintptr_t(15);
  auto* f = reinterpret_cast<uint64_t*>(top - 72);
  std::memset(f, 0, 72);
  f[2] = reinterpret_cast<uint64_t>(&fiber_main);  // r13
  f[6] = reinterpret_cast<uint64_t>(&emu_ctx_start);
  c.sp = f;
}
#else
struct Context {
  ucontext_t uc;
};
inline void switch_context(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
void make_context(Context& c, char* stack_top) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack_top - kStackBytes;
  c.uc.uc_stack.ss_size = kStackBytes;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, &fiber_main, 0);
}
#endif

// ---- stacks ------------------------------------------------------------------------------------
// kStackBytes of stack above one inaccessible guard page (an overflow faults at once).
struct Stack {
  char* base;  // the guard page
  char* top;
};
std::mutex g_stacks_mutex;
std::vector<Stack> g_all_stacks;  // for the fault handler's message

Stack new_stack() {
  const size_t len = kStackBytes + page_size();
  void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    std::fprintf(stderr, "cuda_emu: out of memory for thread stacks\n");
    std::abort();
  }
  mprotect(p, page_size(), PROT_NONE);
  Stack s{static_cast<char*>(p), static_cast<char*>(p) + len};
  std::lock_guard<std::mutex> lk(g_stacks_mutex);
  g_all_stacks.push_back(s);
  return s;
}

// ---- device memory -----------------------------------------------------------------------------
// Each allocation: its own mapping, [guard page][slack][data][guard page], data ending at the
// second guard, 256-byte aligned, filled with 0xff.
struct Allocation {
  char* map;
  size_t map_len;
  size_t bytes;
};
std::mutex g_mem_mutex;
std::map<uintptr_t, Allocation> g_allocs;
size_t g_mem_used = 0;

// The allocation holding [p, p + n) (n == 0: p may be its end), or null.
const Allocation* find_alloc_locked(const void* p, size_t n, uintptr_t* start) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  auto it = g_allocs.upper_bound(a);
  if (it == g_allocs.begin()) return nullptr;
  --it;
  const uintptr_t s = it->first, e = s + it->second.bytes;
  if (a < s || a > e || (n > 0 && (a + n > e || a + n < a))) return nullptr;
  if (start) *start = s;
  return &it->second;
}
bool is_device(const void* p, size_t n) {
  std::lock_guard<std::mutex> lk(g_mem_mutex);
  return find_alloc_locked(p, n, nullptr) != nullptr;
}
// Whether [p, p + n) overlaps device memory at all (a range that only partly does is an error).
bool touches_device(const void* p, size_t n) {
  std::lock_guard<std::mutex> lk(g_mem_mutex);
  const uintptr_t a = reinterpret_cast<uintptr_t>(p), b = a + n;
  auto it = g_allocs.upper_bound(a);
  if (it != g_allocs.begin()) {
    auto prev = std::prev(it);
    if (a < prev->first + prev->second.bytes) return true;
  }
  return it != g_allocs.end() && it->first < b;
}

// ---- errors ------------------------------------------------------------------------------------
thread_local cudaError_t t_last_error = cudaSuccess;

cudaError_t err(cudaError_t e) {
  if (e != cudaSuccess) t_last_error = e;
  return e;
}
// An API misuse the real runtime reports with a bare error code: say what was wrong, too.
cudaError_t err_note(cudaError_t e, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
cudaError_t err_note(cudaError_t e, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::fprintf(stderr, "cuda_emu: ");
  std::vfprintf(stderr, fmt, ap);
  std::fprintf(stderr, " (returning %s)\n", cudaGetErrorName(e));
  va_end(ap);
  return err(e);
}

// Held by the first thread that reports a fatal error and never released: a second report
// (another block worker failing at the same time) waits instead of interleaving its message.
std::mutex g_fatal_mutex;

// Takes the fatal lock (never released: the process is about to stop) and prints the message.
void print_fatal(const char* fmt, va_list ap) {
  g_fatal_mutex.lock();
  std::fflush(stdout);
  std::fprintf(stderr, "cuda_emu: FATAL: ");
  std::vfprintf(stderr, fmt, ap);
  std::fprintf(stderr, "\n");
}

[[noreturn]] void fatal(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void fatal(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  print_fatal(fmt, ap);
  va_end(ap);
  std::abort();
}

// ---- block execution ---------------------------------------------------------------------------
enum : uint8_t { kFresh, kReady, kAtSync, kAtShfl, kDone };

struct WarpState {
  unsigned arrived = 0;  // lanes waiting in the current shuffle
  unsigned mask = 0;     // its mask
  unsigned exited = 0;   // lanes that returned
  int phase = 0;         // which vals[] the current shuffle fills
  const char* file = nullptr;
  int line = 0;
  uint64_t vals[2][32];
};

struct Worker;
thread_local Worker* t_worker __attribute__((tls_model("initial-exec"))) = nullptr;

struct Worker {
  struct Thread {
    Context ctx;
    Stack stack{nullptr, nullptr};
    uint8_t state = kFresh;
  };
  std::vector<Thread> threads{kMaxThreads};
  std::vector<Stack> free_stacks;
  Context scheduler;
  Context dead;  // where an exiting thread's context goes (never resumed)
  const Launch* launch = nullptr;
  uint3 block{0, 0, 0};
  unsigned n = 0, cur = 0, exited = 0;
  unsigned sync_arrived = 0;
  const char* sync_file = nullptr;
  int sync_line = 0;
  WarpState warps[kMaxThreads / 32];
  // Shared memory: the dynamic part first, then static variables in order of first use.
  unsigned char* arena = nullptr;
  size_t used = 0;   // bytes handed out in this block
  size_t dirty = 0;  // bytes past which the arena still holds 0xff
  std::vector<std::pair<const void*, void*>> slots;

  Worker() {
    arena = static_cast<unsigned char*>(std::aligned_alloc(64, kArenaBytes));
    std::memset(arena, 0xff, kArenaBytes);
  }
  // Never destroyed: a worker lives as long as its thread (helpers run until the process exits).

  // threadIdx of each linear thread id, for the block shape of the last launch.
  std::vector<uint3> index{kMaxThreads};
  dim3 index_shape{0, 0, 0};

  // The schedule of a block. Correct code gives the same results under every schedule; code
  // that reads what another thread writes without a barrier between them does not. Launches
  // vary it (see execute), so the parity checks' "run twice" comparisons see such races.
  //   reverse:     threads (warps) from the last to the first;
  //   warp_ahead:  each warp runs until all its lanes wait or have returned before the next warp
  //                starts (a warp far ahead of the others); else one step of every thread per
  //                pass, round robin.
  void run_block(const Launch& l, uint3 b, unsigned schedule) {
    const bool reverse = schedule & 1u, warp_ahead = schedule & 2u;
    launch = &l;
    block = b;
    t_block_idx = b;
    n = l.block.x * l.block.y * l.block.z;
    if (l.block.x != index_shape.x || l.block.y != index_shape.y || l.block.z != index_shape.z) {
      for (unsigned t = 0; t < n; ++t)
        index[t] = uint3{t % l.block.x, (t / l.block.x) % l.block.y, t / (l.block.x * l.block.y)};
      index_shape = l.block;
    }
    exited = 0;
    sync_arrived = 0;
    for (unsigned w = 0; w < (n + 31) / 32; ++w) {
      warps[w].arrived = 0;
      warps[w].exited = 0;
      warps[w].phase = 0;
    }
    std::memset(arena, 0xff, dirty);
    used = (l.smem + 15) & ~size_t(15);
    dirty = used;
    slots.clear();
    for (unsigned t = 0; t < n; ++t) threads[t].state = kFresh;
    const unsigned nwarps = (n + 31) / 32;
    while (exited < n) {
      bool progress = false;
      if (!warp_ahead) {
        for (unsigned k = 0; k < n; ++k) progress |= step(reverse ? n - 1 - k : k);
      } else {
        for (unsigned k = 0; k < nwarps; ++k) {
          const unsigned w = reverse ? nwarps - 1 - k : k, t0 = w * 32, t1 = std::min(n, t0 + 32);
          for (bool again = true; again;) {
            again = false;
            for (unsigned t = t0; t < t1; ++t) again |= step(reverse ? t0 + t1 - 1 - t : t);
            progress |= again;
          }
        }
      }
      if (!progress && exited < n) deadlock();
    }
    launch = nullptr;
  }

  // Runs thread t until it waits or returns, if it can run; says whether it did.
  bool step(unsigned t) {
    const uint8_t s = threads[t].state;
    if (s != kFresh && s != kReady) return false;
    resume(t);
    return true;
  }

  void resume(unsigned t) {
    Thread& th = threads[t];
    if (th.state == kFresh) {
      if (free_stacks.empty()) free_stacks.push_back(new_stack());
      th.stack = free_stacks.back();
      free_stacks.pop_back();
      make_context(th.ctx, th.stack.top);
      th.state = kReady;
    }
    cur = t;
    t_thread_idx = index[t];
    switch_context(scheduler, th.ctx);
    if (th.state == kDone) {
      free_stacks.push_back(th.stack);
      th.stack = Stack{nullptr, nullptr};
    }
  }

  void wait_as(uint8_t state) {
    Thread& th = threads[cur];
    th.state = state;
    switch_context(th.ctx, scheduler);
  }

  void thread_exit() {
    const unsigned t = cur, lane = t & 31;
    WarpState& ws = warps[t >> 5];
    if (sync_arrived)
      fail_in_kernel("thread returned while %u thread(s) of its block wait at __syncthreads() "
                     "(%s:%d); every thread must reach it (undefined behaviour on the GPU)",
                     sync_arrived, sync_file, sync_line);
    if (ws.arrived && (ws.mask >> lane & 1u))
      fail_in_kernel("lane %u returned while lanes 0x%08x of its warp wait for it in "
                     "__shfl_xor_sync(mask 0x%08x) at %s:%d",
                     lane, ws.arrived, ws.mask, ws.file, ws.line);
    ws.exited |= 1u << lane;
    threads[t].state = kDone;
    ++exited;
    switch_context(dead, scheduler);
    __builtin_unreachable();
  }

  [[noreturn]] void deadlock() {
    std::string msg;
    unsigned at_sync = 0;
    for (unsigned t = 0; t < n; ++t) at_sync += threads[t].state == kAtSync;
    char buf[256];
    std::snprintf(buf, sizeof buf, "no thread of the block can run: %u of %u exited, %u wait at "
                  "__syncthreads()", exited, n, at_sync);
    msg = buf;
    if (at_sync) {
      std::snprintf(buf, sizeof buf, " (%s:%d)", sync_file, sync_line);
      msg += buf;
    }
    for (unsigned w = 0; w < (n + 31) / 32; ++w)
      if (warps[w].arrived) {
        std::snprintf(buf, sizeof buf, "; warp %u: lanes 0x%08x wait in __shfl_xor_sync(mask "
                      "0x%08x) at %s:%d", w, warps[w].arrived, warps[w].mask, warps[w].file,
                      warps[w].line);
        msg += buf;
      }
    fail_in_kernel("deadlock: %s (the thread named below is the last one that ran)", msg.c_str());
  }
};

void fiber_main() {
  Worker* w = t_worker;
  w->launch->run_thread();
  w->thread_exit();
}

thread_local bool t_fault_handler = false;

Worker& this_worker() {
  if (!t_worker) {
    t_worker = new Worker();
    if (!t_fault_handler) install_fault_handler_for_thread();
  }
  return *t_worker;
}

Worker& worker_in_kernel(const char* what) {
  Worker* w = t_worker;
  if (!w || !w->launch) fatal("%s called outside a kernel", what);
  return *w;
}

// ---- the pool of OS threads that run blocks ----------------------------------------------------
class BlockPool {
 public:
  // Runs every block of l; returns when all are done. Block b gets schedule (variant + b) % 4.
  void run(const Launch& l, uint64_t blocks, uint64_t variant) {
    const unsigned helpers = helper_count();
    variant_ = variant;
    if (blocks == 1 || helpers == 0) {
      Worker& w = this_worker();
      for (uint64_t b = 0; b < blocks; ++b) w.run_block(l, block_of(l, b), unsigned((variant + b) & 3));
      return;
    }
    start_helpers(helpers);
    {
      std::lock_guard<std::mutex> lk(m_);
      job_ = &l;
      total_ = blocks;
      next_.store(0);
      busy_ = unsigned(threads_.size());
      ++generation_;
    }
    start_cv_.notify_all();
    work(this_worker());
    std::unique_lock<std::mutex> lk(m_);
    done_cv_.wait(lk, [&] { return busy_ == 0; });
    job_ = nullptr;
  }

 private:
  std::mutex m_;
  std::condition_variable start_cv_, done_cv_;
  std::vector<std::thread> threads_;
  const Launch* job_ = nullptr;
  uint64_t total_ = 0, generation_ = 0, variant_ = 0;
  std::atomic<uint64_t> next_{0};
  unsigned busy_ = 0;

  static unsigned helper_count() {
    static const unsigned n = [] {
      unsigned hw = std::thread::hardware_concurrency();
      long t = env_long("ADASHIFT_CUDA_EMU_THREADS", long(hw ? hw : 1), 1, 256);
      return unsigned(t - 1);
    }();
    return n;
  }
  static uint3 block_of(const Launch& l, uint64_t b) {
    const uint64_t gx = l.grid.x, gy = l.grid.y;
    return uint3{unsigned(b % gx), unsigned((b / gx) % gy), unsigned(b / (gx * gy))};
  }
  void work(Worker& w) {
    for (uint64_t b; (b = next_.fetch_add(1)) < total_;)
      w.run_block(*job_, block_of(*job_, b), unsigned((variant_ + b) & 3));
  }
  void start_helpers(unsigned count) {
    while (threads_.size() < count) {
      threads_.emplace_back([this] {
        Worker& w = this_worker();
        uint64_t seen = 0;
        for (;;) {
          {
            std::unique_lock<std::mutex> lk(m_);
            start_cv_.wait(lk, [&] { return generation_ != seen; });
            seen = generation_;
          }
          work(w);
          std::lock_guard<std::mutex> lk(m_);
          if (--busy_ == 0) done_cv_.notify_one();
        }
      });
      threads_.back().detach();
    }
  }
};
BlockPool* g_pool = new BlockPool();  // never destroyed: its threads live until exit
std::mutex g_exec_mutex;              // one kernel at a time (the globals above are per launch)
// Executions so far of each launch site: the k-th execution of a site starts from schedule k,
// so running an op twice runs each of its launches under two different schedules.
std::map<std::pair<const char*, int>, uint64_t> g_site_runs;

void execute(const Launch& l) {
  std::lock_guard<std::mutex> lk(g_exec_mutex);
  g_grid_dim = l.grid;
  g_block_dim = l.block;
  const uint64_t variant = g_site_runs[{l.file, l.line}]++;
  g_pool->run(l, uint64_t(l.grid.x) * l.grid.y * l.grid.z, variant);
}

// ---- memory faults -----------------------------------------------------------------------------
void on_fault(int sig, siginfo_t* si, void*) {
  char buf[1024];
  const uintptr_t a = reinterpret_cast<uintptr_t>(si->si_addr);
  Worker* w = t_worker;
  const bool in_kernel = w && w->launch;
  const char* what = in_kernel ? "outside every device allocation (past the end of a block, or "
                                 "freed memory)"
                               : "not inside an emulated kernel";
  for (const Stack& s : g_all_stacks)
    if (a >= reinterpret_cast<uintptr_t>(s.base) && a < reinterpret_cast<uintptr_t>(s.base) + page_size())
      what = "a stack overflow in an emulated CUDA thread";
  int n = std::snprintf(buf, sizeof buf, "cuda_emu: FATAL: %s at address %p: %s\n",
                        sig == SIGSEGV ? "segmentation fault" : "bus error", si->si_addr, what);
  if (in_kernel && n > 0 && size_t(n) < sizeof buf) {
    const Launch& l = *w->launch;
    const uint3 t = t_thread_idx;
    n += std::snprintf(buf + n, sizeof buf - size_t(n),
                       "  in kernel %s launched at %s:%d, block (%u,%u,%u) thread (%u,%u,%u)\n",
                       l.kernel, l.file, l.line, w->block.x, w->block.y, w->block.z, t.x, t.y, t.z);
  }
  if (n > 0) {
    ssize_t r = write(2, buf, size_t(n) < sizeof buf ? size_t(n) : sizeof buf - 1);
    (void)r;
  }
  signal(sig, SIG_DFL);
  raise(sig);
}

void install_fault_handler_for_thread() {
  t_fault_handler = true;
  // An alternate signal stack, so that a fiber's stack overflow can still be reported.
  stack_t ss;
  ss.ss_size = 64 * 1024;
  ss.ss_sp = std::malloc(ss.ss_size);
  ss.ss_flags = 0;
  sigaltstack(&ss, nullptr);
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa;
    std::memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = &on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigaction(SIGSEGV, &sa, nullptr);
    sigaction(SIGBUS, &sa, nullptr);
  });
}

// ---- streams, events, graphs -------------------------------------------------------------------
struct Node {
  virtual ~Node() = default;
  virtual void run() = 0;
};
using Nodes = std::vector<std::shared_ptr<Node>>;

struct Capture {
  cudaGraph_t graph;
  cudaStreamCaptureMode mode;
  std::thread::id thread;
  bool invalidated = false;
};

}  // namespace
}  // namespace emu

struct emu_stream {
  unsigned flags = 0;
  std::unique_ptr<emu::Capture> capture;
};
struct emu_event {
  bool recorded = false;
  std::chrono::steady_clock::time_point when;
};
struct emu_graph {
  emu::Nodes nodes;
};
struct emu_graph_exec {
  emu::Nodes nodes;
};

namespace emu {
namespace {

std::mutex g_api_mutex;  // streams, events, graphs and captures
std::set<cudaStream_t> g_streams;
std::set<cudaEvent_t> g_events;
std::set<cudaGraph_t> g_graphs;
std::set<cudaGraphExec_t> g_execs;
thread_local cudaStreamCaptureMode t_capture_mode = cudaStreamCaptureModeGlobal;

// The live handles of each kind: made by the create calls, checked by every call taking one,
// and removed (and freed) by the destroy calls; an unknown handle is an error, as on a GPU.
template <typename H>
cudaError_t add_handle(std::set<H>& live, H h, H* out) {
  std::lock_guard<std::mutex> lk(g_api_mutex);
  live.insert(h);
  *out = h;
  return cudaSuccess;
}
template <typename H>
cudaError_t remove_handle(std::set<H>& live, H h) {
  {
    std::lock_guard<std::mutex> lk(g_api_mutex);
    if (!live.erase(h)) return cudaErrorInvalidResourceHandle;
  }
  delete h;
  return cudaSuccess;
}

// Resolves a stream handle: nullptr is the legacy default stream; anything else must be live.
bool valid_stream(cudaStream_t s) {
  std::lock_guard<std::mutex> lk(g_api_mutex);
  return s == nullptr || g_streams.count(s) != 0;
}
Capture* capture_of(cudaStream_t s) { return s ? s->capture.get() : nullptr; }

// The CUDA rule for "potentially unsafe" calls (cudaMalloc, synchronisation) during captures:
// refused, and the offending captures invalidated, unless this thread's mode is relaxed.
bool unsafe_call_refused(const char* what) {
  if (t_capture_mode == cudaStreamCaptureModeRelaxed) return false;
  std::lock_guard<std::mutex> lk(g_api_mutex);
  bool refused = false;
  for (cudaStream_t s : g_streams) {
    Capture* c = s->capture.get();
    if (!c || c->mode == cudaStreamCaptureModeRelaxed) continue;
    if (c->thread == std::this_thread::get_id() || c->mode == cudaStreamCaptureModeGlobal) {
      c->invalidated = true;
      refused = true;
    }
  }
  if (refused)
    std::fprintf(stderr, "cuda_emu: %s during a stream capture: refused, capture invalidated\n",
                 what);
  return refused;
}

void record(cudaStream_t s, std::shared_ptr<Node> node) {
  std::lock_guard<std::mutex> lk(g_api_mutex);
  s->capture->graph->nodes.push_back(std::move(node));
}

struct KernelNode final : Node {
  std::unique_ptr<Launch> launch;
  void run() override { execute(*launch); }
};
struct MemsetNode final : Node {
  void* dst;
  int value;
  size_t bytes;
  void run() override { std::memset(dst, value, bytes); }
};
struct MemcpyNode final : Node {
  void* dst;
  const void* src;
  size_t bytes;
  void run() override { std::memmove(dst, src, bytes); }
};
struct EventNode final : Node {
  cudaEvent_t event;
  void run() override {
    event->recorded = true;
    event->when = std::chrono::steady_clock::now();
  }
};
struct GraphNode final : Node {
  Nodes nodes;
  void run() override {
    for (auto& n : nodes) n->run();
  }
};

const char* kind_name(cudaMemcpyKind k) {
  switch (k) {
    case cudaMemcpyHostToHost: return "host to host";
    case cudaMemcpyHostToDevice: return "host to device";
    case cudaMemcpyDeviceToHost: return "device to host";
    case cudaMemcpyDeviceToDevice: return "device to device";
    default: return "default";
  }
}

cudaError_t copy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t s,
                 const char* api) {
  if (!valid_stream(s)) return err_note(cudaErrorInvalidResourceHandle, "%s: unknown stream %p", api, static_cast<void*>(s));
  if (bytes == 0) return cudaSuccess;
  const bool dd = is_device(dst, bytes), sd = is_device(src, bytes);
  if ((!dd && touches_device(dst, bytes)) || (!sd && touches_device(src, bytes)))
    return err_note(cudaErrorInvalidValue, "%s of %zu bytes runs past the end of a device allocation",
                    api, bytes);
  bool ok = true;
  switch (kind) {
    case cudaMemcpyHostToHost: ok = !dd && !sd; break;
    case cudaMemcpyHostToDevice: ok = dd && !sd; break;
    case cudaMemcpyDeviceToHost: ok = !dd && sd; break;
    case cudaMemcpyDeviceToDevice: ok = dd && sd; break;
    case cudaMemcpyDefault: break;
    default: ok = false;
  }
  if (!ok)
    return err_note(cudaErrorInvalidValue, "%s (%s): destination is %s memory, source %s memory",
                    api, kind_name(kind), dd ? "device" : "host", sd ? "device" : "host");
  if (Capture* c = capture_of(s)) {
    if (!dd || !sd) {
      c->invalidated = true;
      return err_note(cudaErrorStreamCaptureUnsupported,
                      "%s between host and device memory during a stream capture", api);
    }
    auto node = std::make_shared<MemcpyNode>();
    node->dst = dst;
    node->src = src;
    node->bytes = bytes;
    record(s, node);
    return cudaSuccess;
  }
  std::memmove(dst, src, bytes);
  return cudaSuccess;
}

cudaError_t set(void* dst, int value, size_t bytes, cudaStream_t s, const char* api) {
  if (!valid_stream(s)) return err_note(cudaErrorInvalidResourceHandle, "%s: unknown stream %p", api, static_cast<void*>(s));
  if (bytes == 0) return cudaSuccess;
  if (!is_device(dst, bytes))
    return err_note(cudaErrorInvalidValue, "%s of %zu bytes at %p: not (all) device memory", api,
                    bytes, dst);
  if (capture_of(s)) {
    auto node = std::make_shared<MemsetNode>();
    node->dst = dst;
    node->value = value;
    node->bytes = bytes;
    record(s, node);
    return cudaSuccess;
  }
  std::memset(dst, value, bytes);
  return cudaSuccess;
}

}  // namespace

// ---- kernel-side entry points (cuda_runtime.h) -------------------------------------------------
void fail_in_kernel(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  print_fatal(fmt, ap);
  va_end(ap);
  Worker* w = t_worker;
  if (w && w->launch) {
    const Launch& l = *w->launch;
    const uint3 t = t_thread_idx;
    std::fprintf(stderr,
                 "  in kernel %s launched at %s:%d with grid (%u,%u,%u), block (%u,%u,%u), %zu "
                 "bytes of dynamic shared memory; block (%u,%u,%u), thread (%u,%u,%u) (warp %u, "
                 "lane %u)\n",
                 l.kernel, l.file, l.line, l.grid.x, l.grid.y, l.grid.z, l.block.x, l.block.y,
                 l.block.z, l.smem, w->block.x, w->block.y, w->block.z, t.x, t.y, t.z, w->cur >> 5,
                 w->cur & 31);
  }
  std::abort();
}

void syncthreads(const char* file, int line) {
  Worker& w = worker_in_kernel("__syncthreads()");
  if (w.exited)
    fail_in_kernel("__syncthreads() at %s:%d reached after %u thread(s) of the block returned; "
                   "every thread must reach it (undefined behaviour on the GPU)",
                   file, line, w.exited);
  if (w.sync_arrived == 0) {
    w.sync_file = file;
    w.sync_line = line;
  } else if (line != w.sync_line || std::strcmp(file, w.sync_file) != 0) {
    fail_in_kernel("threads of one block wait at different __syncthreads() calls: %s:%d and "
                   "%s:%d (divergent barrier)",
                   w.sync_file, w.sync_line, file, line);
  }
  if (++w.sync_arrived == w.n) {
    w.sync_arrived = 0;
    for (unsigned t = 0; t < w.n; ++t)
      if (w.threads[t].state == kAtSync) w.threads[t].state = kReady;
    return;
  }
  w.wait_as(kAtSync);
}

uint64_t shfl_xor(unsigned mask, uint64_t bits, int lane_mask, const char* file, int line) {
  Worker& w = worker_in_kernel("__shfl_xor_sync");
  const unsigned t = w.cur, lane = t & 31, warp = t >> 5;
  const unsigned lanes = std::min(32u, w.n - warp * 32);
  const unsigned present = lanes == 32 ? ~0u : (1u << lanes) - 1;
  if (!(mask >> lane & 1u))
    fail_in_kernel("lane %u calls __shfl_xor_sync at %s:%d with mask 0x%08x, which excludes it",
                   lane, file, line, mask);
  if (mask & ~present)
    fail_in_kernel("__shfl_xor_sync at %s:%d: mask 0x%08x names lanes that do not exist (this warp "
                   "has %u lanes)", file, line, mask, lanes);
  const unsigned src = lane ^ unsigned(lane_mask);
  if (lane_mask < 0 || src >= 32)
    fail_in_kernel("__shfl_xor_sync at %s:%d: lane %u ^ %d reads lane %u, outside the warp", file,
                   line, lane, lane_mask, src);
  if (!(mask >> src & 1u))
    fail_in_kernel("__shfl_xor_sync at %s:%d: lane %u reads lane %u, which is not in the mask "
                   "0x%08x", file, line, lane, src, mask);
  WarpState& ws = w.warps[warp];
  if (mask & ws.exited)
    fail_in_kernel("__shfl_xor_sync at %s:%d with mask 0x%08x, but lanes 0x%08x of the warp have "
                   "returned", file, line, mask, mask & ws.exited);
  if (ws.arrived == 0) {
    ws.mask = mask;
    ws.file = file;
    ws.line = line;
  } else if (ws.mask != mask) {
    fail_in_kernel("lanes of one warp shuffle with different masks: 0x%08x (%s:%d) and 0x%08x "
                   "(%s:%d)", ws.mask, ws.file, ws.line, mask, file, line);
  } else if (ws.line != line || std::strcmp(ws.file, file) != 0) {
    fail_in_kernel("lanes of one warp are in different shuffles: %s:%d and %s:%d (divergent warp)",
                   ws.file, ws.line, file, line);
  }
  const int phase = ws.phase;
  ws.vals[phase][lane] = bits;
  ws.arrived |= 1u << lane;
  if (ws.arrived == mask) {
    // Last to arrive: release the others. The next shuffle fills the other buffer, and it cannot
    // complete before every lane has read this one.
    for (unsigned l = 0; l < 32; ++l)
      if ((mask >> l & 1u) && l != lane) w.threads[warp * 32 + l].state = kReady;
    ws.arrived = 0;
    ws.phase ^= 1;
  } else {
    w.wait_as(kAtShfl);
  }
  return ws.vals[phase][src];
}

void* shared_slot(const void* site, size_t bytes, size_t align) {
  Worker& w = worker_in_kernel("a __shared__ declaration");
  for (const auto& s : w.slots)
    if (s.first == site) return s.second;
  const size_t off = (w.used + align - 1) & ~(align - 1);
  if (off + bytes > kSharedLimit)
    fail_in_kernel("shared memory of the block: %zu bytes of dynamic plus static __shared__ "
                   "variables of %zu bytes exceed the 48 KiB a block may use",
                   w.launch->smem, off + bytes - ((w.launch->smem + 15) & ~size_t(15)));
  w.used = off + bytes;
  w.dirty = std::max(w.dirty, w.used);
  void* p = w.arena + off;
  w.slots.emplace_back(site, p);
  return p;
}

void* dynamic_shared(size_t align) {
  Worker& w = worker_in_kernel("extern __shared__");
  (void)align;  // the arena is 64-byte aligned and the dynamic part starts it
  return w.arena;
}

void check_launch_bounds(long long max_threads, const char* file, int line) {
  const long long n = (long long)g_block_dim.x * g_block_dim.y * g_block_dim.z;
  if (n > max_threads)
    fail_in_kernel("block of %lld threads for a kernel declared __launch_bounds__(%lld) (%s:%d): "
                   "the launch fails on the GPU",
                   n, max_threads, file, line);
}

void check_kernel_pointer(const Launch& l, int index, const void* p) {
  if (!p || is_device(p, 0)) return;
  fatal("kernel %s launched at %s:%d: argument %d is %p, which is not device memory (a host "
        "pointer, or a freed block)",
        l.kernel, l.file, l.line, index, p);
}

void submit(Launch* raw) {
  std::unique_ptr<Launch> l(raw);
  const dim3 g = l->grid, b = l->block;
  const unsigned long long threads = (unsigned long long)b.x * b.y * b.z;
  const char* problem = nullptr;
  if (g.x == 0 || g.y == 0 || g.z == 0) problem = "a grid dimension is 0";
  else if (b.x == 0 || b.y == 0 || b.z == 0) problem = "a block dimension is 0";
  else if (threads > kMaxThreads) problem = "more than 1024 threads per block";
  else if (b.x > 1024 || b.y > 1024 || b.z > 64) problem = "a block dimension over its limit (1024, 1024, 64)";
  else if (g.x > 2147483647u) problem = "grid.x over 2^31 - 1";
  else if (g.y > 65535 || g.z > 65535) problem = "grid.y or grid.z over 65535";
  else if (l->smem > kSharedLimit) problem = "more than 48 KiB of dynamic shared memory";
  if (problem)
    fatal("invalid launch of kernel %s at %s:%d: grid (%u,%u,%u), block (%u,%u,%u), %zu bytes of "
          "dynamic shared memory: %s",
          l->kernel, l->file, l->line, g.x, g.y, g.z, b.x, b.y, b.z, l->smem, problem);
  if (!valid_stream(l->stream))
    fatal("launch of kernel %s at %s:%d on stream %p, which does not exist (destroyed?)",
          l->kernel, l->file, l->line, static_cast<void*>(l->stream));
  if (capture_of(l->stream)) {
    auto node = std::make_shared<KernelNode>();
    node->launch = std::move(l);
    record(node->launch->stream, node);
    return;
  }
  execute(*l);
}

}  // namespace emu

void emu_check_float4_align(const void* p, const char* what) {
  if (reinterpret_cast<uintptr_t>(p) & 15u)
    emu::fail_in_kernel("misaligned float4 %s at %p (address %% 16 = %u): the GPU needs 16-byte "
                        "alignment", what, p, unsigned(reinterpret_cast<uintptr_t>(p) & 15u));
}

// ---- the runtime API ---------------------------------------------------------------------------
using emu::err;
using emu::err_note;

cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
  return device == 0 ? cudaSuccess : err_note(cudaErrorInvalidDevice, "cudaSetDevice(%d): the emulation has one device", device);
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int device) {
  if (device != 0) return err(cudaErrorInvalidDevice);
  std::memset(p, 0, sizeof *p);
  std::snprintf(p->name, sizeof p->name, "CPU emulation of CUDA (not a GPU)");
  p->totalGlobalMem = emu::memory_limit();
  p->sharedMemPerBlock = emu::kSharedLimit;
  p->warpSize = 32;
  p->maxThreadsPerBlock = 1024;
  p->maxThreadsDim[0] = 1024;
  p->maxThreadsDim[1] = 1024;
  p->maxThreadsDim[2] = 64;
  p->maxGridSize[0] = 2147483647;
  p->maxGridSize[1] = 65535;
  p->maxGridSize[2] = 65535;
  p->major = 0;  // no compute capability: nothing here is a GPU
  p->minor = 0;
  p->multiProcessorCount = emu::sm_count();
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device != 0) return err(cudaErrorInvalidDevice);
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = int(emu::kSharedLimit); break;
    case cudaDevAttrWarpSize: *value = 32; break;
    case cudaDevAttrMultiProcessorCount: *value = emu::sm_count(); break;
    // What a kernel's launcher asks before it uses a feature (TF32 tensor cores need 8.0): the
    // emulation provides those of 9.0 that the kernels use (mma.h). The device properties still
    // say 0.0, for reports: nothing here is a GPU.
    case cudaDevAttrComputeCapabilityMajor: *value = 9; break;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; break;
    default: return err(cudaErrorInvalidValue);
  }
  return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int* version) {
  *version = 0;
  return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int* version) {
  *version = 0;
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize() {
  if (emu::unsafe_call_refused("cudaDeviceSynchronize")) return err(cudaErrorStreamCaptureUnsupported);
  return cudaSuccess;
}

cudaError_t cudaGetLastError() {
  cudaError_t e = emu::t_last_error;
  emu::t_last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() { return emu::t_last_error; }

const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorIllegalState: return "cudaErrorIllegalState";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInsufficientDriver: return "cudaErrorInsufficientDriver";
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureInvalidated: return "cudaErrorStreamCaptureInvalidated";
    case cudaErrorStreamCaptureUnmatched: return "cudaErrorStreamCaptureUnmatched";
    case cudaErrorStreamCaptureWrongThread: return "cudaErrorStreamCaptureWrongThread";
  }
  return "cudaErrorUnknown";
}
const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorIllegalState: return "the operation would make the legacy stream depend on a capturing blocking stream";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInsufficientDriver: return "CUDA driver version is insufficient for CUDA runtime version";
    case cudaErrorStreamCaptureUnsupported: return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated: return "operation failed due to a previous error during capture";
    case cudaErrorStreamCaptureUnmatched: return "capture was not initiated in this stream";
    case cudaErrorStreamCaptureWrongThread: return "attempt to terminate a thread-local capture sequence from another thread";
  }
  return "unknown error";
}

cudaError_t cudaMalloc(void** ptr, size_t bytes) {
  *ptr = nullptr;
  if (emu::unsafe_call_refused("cudaMalloc")) return err(cudaErrorStreamCaptureUnsupported);
  if (bytes == 0) return cudaSuccess;
  const size_t page = emu::page_size();
  const size_t rounded = (bytes + 255) / 256 * 256;
  const size_t data = (rounded + page - 1) / page * page;
  {
    std::lock_guard<std::mutex> lk(emu::g_mem_mutex);
    if (emu::g_mem_used + rounded > emu::memory_limit()) return err(cudaErrorMemoryAllocation);
    emu::g_mem_used += rounded;
  }
  void* m = mmap(nullptr, data + 2 * page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED || mprotect(static_cast<char*>(m) + page, data, PROT_READ | PROT_WRITE) != 0) {
    if (m != MAP_FAILED) munmap(m, data + 2 * page);
    std::lock_guard<std::mutex> lk(emu::g_mem_mutex);
    emu::g_mem_used -= rounded;
    return err(cudaErrorMemoryAllocation);
  }
  char* base = static_cast<char*>(m);
  std::memset(base + page, 0xff, data);  // NaN: reads before writes show
  char* user = base + page + data - rounded;
  {
    std::lock_guard<std::mutex> lk(emu::g_mem_mutex);
    emu::g_allocs[reinterpret_cast<uintptr_t>(user)] = emu::Allocation{base, data + 2 * page, rounded};
  }
  *ptr = user;
  return cudaSuccess;
}

cudaError_t cudaFree(void* ptr) {
  if (!ptr) return cudaSuccess;
  emu::Allocation a;
  {
    std::lock_guard<std::mutex> lk(emu::g_mem_mutex);
    auto it = emu::g_allocs.find(reinterpret_cast<uintptr_t>(ptr));
    if (it == emu::g_allocs.end())
      return err_note(cudaErrorInvalidValue, "cudaFree(%p): not the start of a device allocation", ptr);
    a = it->second;
    emu::g_allocs.erase(it);
    emu::g_mem_used -= a.bytes;
  }
  munmap(a.map, a.map_len);  // later use of the block faults
  return cudaSuccess;
}

cudaError_t cudaMemset(void* dst, int value, size_t bytes) {
  if (emu::unsafe_call_refused("cudaMemset")) return err(cudaErrorStreamCaptureUnsupported);
  return emu::set(dst, value, bytes, nullptr, "cudaMemset");
}
cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t stream) {
  return emu::set(dst, value, bytes, stream, "cudaMemsetAsync");
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  if (emu::unsafe_call_refused("cudaMemcpy")) return err(cudaErrorStreamCaptureUnsupported);
  return emu::copy(dst, src, bytes, kind, nullptr, "cudaMemcpy");
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream) {
  return emu::copy(dst, src, bytes, kind, stream, "cudaMemcpyAsync");
}
cudaError_t cudaMemcpyPeerAsync(void* dst, int dst_device, const void* src, int src_device,
                                size_t bytes, cudaStream_t stream) {
  if (dst_device != 0 || src_device != 0) return err(cudaErrorInvalidDevice);
  return emu::copy(dst, src, bytes, cudaMemcpyDeviceToDevice, stream, "cudaMemcpyPeerAsync");
}

cudaError_t cudaStreamCreate(cudaStream_t* stream) { return cudaStreamCreateWithFlags(stream, 0); }
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned flags) {
  auto* s = new emu_stream();
  s->flags = flags;
  return emu::add_handle(emu::g_streams, s, stream);
}
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  const cudaError_t e = emu::remove_handle(emu::g_streams, stream);
  return e == cudaSuccess ? e : err(e);
}
cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  if (!emu::valid_stream(stream)) return err(cudaErrorInvalidResourceHandle);
  if (emu::Capture* c = emu::capture_of(stream)) {
    c->invalidated = true;
    return err_note(cudaErrorStreamCaptureUnsupported, "cudaStreamSynchronize on a capturing stream");
  }
  if (emu::unsafe_call_refused("cudaStreamSynchronize")) return err(cudaErrorStreamCaptureUnsupported);
  return cudaSuccess;  // work ran when it was queued
}

cudaError_t cudaEventCreate(cudaEvent_t* event) { return emu::add_handle(emu::g_events, new emu_event(), event); }
cudaError_t cudaEventDestroy(cudaEvent_t event) {
  const cudaError_t e = emu::remove_handle(emu::g_events, event);
  return e == cudaSuccess ? e : err(e);
}
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  {
    std::lock_guard<std::mutex> lk(emu::g_api_mutex);
    if (!emu::g_events.count(event)) return err(cudaErrorInvalidResourceHandle);
  }
  if (!emu::valid_stream(stream)) return err(cudaErrorInvalidResourceHandle);
  auto node = std::make_shared<emu::EventNode>();
  node->event = event;
  if (emu::capture_of(stream)) emu::record(stream, node);
  else node->run();
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  std::lock_guard<std::mutex> lk(emu::g_api_mutex);
  return emu::g_events.count(event) ? cudaSuccess : err(cudaErrorInvalidResourceHandle);
}
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  std::lock_guard<std::mutex> lk(emu::g_api_mutex);
  if (!emu::g_events.count(start) || !emu::g_events.count(end) || !start->recorded || !end->recorded)
    return err(cudaErrorInvalidResourceHandle);
  *ms = std::chrono::duration<float, std::milli>(end->when - start->when).count();
  return cudaSuccess;
}

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode mode) {
  if (!stream) return err_note(cudaErrorStreamCaptureUnsupported, "cudaStreamBeginCapture on the legacy default stream");
  std::lock_guard<std::mutex> lk(emu::g_api_mutex);
  if (!emu::g_streams.count(stream)) return err(cudaErrorInvalidResourceHandle);
  if (stream->capture) return err_note(cudaErrorIllegalState, "cudaStreamBeginCapture: the stream is already capturing");
  auto c = std::make_unique<emu::Capture>();
  c->graph = new emu_graph();
  emu::g_graphs.insert(c->graph);
  c->mode = mode;
  c->thread = std::this_thread::get_id();
  stream->capture = std::move(c);
  return cudaSuccess;
}
cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* graph) {
  *graph = nullptr;
  std::lock_guard<std::mutex> lk(emu::g_api_mutex);
  if (!stream || !emu::g_streams.count(stream)) return err(cudaErrorInvalidResourceHandle);
  if (!stream->capture) return err_note(cudaErrorIllegalState, "cudaStreamEndCapture: the stream is not capturing");
  emu::Capture& c = *stream->capture;
  if (c.mode != cudaStreamCaptureModeRelaxed && c.thread != std::this_thread::get_id())
    return err(cudaErrorStreamCaptureWrongThread);
  std::unique_ptr<emu::Capture> done = std::move(stream->capture);
  if (done->invalidated) {
    emu::g_graphs.erase(done->graph);
    delete done->graph;
    return err(cudaErrorStreamCaptureInvalidated);
  }
  *graph = done->graph;
  return cudaSuccess;
}
cudaError_t cudaStreamIsCapturing(cudaStream_t stream, cudaStreamCaptureStatus* status) {
  std::lock_guard<std::mutex> lk(emu::g_api_mutex);
  if (stream && !emu::g_streams.count(stream)) return err(cudaErrorInvalidResourceHandle);
  const emu::Capture* c = stream ? stream->capture.get() : nullptr;
  *status = !c ? cudaStreamCaptureStatusNone
               : c->invalidated ? cudaStreamCaptureStatusInvalidated : cudaStreamCaptureStatusActive;
  return cudaSuccess;
}
cudaError_t cudaThreadExchangeStreamCaptureMode(cudaStreamCaptureMode* mode) {
  std::swap(*mode, emu::t_capture_mode);
  return cudaSuccess;
}
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long) {
  std::lock_guard<std::mutex> lk(emu::g_api_mutex);
  if (!emu::g_graphs.count(graph)) return err(cudaErrorInvalidResourceHandle);
  auto* x = new emu_graph_exec();
  x->nodes = graph->nodes;  // nodes are immutable once recorded: shared with the graph
  emu::g_execs.insert(x);
  *exec = x;
  return cudaSuccess;
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream) {
  emu::Nodes nodes;
  {
    std::lock_guard<std::mutex> lk(emu::g_api_mutex);
    if (!emu::g_execs.count(exec)) return err(cudaErrorInvalidResourceHandle);
    if (stream && !emu::g_streams.count(stream)) return err(cudaErrorInvalidResourceHandle);
    nodes = exec->nodes;
  }
  if (emu::capture_of(stream)) {
    auto node = std::make_shared<emu::GraphNode>();
    node->nodes = std::move(nodes);
    emu::record(stream, node);
    return cudaSuccess;
  }
  for (auto& n : nodes) n->run();
  return cudaSuccess;
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  const cudaError_t e = emu::remove_handle(emu::g_execs, exec);
  return e == cudaSuccess ? e : err(e);
}
cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  const cudaError_t e = emu::remove_handle(emu::g_graphs, graph);
  return e == cudaSuccess ? e : err(e);
}

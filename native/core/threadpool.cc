#include "threadpool.h"
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace adashift {
namespace {

// Set while a thread runs a chunk: a parallel_for from inside a job runs inline instead of
// waiting on the pool it is part of.
thread_local bool t_in_job = false;

// A job is a range split into one chunk per participating thread. Workers are created once,
// on first use, never per op. Between jobs a worker first spins on the job counter for a short
// while (ADASHIFT_POOL_SPIN_US, default 300 microseconds), then sleeps on a condition variable;
// the caller likewise spins before sleeping while the other chunks finish. Training runs ops
// back to back, tens of microseconds apart: a futex sleep and wake per op (each several
// microseconds, more on a virtual machine) was a large share of the small ops' time.
class Pool {
 public:
  Pool() {
    unsigned hw = std::thread::hardware_concurrency();
    max_threads_ = int(hw == 0 ? 1 : hw);
    // ADASHIFT_POOL_THREADS: the pool's size in place of the hardware threads (for tests: a
    // 2-core machine then runs the jobs a 16-core one would split, slower but alike).
    if (const char* env = std::getenv("ADASHIFT_POOL_THREADS")) {
      const int v = std::atoi(env);
      if (v >= 1 && v <= 256) max_threads_ = v;
    }
    active_ = max_threads_;
    if (const char* env = std::getenv("ADASHIFT_NUM_THREADS")) {
      int v = std::atoi(env);
      if (v >= 1) active_ = std::min(v, max_threads_);
    }
    if (const char* env = std::getenv("ADASHIFT_POOL_SPIN_US")) {
      long v = std::atol(env);
      if (v >= 0) spin_ = std::chrono::microseconds(std::min<long>(v, 1000000));
    }
    for (int i = 1; i < max_threads_; ++i) workers_.emplace_back([this, i] { loop(i); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lk(m_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }
  int threads() const { return active_; }
  void set_threads(int n) { active_ = std::max(1, std::min(n, max_threads_)); }
  void run(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
    if (n <= 0) return;
    int64_t chunks = std::min<int64_t>(active_, std::max<int64_t>(1, n / std::max<int64_t>(grain, 1)));
    if (chunks <= 1 || t_in_job) { fn(0, n); return; }
    std::lock_guard<std::mutex> job_lock(job_m_);  // one job at a time
    {
      std::lock_guard<std::mutex> lk(m_);
      fn_ = &fn;
      n_ = n;
      chunks_ = chunks;
      pending_.store(int(chunks - 1), std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    run_chunk(0);
    if (!spin_until([this] { return pending_.load(std::memory_order_acquire) == 0; })) {
      std::unique_lock<std::mutex> lk(m_);
      done_cv_.wait(lk, [this] { return pending_.load(std::memory_order_acquire) == 0; });
    }
    fn_ = nullptr;
  }

 private:
  // Spins until done() or the spin time is up; true when done() held. After the first few
  // thousand checks it yields the core on every check, so a spinning thread never keeps a
  // runnable thread (the JS thread, the runtime's helpers) off a core for long. No PAUSE
  // instruction: under KVM a PAUSE loop makes the host deschedule the virtual CPU
  // (pause-loop exiting), measured here as stalls of about 300 microseconds.
  template <typename Done>
  bool spin_until(Done done) const {
    if (spin_.count() == 0) return done();
    const auto until = std::chrono::steady_clock::now() + spin_;
    for (unsigned i = 1;; ++i) {
      if (done()) return true;
      if (i >= 4096) std::this_thread::yield();
      if ((i & 63) == 0 && std::chrono::steady_clock::now() >= until) return done();
    }
  }
  void run_chunk(int64_t c) {
    int64_t b = n_ * c / chunks_, e = n_ * (c + 1) / chunks_;
    t_in_job = true;
    if (b < e) (*fn_)(b, e);
    t_in_job = false;
  }
  void loop(int id) {
    uint64_t seen = 0;
    for (;;) {
      // A new job is published by the generation counter (release, after the job's fields).
      if (!spin_until([&] { return generation_.load(std::memory_order_acquire) != seen; })) {
        std::unique_lock<std::mutex> lk(m_);
        cv_.wait(lk, [&] { return stop_ || generation_.load(std::memory_order_acquire) != seen; });
        if (stop_) return;
      }
      // The generation and the job's chunk count are read together, under the lock the caller
      // publishes them under. Read apart, a worker with no chunk in a job (id >= chunks) could
      // look after the caller had finished that job and was writing the next one's fields: it
      // then took the next job's chunk count for this one's, ran a chunk of a job not yet
      // published (through a cleared fn_: a crash; or twice: a count that never reached zero,
      // a hang). With two threads every job has the one worker in it, so only larger machines
      // (from 3 threads, when a job has fewer chunks than threads) met it.
      int64_t chunks;
      {
        std::lock_guard<std::mutex> lk(m_);
        seen = generation_.load(std::memory_order_acquire);
        chunks = chunks_;
      }
      if (id >= chunks) continue;
      run_chunk(id);
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> lk(m_);  // the caller may be about to sleep: no lost wake-up
        done_cv_.notify_one();
      }
    }
  }
  int max_threads_ = 1;
  std::atomic<int> active_{1};
  std::chrono::microseconds spin_{300};
  std::vector<std::thread> workers_;
  std::mutex m_, job_m_;
  std::condition_variable cv_, done_cv_;
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0, chunks_ = 0;
  std::atomic<int> pending_{0};
  std::atomic<uint64_t> generation_{0};
  bool stop_ = false;
};

Pool& pool() {
  static Pool* p = new Pool();  // never destroyed: workers may outlive static teardown order
  return *p;
}

}  // namespace

int num_threads() { return pool().threads(); }
void set_num_threads(int n) { pool().set_threads(n); }
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  pool().run(n, grain, fn);
}

}  // namespace adashift

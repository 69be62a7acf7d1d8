#include "threadpool.h"
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace adashift {
namespace {

// Set while a thread runs a chunk: a parallel_for from inside a job runs inline instead of
// waiting on the pool it is part of.
thread_local bool t_in_job = false;

// Workers sleep on a condition variable between jobs; a job is a range split into one chunk
// per participating thread. Created once, on first use, never per op.
class Pool {
 public:
  Pool() {
    unsigned hw = std::thread::hardware_concurrency();
    max_threads_ = int(hw == 0 ? 1 : hw);
    active_ = max_threads_;
    if (const char* env = std::getenv("ADASHIFT_NUM_THREADS")) {
      int v = std::atoi(env);
      if (v >= 1) active_ = std::min(v, max_threads_);
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
      pending_ = int(chunks - 1);
      ++generation_;
    }
    cv_.notify_all();
    run_chunk(0);
    std::unique_lock<std::mutex> lk(m_);
    done_cv_.wait(lk, [this] { return pending_ == 0; });
    fn_ = nullptr;
  }

 private:
  void run_chunk(int64_t c) {
    int64_t b = n_ * c / chunks_, e = n_ * (c + 1) / chunks_;
    t_in_job = true;
    if (b < e) (*fn_)(b, e);
    t_in_job = false;
  }
  void loop(int id) {
    uint64_t seen = 0;
    for (;;) {
      std::unique_lock<std::mutex> lk(m_);
      cv_.wait(lk, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      if (id >= chunks_) continue;
      lk.unlock();
      run_chunk(id);
      lk.lock();
      if (--pending_ == 0) done_cv_.notify_one();
    }
  }

  int max_threads_ = 1;
  std::atomic<int> active_{1};
  std::vector<std::thread> workers_;
  std::mutex m_, job_m_;
  std::condition_variable cv_, done_cv_;
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0, chunks_ = 0;
  int pending_ = 0;
  uint64_t generation_ = 0;
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

// A fixed pool of worker threads, created once per process and shared by every op (and every
// worker_threads instance of the addon). parallel_for splits [0, n) into contiguous chunks;
// the calling thread takes part. Calls from several threads at once are serialised.
#pragma once
#include <cstdint>
#include <functional>

namespace adashift {

int num_threads();
void set_num_threads(int n);  // 1 .. hardware threads; takes effect for the next op

// fn(begin, end) over chunks of at least `grain` iterations.
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace adashift

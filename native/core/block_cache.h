// The bookkeeping of the CUDA caching allocator: which device blocks are free for reuse and
// which belong to a captured CUDA graph. It holds no CUDA code (the raw allocation calls come
// in through Backend), so the CPU-only tests run every rule of it.
//
// Blocks are rounded (512 B below 1 MiB, 2 MiB above) and a freed block waits in a free list
// for the next request of its rounded size. All work runs on one stream per device, so a block
// freed after its last use can be handed to any later work on that stream.
//
// Graph pools. While a graph is captured, nothing runs: kernels are recorded, and every replay
// later touches the same addresses. So each capture gets a pool:
//  - a block handed out during the capture, and a block freed during it (even one allocated
//    before: a recorded kernel may read it), belongs to the pool;
//  - pool blocks freed during the capture are reused within it (the graph is one stream, so
//    its order is the recording order); freed after it, they go back to the pool, never to
//    other work, which a replay would overwrite;
//  - when the graph is released, its free pool blocks return to the shared free lists, and
//    its live ones (tensors the program still holds) follow when they are freed;
//  - a block of another graph's pool freed during a capture (a gradient an earlier graph made,
//    read by this one) is read by this graph's replays too: the capturing pool takes it over.
//    If the first graph is released, it joins the capturing pool's free blocks; if not, that
//    graph's replays still write it, so the capturing pool holds it unused ("pinned") and, when
//    released, gives it back to the first pool (or, that one released too, to the shared lists).
#pragma once
#include <cstddef>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace adashift {

class BlockCache {
 public:
  struct Backend {
    virtual ~Backend() = default;
    // nullptr when the device is out of memory; other failures throw.
    virtual void* raw_alloc(size_t bytes) = 0;
    virtual void raw_free(void* p) = 0;
    // Waits until queued work is done (before blocks are given back to the driver).
    virtual void wait_idle() = 0;
  };
  explicit BlockCache(Backend* backend) : backend_(backend) {}
  BlockCache(const BlockCache&) = delete;
  BlockCache& operator=(const BlockCache&) = delete;

  static size_t round_size(size_t bytes);

  // nullptr when out of memory even after giving the shared free blocks back (outside a
  // capture; during one, nothing may wait for the device).
  void* alloc(size_t bytes);
  void free(void* p, size_t bytes);

  // Opens a pool for a capture and returns its id (> 0). Throws ERR_CUDA_GRAPH when a capture
  // is already open.
  int begin_capture();
  // The open capture ends: later allocations come from the shared lists again. The pool stays.
  void end_capture();
  // The pool's graph is gone (or its capture failed): its blocks rejoin the shared lists.
  void release_pool(int pool);
  int capturing_pool() const;  // 0 when no capture is open

  size_t reserved() const;               // bytes held from the backend, in all
  size_t shared_free_bytes() const;      // free blocks any work may take
  size_t pool_bytes(int pool) const;     // bytes the pool holds, free or live
  size_t pool_count() const;             // pools not yet fully returned
  // Gives the shared free blocks back to the backend (pool blocks stay). Refused during a
  // capture.
  void empty_cache();

 private:
  struct Pinned {
    void* p;
    size_t bytes;
    int from;  // the pool whose replays still write it
  };
  struct Pool {
    std::multimap<size_t, void*> free_blocks;
    std::vector<Pinned> pinned;  // taken from a live pool during this pool's capture
    size_t bytes = 0;            // free, live and pinned blocks owned
    bool released = false;
  };
  void* take(std::multimap<size_t, void*>& list, size_t n);
  void adopt(int pool, void* p, size_t n);
  void disown(Pool& pool, void* p, size_t n);
  void release_shared();  // caller holds m_

  Backend* backend_;
  mutable std::mutex m_;
  std::multimap<size_t, void*> shared_;
  size_t shared_bytes_ = 0;
  size_t reserved_ = 0;
  std::map<int, Pool> pools_;
  std::unordered_map<void*, int> owner_;  // block -> pool, for pool blocks only
  int capturing_ = 0;
  int next_pool_ = 1;
};

}  // namespace adashift

#include "block_cache.h"
#include "common.h"

namespace adashift {

size_t BlockCache::round_size(size_t n) {
  if (n == 0) n = 1;
  if (n < (size_t(1) << 20)) return (n + 511) / 512 * 512;
  const size_t big = size_t(2) << 20;
  return (n + big - 1) / big * big;
}

void* BlockCache::take(std::multimap<size_t, void*>& list, size_t n) {
  auto it = list.find(n);
  if (it == list.end()) return nullptr;
  void* p = it->second;
  list.erase(it);
  return p;
}

void BlockCache::adopt(int pool, void* p, size_t n) {
  owner_[p] = pool;
  pools_[pool].bytes += n;
}

// Takes a block out of a pool's ownership into the shared free lists.
void BlockCache::disown(Pool& pool, void* p, size_t n) {
  owner_.erase(p);
  pool.bytes -= n;
  shared_.emplace(n, p);
  shared_bytes_ += n;
}

void* BlockCache::alloc(size_t bytes) {
  const size_t n = round_size(bytes);
  std::lock_guard<std::mutex> lk(m_);
  if (capturing_) {
    if (void* p = take(pools_[capturing_].free_blocks, n)) return p;
  }
  if (void* p = take(shared_, n)) {
    shared_bytes_ -= n;
    if (capturing_) adopt(capturing_, p, n);
    return p;
  }
  void* p = backend_->raw_alloc(n);
  if (!p && !capturing_ && shared_bytes_ > 0) {
    // Give the cached blocks of other sizes back and try once more.
    backend_->wait_idle();
    release_shared();
    p = backend_->raw_alloc(n);
  }
  if (!p) return nullptr;
  reserved_ += n;
  if (capturing_) adopt(capturing_, p, n);
  return p;
}

void BlockCache::free(void* p, size_t bytes) {
  if (!p) return;
  const size_t n = round_size(bytes);
  std::lock_guard<std::mutex> lk(m_);
  auto own = owner_.find(p);
  if (own != owner_.end()) {
    const int id = own->second;
    Pool& pool = pools_[id];
    if (capturing_ && id != capturing_) {
      // Another graph's block, read by the capture: the capturing pool takes it over.
      pool.bytes -= n;
      owner_[p] = capturing_;
      Pool& cap = pools_[capturing_];
      cap.bytes += n;
      if (pool.released) {
        cap.free_blocks.emplace(n, p);
        if (pool.bytes == 0) pools_.erase(id);
      } else {
        cap.pinned.push_back(Pinned{p, n, id});
      }
      return;
    }
    if (!pool.released) {
      pool.free_blocks.emplace(n, p);
      return;
    }
    disown(pool, p, n);
    if (pool.bytes == 0) pools_.erase(id);
    return;
  }
  if (capturing_) {
    // A recorded kernel may still read it on every replay: the graph keeps it.
    adopt(capturing_, p, n);
    pools_[capturing_].free_blocks.emplace(n, p);
    return;
  }
  shared_.emplace(n, p);
  shared_bytes_ += n;
}

int BlockCache::begin_capture() {
  std::lock_guard<std::mutex> lk(m_);
  AS_CHECK(capturing_ == 0, CudaGraph,
           "a CUDA graph is already being captured on this device; end that capture first");
  capturing_ = next_pool_++;
  pools_[capturing_];
  return capturing_;
}

void BlockCache::end_capture() {
  std::lock_guard<std::mutex> lk(m_);
  capturing_ = 0;
}

void BlockCache::release_pool(int id) {
  std::lock_guard<std::mutex> lk(m_);
  auto it = pools_.find(id);
  if (it == pools_.end() || it->second.released) return;
  AS_CHECK(capturing_ != id, CudaGraph, "release_pool: the pool's capture is still open");
  Pool& pool = it->second;
  pool.released = true;
  // Move the free blocks; the live ones rejoin the shared lists when freed.
  for (auto& kv : pool.free_blocks) disown(pool, kv.second, kv.first);
  pool.free_blocks.clear();
  // Pinned blocks go back to the live pool whose replays write them (as its free blocks:
  // shared when it is released), else to the shared lists.
  for (const Pinned& b : pool.pinned) {
    auto from = pools_.find(b.from);
    if (from != pools_.end() && !from->second.released) {
      pool.bytes -= b.bytes;
      owner_[b.p] = b.from;
      from->second.bytes += b.bytes;
      from->second.free_blocks.emplace(b.bytes, b.p);
    } else {
      disown(pool, b.p, b.bytes);
    }
  }
  pool.pinned.clear();
  if (pool.bytes == 0) pools_.erase(it);
}

int BlockCache::capturing_pool() const {
  std::lock_guard<std::mutex> lk(m_);
  return capturing_;
}

size_t BlockCache::reserved() const {
  std::lock_guard<std::mutex> lk(m_);
  return reserved_;
}

size_t BlockCache::shared_free_bytes() const {
  std::lock_guard<std::mutex> lk(m_);
  return shared_bytes_;
}

size_t BlockCache::pool_bytes(int id) const {
  std::lock_guard<std::mutex> lk(m_);
  auto it = pools_.find(id);
  return it == pools_.end() ? 0 : it->second.bytes;
}

size_t BlockCache::pool_count() const {
  std::lock_guard<std::mutex> lk(m_);
  return pools_.size();
}

void BlockCache::release_shared() {
  for (auto& kv : shared_) {
    backend_->raw_free(kv.second);
    reserved_ -= kv.first;
  }
  shared_.clear();
  shared_bytes_ = 0;
}

void BlockCache::empty_cache() {
  std::lock_guard<std::mutex> lk(m_);
  AS_CHECK(capturing_ == 0, CudaGraph,
           "emptyCache() cannot run while a CUDA graph is being captured on the device");
  backend_->wait_idle();
  release_shared();
}

}  // namespace adashift

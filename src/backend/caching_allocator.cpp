#include "backend/caching_allocator.h"

#include <algorithm>
#include <bit>

#include "core/check.h"

namespace dsv3 {

namespace {
constexpr size_t kMiB = size_t(1) << 20;
std::string mib(size_t b) { return cat(double(b) / double(kMiB), " MiB"); }
}  // namespace

size_t CachingAllocator::round_size(size_t bytes) {
  if (bytes == 0) bytes = 1;
  if (bytes < kMiB) return (bytes + 511) / 512 * 512;
  if (bytes <= 64 * kMiB) {  // 16 classes per power of two: step = 2^floor(log2) / 16
    const size_t step = std::bit_floor(bytes) / 16;
    return (bytes + step - 1) / step * step;
  }
  return (bytes + 2 * kMiB - 1) / (2 * kMiB) * (2 * kMiB);
}

CachingAllocator::~CachingAllocator() {
  try {
    std::lock_guard<std::mutex> lock(mu_);
    release_cached_locked();
  } catch (...) {  // a destructor must not throw; the process is ending anyway
  }
}

void* CachingAllocator::allocate(size_t bytes, void* stream) {
  std::lock_guard<std::mutex> lock(mu_);
  const size_t size = round_size(bytes);
  stats_.requests++;
  Block b;
  auto it = cached_.lower_bound(size);
  if (it != cached_.end() && reusable(it->first, size)) {
    b = it->second;
    cached_.erase(it);
    stats_.cached -= b.size;
    stats_.cache_hits++;
    if (b.event) {
      if (b.stream != stream) raw_.wait(stream, b.event);  // same stream: ordered already
      raw_.destroy(b.event);
      b.event = nullptr;
    }
  } else {
    void* p = raw_.allocate(size);
    if (!p) {
      stats_.oom_retries++;
      release_cached_locked();
      p = raw_.allocate(size);
    }
    DSV3_CHECK(p, "out of GPU memory allocating ", mib(bytes), " (dsv3 holds ", mib(stats_.reserved),
               ", ", mib(stats_.in_use), " of it in use; device: ", raw_.describe(),
               "). Lower --batch or --seq_len, or use --recompute block");
    b.ptr = p;
    b.size = size;
    stats_.raw_allocs++;
    stats_.reserved += size;
    stats_.peak_reserved = std::max(stats_.peak_reserved, stats_.reserved);
  }
  b.stream = stream;
  b.requested = bytes;
  live_[b.ptr] = b;
  stats_.in_use += bytes;
  stats_.peak_in_use = std::max(stats_.peak_in_use, stats_.in_use);
  return b.ptr;
}

void CachingAllocator::free(void* p, void* stream) {
  if (!p) return;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = live_.find(p);
  DSV3_CHECK(it != live_.end(), "device free of a pointer the allocator did not hand out (internal error)");
  Block b = it->second;
  live_.erase(it);
  stats_.in_use -= b.requested;
  b.stream = stream;
  b.event = raw_.record(stream);
  b.requested = 0;
  stats_.cached += b.size;
  cached_.emplace(b.size, b);
}

void CachingAllocator::release_cached_locked() {
  for (auto& [size, b] : cached_) {
    if (b.event) {
      raw_.synchronize(b.event);
      raw_.destroy(b.event);
    }
    raw_.release(b.ptr);
    stats_.reserved -= b.size;
    stats_.raw_frees++;
  }
  cached_.clear();
  stats_.cached = 0;
}

void CachingAllocator::release_cached() {
  std::lock_guard<std::mutex> lock(mu_);
  release_cached_locked();
}

CachingAllocator::Stats CachingAllocator::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

void CachingAllocator::reset_peak() {
  std::lock_guard<std::mutex> lock(mu_);
  stats_.peak_in_use = stats_.in_use;
  stats_.peak_reserved = stats_.reserved;
}

}  // namespace dsv3

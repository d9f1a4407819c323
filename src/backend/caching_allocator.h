// A caching allocator for device memory (PyTorch's CUDACachingAllocator, reduced to what dsv3
// needs): cudaMalloc and cudaFree are slow and synchronise the device, so freed blocks are kept
// and handed out again. Plain C++: the raw memory and the stream ordering come through
// RawDeviceMemory, which the CUDA backend implements on cudaMalloc / cudaEvent and the unit tests
// (tests/cpp/test_cuda_host.cpp) implement on malloc, so the bookkeeping is tested without a GPU.
//
// Rules:
// - Sizes are rounded up to a size class (round_size): 512-byte steps below 1 MiB, 16 classes per
//   power of two up to 64 MiB (at most 6.25% waste), 2 MiB steps above.
// - A request takes the smallest cached block of at least its class, provided the block is no
//   larger than 1.25x the class (a huge block never serves a small request); else raw memory.
//   Blocks are never split or merged.
// - A block freed after use on stream S may be reused at once on S (stream order protects it);
//   a request on another stream first makes its stream wait for the event recorded at the free.
// - When raw allocation fails, every cached block is released (after its event) and the request
//   retried once; a second failure is an Error naming the sizes and what the device says.
// - in_use / peak count the bytes callers asked for (the seam's MemoryStats); reserved counts the
//   rounded bytes held from the device, cached blocks included.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>

namespace dsv3 {

// Device memory and stream ordering, as the allocator needs them. Streams and events are opaque.
class RawDeviceMemory {
 public:
  virtual ~RawDeviceMemory() = default;
  virtual void* allocate(size_t bytes) = 0;  // nullptr when the device is out of memory
  virtual void release(void* p) = 0;
  virtual void* record(void* stream) = 0;              // an event after the work queued on stream
  virtual void wait(void* stream, void* event) = 0;    // stream waits for the event
  virtual void synchronize(void* event) = 0;           // the host waits for the event
  virtual void destroy(void* event) = 0;
  virtual std::string describe() = 0;                  // free / total memory, for error messages
};

class CachingAllocator {
 public:
  struct Stats {
    size_t in_use = 0, peak_in_use = 0;      // bytes asked for, live
    size_t reserved = 0, peak_reserved = 0;  // rounded bytes held from the device
    size_t cached = 0;                       // rounded bytes of free blocks kept for reuse
    uint64_t requests = 0, cache_hits = 0, raw_allocs = 0, raw_frees = 0, oom_retries = 0;
  };

  explicit CachingAllocator(RawDeviceMemory& raw) : raw_(raw) {}
  ~CachingAllocator();  // returns cached blocks to the device (live blocks are the owners')
  CachingAllocator(const CachingAllocator&) = delete;
  CachingAllocator& operator=(const CachingAllocator&) = delete;

  void* allocate(size_t bytes, void* stream);
  // p's last use was queued on `stream`. Freeing a pointer not from allocate() is an Error.
  void free(void* p, void* stream);
  void release_cached();  // every cached block back to the device
  Stats stats() const;
  void reset_peak();

  static size_t round_size(size_t bytes);
  // Whether a cached block of `block` bytes may serve a request of class `rounded`.
  static bool reusable(size_t block, size_t rounded) { return block >= rounded && block <= rounded + rounded / 4; }

 private:
  struct Block {
    void* ptr = nullptr;
    size_t size = 0;       // rounded
    size_t requested = 0;  // live blocks: what the caller asked for
    void* stream = nullptr;
    void* event = nullptr;  // cached blocks: recorded at the free
  };
  void release_cached_locked();
  RawDeviceMemory& raw_;
  mutable std::mutex mu_;
  std::unordered_map<void*, Block> live_;
  std::multimap<size_t, Block> cached_;  // by size
  Stats stats_;
};

}  // namespace dsv3

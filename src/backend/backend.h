// The backend seam (STYLE.md point 3): where memory lives, how bytes move, and in what order work
// runs. About a dozen entries, as ggml's: allocate, free, copy, zero, streams, events, memory
// statistics. Everything a model or optimizer does to device memory goes through here or through
// an op (src/ops); model code never calls memset, memcpy or OpenMP itself.
//
// The CPU backend is always linked (backend/cpu); the CUDA side is backend/cuda/*.cu when
// DSV3_CUDA=ON, else backend/cuda_stub.cpp, which answers "built without CUDA" (chosen by CMake at
// link time, never by #ifdef). On the CPU, streams and events exist as values but do nothing:
// every call completes before it returns.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <unordered_map>

#include "tensor/tensor.h"

namespace dsv3 {

struct Stream;  // cudaStream_t on CUDA; the CPU runs everything inline (null stream)
struct Event;   // cudaEvent_t on CUDA
struct Graph;   // an instantiated CUDA graph

// Where an op runs: its device, and on CUDA the stream it is ordered on.
struct Exec {
  Device device = Device::CPU;
  Stream* stream = nullptr;
};

namespace backend {

bool available(Device d);       // CPU: always; CUDA: built with CUDA and a device is visible
std::string describe(Device d);  // "cpu (2 threads)", "NVIDIA H200 (sm_90, 143771 MiB)", ...

// Zero-initialised memory, 64-byte aligned on the CPU. Counted in memory_stats().
void* alloc(Device d, size_t bytes);
void free(Device d, void* p, size_t bytes);

// dst = src: same dtype and element count, any pair of devices; ordered on ex.stream.
void copy(const Exec& ex, const Tensor& dst, const Tensor& src);
void zero(const Exec& ex, const Tensor& t);
void synchronize(const Exec& ex);  // waits until the work queued on ex.stream is done

Stream* stream_create(Device d);
void stream_destroy(Device d, Stream* s);
Event* event_create(Device d);
void event_destroy(Device d, Event* e);
void event_record(Event* e, const Exec& ex);  // marks the point reached by ex.stream
void event_wait(const Exec& ex, Event* e);    // ex.stream waits for e (the host does not)
void event_synchronize(Device d, Event* e);   // the host waits for e

struct MemoryStats {
  size_t in_use = 0;    // bytes allocated through alloc() and not freed
  size_t peak = 0;      // highest in_use since the start or reset_peak()
  size_t reserved = 0;  // CUDA: bytes the caching allocator holds from the device (>= in_use)
};
MemoryStats memory_stats(Device d);
void reset_peak(Device d);

// Replays a region of device work as a CUDA graph: hundreds of kernel launches become one. On
// the CPU, and on CUDA when disabled, run() just calls fn. On CUDA the first run of a key is eager
// (it sizes the ops' scratch memory), the second captures fn into a graph and launches it, later
// ones launch the graph. fn must queue device work on ex.stream only, never wait for it or read
// it on the host, and queue the same work for the same key (same buffers, same scalars); a
// region that cannot be captured runs eagerly from then on.
class GraphCache {
 public:
  explicit GraphCache(bool enabled = false) : enabled_(enabled) {}
  ~GraphCache() { clear(); }
  GraphCache(const GraphCache&) = delete;
  GraphCache& operator=(const GraphCache&) = delete;
  bool enabled() const { return enabled_; }
  void run(const Exec& ex, uint64_t key, const std::function<void()>& fn);
  void clear();
  size_t graphs() const;  // captured so far

 private:
  struct Entry {
    int runs = 0;
    Graph* graph = nullptr;
    bool eager_only = false;  // capture failed
  };
  bool enabled_;
  std::unordered_map<uint64_t, Entry> entries_;
};

}  // namespace backend

// Owns device memory for `numel` elements of `dtype` (zero-initialised); view() is the Tensor.
class Buffer {
 public:
  Buffer() = default;
  Buffer(Device d, DType t, size_t numel)
      : t_(backend::alloc(d, numel * dtype_size(t)), numel, t, d) {}
  ~Buffer() { release(); }
  Buffer(Buffer&& o) noexcept : t_(o.t_) { o.t_ = {}; }
  Buffer& operator=(Buffer&& o) noexcept {
    if (this != &o) {
      release();
      t_ = o.t_;
      o.t_ = {};
    }
    return *this;
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  const Tensor& view() const { return t_; }
  size_t numel() const { return t_.numel; }
  DType dtype() const { return t_.dtype; }
  Device device() const { return t_.device; }
  explicit operator bool() const { return bool(t_); }

 private:
  void release() {
    if (t_.data) backend::free(t_.device, t_.data, t_.bytes());
    t_ = {};
  }
  Tensor t_;
};

// What an op says when ex.device has no kernel for it yet (the CUDA issue adds them).
[[noreturn]] void no_kernel(const Exec& ex, const char* op);

// CUDA side of the seam: implemented in backend/cuda/*.cu or by backend/cuda_stub.cpp.
namespace cuda {
bool available();
std::string describe();
void* alloc(size_t bytes);
void free(void* p);
// kind: 0 host->device, 1 device->host, 2 device->device
void copy(void* dst, const void* src, size_t bytes, int kind, Stream* s);
void memset_zero(void* p, size_t bytes, Stream* s);
void synchronize(Stream* s);
Stream* stream_create();
void stream_destroy(Stream* s);
Event* event_create();
void event_destroy(Event* e);
void event_record(Event* e, Stream* s);
void event_wait(Stream* s, Event* e);
void event_synchronize(Event* e);
size_t memory_reserved();
void graph_begin(Stream* s);
Graph* graph_end(Stream* s);  // nullptr when the captured work cannot form a graph
void graph_launch(Graph* g, Stream* s);
void graph_destroy(Graph* g);
}  // namespace cuda

}  // namespace dsv3

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
#include <string>

#include "tensor/tensor.h"

namespace dsv3 {

struct Stream;  // cudaStream_t on CUDA; the CPU runs everything inline (null stream)
struct Event;   // cudaEvent_t on CUDA

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
  size_t in_use = 0;  // bytes allocated through alloc() and not freed
  size_t peak = 0;    // highest in_use since the start or reset_peak()
};
MemoryStats memory_stats(Device d);
void reset_peak(Device d);

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
}  // namespace cuda

}  // namespace dsv3

// CUDA memory, copies, streams and events behind the backend seam. Op kernels arrive with the
// CUDA backend issue; until then ops answer no_kernel() for Device::CUDA.
#include <cuda_runtime.h>

#include "backend/backend.h"
#include "core/check.h"

namespace dsv3::cuda {

static void check(cudaError_t e, const char* what) {
  DSV3_CHECK(e == cudaSuccess, "CUDA ", what, " failed: ", cudaGetErrorString(e));
}
static cudaStream_t st(Stream* s) { return reinterpret_cast<cudaStream_t>(s); }
static cudaEvent_t ev(Event* e) { return reinterpret_cast<cudaEvent_t>(e); }

bool available() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

std::string describe() {
  if (!available()) return "built with CUDA, no device visible";
  cudaDeviceProp p{};
  check(cudaGetDeviceProperties(&p, 0), "cudaGetDeviceProperties");
  return cat(p.name, " (sm_", p.major, p.minor, ", ", p.totalGlobalMem >> 20, " MiB)");
}

void* alloc(size_t bytes) {
  void* p = nullptr;
  check(cudaMalloc(&p, bytes ? bytes : 1), "cudaMalloc");
  check(cudaMemset(p, 0, bytes), "cudaMemset");
  return p;
}

void free(void* p) { check(cudaFree(p), "cudaFree"); }

void copy(void* dst, const void* src, size_t bytes, int kind, Stream* s) {
  const cudaMemcpyKind k = kind == 0   ? cudaMemcpyHostToDevice
                           : kind == 1 ? cudaMemcpyDeviceToHost
                                       : cudaMemcpyDeviceToDevice;
  check(cudaMemcpyAsync(dst, src, bytes, k, st(s)), "cudaMemcpyAsync");
  if (kind == 1) check(cudaStreamSynchronize(st(s)), "cudaStreamSynchronize");  // host reads next
}

void memset_zero(void* p, size_t bytes, Stream* s) {
  check(cudaMemsetAsync(p, 0, bytes, st(s)), "cudaMemsetAsync");
}
void synchronize(Stream* s) { check(cudaStreamSynchronize(st(s)), "cudaStreamSynchronize"); }

Stream* stream_create() {
  cudaStream_t s = nullptr;
  check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate");
  return reinterpret_cast<Stream*>(s);
}
void stream_destroy(Stream* s) { check(cudaStreamDestroy(st(s)), "cudaStreamDestroy"); }
Event* event_create() {
  cudaEvent_t e = nullptr;
  check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate");
  return reinterpret_cast<Event*>(e);
}
void event_destroy(Event* e) { check(cudaEventDestroy(ev(e)), "cudaEventDestroy"); }
void event_record(Event* e, Stream* s) { check(cudaEventRecord(ev(e), st(s)), "cudaEventRecord"); }
void event_wait(Stream* s, Event* e) {
  check(cudaStreamWaitEvent(st(s), ev(e), 0), "cudaStreamWaitEvent");
}
void event_synchronize(Event* e) { check(cudaEventSynchronize(ev(e)), "cudaEventSynchronize"); }

}  // namespace dsv3::cuda

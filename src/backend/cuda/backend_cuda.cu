// CUDA memory, copies, streams, events and graphs behind the backend seam (backend.h), and the
// runtime services the op launchers use (runtime.h): per-stream scratch, the device error flag,
// launch checks. Device memory comes from a caching allocator over plain cudaMalloc (never
// managed memory).
#include "backend/cuda/runtime.h"

#include <cstdlib>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "backend/backend.h"
#include "backend/caching_allocator.h"
#include "core/check.h"

namespace dsv3::cuda {

void check(cudaError_t e, const char* what) {
  DSV3_CHECK(e == cudaSuccess, "CUDA ", what, " failed: ", cudaGetErrorString(e));
}

cudaStream_t stream_of(Stream* s) {
  return s ? reinterpret_cast<cudaStream_t>(s) : cudaStreamPerThread;
}

namespace {

cudaEvent_t ev(Event* e) { return reinterpret_cast<cudaEvent_t>(e); }
cudaStream_t raw_stream(void* s) { return stream_of(static_cast<Stream*>(s)); }

class CudaMemory final : public RawDeviceMemory {
 public:
  void* allocate(size_t bytes) override {
    void* p = nullptr;
    const cudaError_t e = cudaMalloc(&p, bytes);
    if (e == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();  // clear the sticky-free error state of a failed malloc
      return nullptr;
    }
    check(e, "cudaMalloc");
    return p;
  }
  void release(void* p) override { check(cudaFree(p), "cudaFree"); }
  void* record(void* stream) override {
    cudaEvent_t e = nullptr;
    check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate");
    check(cudaEventRecord(e, raw_stream(stream)), "cudaEventRecord");
    return e;
  }
  void wait(void* stream, void* event) override {
    check(cudaStreamWaitEvent(raw_stream(stream), static_cast<cudaEvent_t>(event), 0),
          "cudaStreamWaitEvent");
  }
  void synchronize(void* event) override {
    check(cudaEventSynchronize(static_cast<cudaEvent_t>(event)), "cudaEventSynchronize");
  }
  void destroy(void* event) override {
    check(cudaEventDestroy(static_cast<cudaEvent_t>(event)), "cudaEventDestroy");
  }
  std::string describe() override {
    size_t free_b = 0, total = 0;
    if (cudaMemGetInfo(&free_b, &total) != cudaSuccess) return "memory info unavailable";
    return cat(free_b >> 20, " MiB free of ", total >> 20, " MiB");
  }
};

struct ScratchBlock {
  void* p = nullptr;
  size_t bytes = 0;
};

// Process-wide CUDA state. Never destroyed: at exit the CUDA runtime may already be gone, and
// the driver reclaims the memory.
struct State {
  CudaMemory raw;
  CachingAllocator alloc{raw};
  std::mutex mu;
  std::unordered_map<cudaStream_t, ScratchBlock> scratch;
  // Once a graph exists, a grown-out-of scratch block may still be baked into it: such blocks
  // are kept, never reused (scratch stays small next to activations).
  bool graphs_exist = false;
  std::vector<void*> retired_scratch;
  std::unordered_map<const void*, size_t> smem_limit;
  int* err_host = nullptr;
  int* err_dev = nullptr;
  bool sync_each_launch = false;
  State() {
    const char* s = std::getenv("DSV3_CUDA_SYNC");
    sync_each_launch = s && s[0] == '1';
    check(cudaHostAlloc(&err_host, sizeof(int), cudaHostAllocMapped), "cudaHostAlloc (error flag)");
    *err_host = 0;
    check(cudaHostGetDevicePointer(reinterpret_cast<void**>(&err_dev), err_host, 0),
          "cudaHostGetDevicePointer (error flag)");
  }
};
State& state() {
  static State* s = new State();
  return *s;
}

const char* device_error_text(int code) {
  switch (code) {
    case 1: return "an expert index outside [0, experts) reached moe_permutation";
    case 2: return "grouped GEMM expert offsets decrease or exceed the rows of the buffers";
    case 3: return "a token id outside the vocabulary reached embedding_forward";
  }
  return "unknown device error code";
}

// Reads (and clears) the flag once the work before it is done.
void check_device_errors() {
  State& s = state();
  const int code = *static_cast<volatile int*>(s.err_host);
  if (code == 0) return;
  *s.err_host = 0;
  fail("CUDA kernel reported: ", device_error_text(code), " (internal error)");
}

}  // namespace

int* device_error_flag() { return state().err_dev; }

void* scratch(Stream* s, size_t bytes) {
  State& st = state();
  const cudaStream_t cs = stream_of(s);
  std::lock_guard<std::mutex> lock(st.mu);
  ScratchBlock& b = st.scratch[cs];
  if (bytes <= b.bytes) return b.p;
  cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
  check(cudaStreamIsCapturing(cs, &capturing), "cudaStreamIsCapturing");
  DSV3_CHECK(capturing == cudaStreamCaptureStatusNone, "CUDA graph capture needs ", bytes,
             " bytes of op scratch, the eager warm-up run only ", b.bytes, " (internal error)");
  if (b.p) {
    if (st.graphs_exist) st.retired_scratch.push_back(b.p);
    else st.alloc.free(b.p, s);
  }
  const size_t grown = std::max(bytes, b.bytes * 2);
  b.p = st.alloc.allocate(grown, s);
  b.bytes = grown;
  return b.p;
}

void allow_dynamic_smem(const void* kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return;
  State& st = state();
  std::lock_guard<std::mutex> lock(st.mu);
  size_t& have = st.smem_limit[kernel];
  if (have >= bytes) return;
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)),
        "cudaFuncSetAttribute (dynamic shared memory)");
  have = bytes;
}

void after_launch(const char* op, Stream* s) {
  const cudaError_t e = cudaGetLastError();
  DSV3_CHECK(e == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(e));
  if (!state().sync_each_launch) return;
  const cudaError_t r = cudaStreamSynchronize(stream_of(s));
  DSV3_CHECK(r == cudaSuccess, op, ": CUDA kernel failed: ", cudaGetErrorString(r));
  check_device_errors();
}

// ---- the seam (backend.h namespace cuda) ------------------------------------------------------

bool available() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

std::string describe() {
  if (!available())
    return "no GPU is visible to this CUDA build (check nvidia-smi and CUDA_VISIBLE_DEVICES)";
  int dev = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  cudaDeviceProp p{};
  check(cudaGetDeviceProperties(&p, dev), "cudaGetDeviceProperties");
  return cat(p.name, " (sm_", p.major, p.minor, ", ", p.totalGlobalMem >> 20, " MiB, ",
             p.multiProcessorCount, " SMs)");
}

void* alloc(size_t bytes) {
  void* p = state().alloc.allocate(bytes, nullptr);
  check(cudaMemsetAsync(p, 0, bytes, cudaStreamPerThread), "cudaMemsetAsync");
  return p;
}

void free(void* p) { state().alloc.free(p, nullptr); }

size_t memory_reserved() { return state().alloc.stats().reserved; }

void copy(void* dst, const void* src, size_t bytes, int kind, Stream* s) {
  const cudaMemcpyKind k = kind == 0   ? cudaMemcpyHostToDevice
                           : kind == 1 ? cudaMemcpyDeviceToHost
                                       : cudaMemcpyDeviceToDevice;
  check(cudaMemcpyAsync(dst, src, bytes, k, stream_of(s)), "cudaMemcpyAsync");
  if (kind == 1) synchronize(s);  // the host reads next
}

void memset_zero(void* p, size_t bytes, Stream* s) {
  check(cudaMemsetAsync(p, 0, bytes, stream_of(s)), "cudaMemsetAsync");
}

void synchronize(Stream* s) {
  check(cudaStreamSynchronize(stream_of(s)),
        "work on the GPU (a kernel before this point failed; DSV3_CUDA_SYNC=1 names it)");
  check_device_errors();
}

Stream* stream_create() {
  cudaStream_t s = nullptr;
  check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate");
  return reinterpret_cast<Stream*>(s);
}
void stream_destroy(Stream* s) { check(cudaStreamDestroy(stream_of(s)), "cudaStreamDestroy"); }
Event* event_create() {
  cudaEvent_t e = nullptr;
  check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate");
  return reinterpret_cast<Event*>(e);
}
void event_destroy(Event* e) { check(cudaEventDestroy(ev(e)), "cudaEventDestroy"); }
void event_record(Event* e, Stream* s) { check(cudaEventRecord(ev(e), stream_of(s)), "cudaEventRecord"); }
void event_wait(Stream* s, Event* e) {
  check(cudaStreamWaitEvent(stream_of(s), ev(e), 0), "cudaStreamWaitEvent");
}
void event_synchronize(Event* e) { check(cudaEventSynchronize(ev(e)), "cudaEventSynchronize"); }

// ---- CUDA graphs ------------------------------------------------------------------------------

struct GraphExec {
  cudaGraphExec_t exec = nullptr;
};

void graph_begin(Stream* s) {
  check(cudaStreamBeginCapture(stream_of(s), cudaStreamCaptureModeThreadLocal),
        "cudaStreamBeginCapture");
}

Graph* graph_end(Stream* s) {
  cudaGraph_t g = nullptr;
  const cudaError_t e = cudaStreamEndCapture(stream_of(s), &g);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    if (g) cudaGraphDestroy(g);
    return nullptr;  // something in the region cannot be captured: the caller runs it eagerly
  }
  auto* x = new GraphExec;
  const cudaError_t i = cudaGraphInstantiate(&x->exec, g, 0);
  cudaGraphDestroy(g);
  if (i != cudaSuccess) {
    (void)cudaGetLastError();
    delete x;
    return nullptr;
  }
  State& st = state();
  std::lock_guard<std::mutex> lock(st.mu);
  st.graphs_exist = true;
  return reinterpret_cast<Graph*>(x);
}

void graph_launch(Graph* g, Stream* s) {
  check(cudaGraphLaunch(reinterpret_cast<GraphExec*>(g)->exec, stream_of(s)), "cudaGraphLaunch");
}

void graph_destroy(Graph* g) {
  auto* x = reinterpret_cast<GraphExec*>(g);
  if (!x) return;
  cudaGraphExecDestroy(x->exec);
  delete x;
}

}  // namespace dsv3::cuda

// The backend entries: the CPU case inline, the CUDA case forwarded to backend/cuda (or its stub).
#include <omp.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "backend/backend.h"
#include "core/check.h"
#include "core/profile.h"

namespace dsv3 {

Device parse_device(const std::string& s) {
  if (s == "cpu") return Device::CPU;
  if (s == "cuda" || s == "gpu") return Device::CUDA;
  fail("unknown device '", s, "' (expected cpu or cuda)");
}

const char* device_name(Device d) { return d == Device::CPU ? "cpu" : "cuda"; }

void no_kernel(const Exec& ex, const char* op) {
  fail(op, " has no ", device_name(ex.device), " kernel yet; run with --device cpu");
}

namespace backend {

namespace {
struct Counters {
  std::atomic<size_t> in_use{0}, peak{0};
};
Counters& counters(Device d) {
  static Counters c[2];
  return c[d == Device::CPU ? 0 : 1];
}
void count_alloc(Device d, size_t bytes) {
  Counters& c = counters(d);
  const size_t now = c.in_use.fetch_add(bytes) + bytes;
  size_t p = c.peak.load();
  while (now > p && !c.peak.compare_exchange_weak(p, now)) {
  }
}
int copy_kind(Device dst, Device src) {
  if (src == Device::CPU) return 0;
  return dst == Device::CPU ? 1 : 2;
}
}  // namespace

bool available(Device d) { return d == Device::CPU || cuda::available(); }

std::string describe(Device d) {
  if (d == Device::CUDA) return cuda::describe();
  return cat("cpu (", omp_get_max_threads(), " threads)");
}

void* alloc(Device d, size_t bytes) {
  void* p = nullptr;
  if (d == Device::CUDA) {
    p = cuda::alloc(bytes);
  } else {
    const size_t rounded = (bytes + 63) / 64 * 64;
    p = std::aligned_alloc(64, rounded ? rounded : 64);
    DSV3_CHECK(p, "out of host memory allocating ", bytes, " bytes");
    std::memset(p, 0, rounded);
  }
  count_alloc(d, bytes);
  return p;
}

void free(Device d, void* p, size_t bytes) {
  if (!p) return;
  counters(d).in_use.fetch_sub(bytes);
  if (d == Device::CUDA) return cuda::free(p);
  std::free(p);
}

void copy(const Exec& ex, const Tensor& dst, const Tensor& src) {
  profile::Scope prof("backend::copy");
  DSV3_CHECK(dst.dtype == src.dtype && dst.numel == src.numel, "copy: ", dtype_name(src.dtype),
             " x ", src.numel, " into ", dtype_name(dst.dtype), " x ", dst.numel,
             " (internal error)");
  if (dst.data == src.data || dst.numel == 0) return;
  if (dst.device == Device::CPU && src.device == Device::CPU) {
    std::memcpy(dst.data, src.data, dst.bytes());
    return;
  }
  cuda::copy(dst.data, src.data, dst.bytes(), copy_kind(dst.device, src.device), ex.stream);
}

void zero(const Exec& ex, const Tensor& t) {
  profile::Scope prof("backend::zero");
  if (t.numel == 0) return;
  if (t.device == Device::CUDA) return cuda::memset_zero(t.data, t.bytes(), ex.stream);
  std::memset(t.data, 0, t.bytes());
}

void synchronize(const Exec& ex) {
  if (ex.device == Device::CUDA) cuda::synchronize(ex.stream);
}

Stream* stream_create(Device d) { return d == Device::CUDA ? cuda::stream_create() : nullptr; }
void stream_destroy(Device d, Stream* s) {
  if (d == Device::CUDA && s) cuda::stream_destroy(s);
}
Event* event_create(Device d) { return d == Device::CUDA ? cuda::event_create() : nullptr; }
void event_destroy(Device d, Event* e) {
  if (d == Device::CUDA && e) cuda::event_destroy(e);
}
void event_record(Event* e, const Exec& ex) {
  if (ex.device == Device::CUDA) cuda::event_record(e, ex.stream);
}
void event_wait(const Exec& ex, Event* e) {
  if (ex.device == Device::CUDA) cuda::event_wait(ex.stream, e);
}
void event_synchronize(Device d, Event* e) {
  if (d == Device::CUDA) cuda::event_synchronize(e);
}

MemoryStats memory_stats(Device d) {
  const Counters& c = counters(d);
  return {c.in_use.load(), c.peak.load(), d == Device::CUDA ? cuda::memory_reserved() : 0};
}
void reset_peak(Device d) { counters(d).peak.store(counters(d).in_use.load()); }

void GraphCache::run(const Exec& ex, uint64_t key, const std::function<void()>& fn) {
  if (!enabled_ || ex.device != Device::CUDA) return fn();
  Entry& e = entries_[key];
  if (e.graph) return cuda::graph_launch(e.graph, ex.stream);
  if (e.eager_only || e.runs++ == 0) return fn();  // the first run sizes scratch memory
  cuda::graph_begin(ex.stream);
  try {
    fn();
    e.graph = cuda::graph_end(ex.stream);
  } catch (const Error& err) {  // a call that capture forbids: nothing of fn ran on the device
    cuda::graph_destroy(cuda::graph_end(ex.stream));
    std::fprintf(stderr, "note: CUDA graph capture failed (%s); running that region eagerly\n",
                 err.what());
  }
  if (e.graph) return cuda::graph_launch(e.graph, ex.stream);
  e.eager_only = true;  // the captured work was discarded, so run it now
  fn();
}

void GraphCache::clear() {
  for (auto& [k, e] : entries_)
    if (e.graph) cuda::graph_destroy(e.graph);
  entries_.clear();
}

size_t GraphCache::graphs() const {
  size_t n = 0;
  for (const auto& [k, e] : entries_) n += e.graph != nullptr;
  return n;
}

}  // namespace backend
}  // namespace dsv3

// Shared by comm_mpi.cpp and comm_single.cpp (see comm_local.h).
#include "dist/comm_local.h"

#include <cstdlib>
#include <cstring>

#include "core/check.h"

namespace dsv3::dist::detail {

namespace {
constexpr size_t kDefaultChunkBytes = size_t(1) << 30;  // < INT_MAX elements of every dtype
size_t g_chunk_bytes = kDefaultChunkBytes;

int env_int(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : 0;
}
}  // namespace

size_t chunk_elems(DType dtype) {
  const size_t n = g_chunk_bytes / dtype_size(dtype);
  return n > 0 ? n : 1;
}

int launcher_world_size() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"})
    if (int n = env_int(v); n > 0) return n;
  for (const char* v : {"PMIX_RANK", "PMI_RANK"})
    if (std::getenv(v)) return -1;
  return 0;
}

void fail_at(const Where& w, const std::string& why) {
  fail("dist::", w.op, " on rank ", w.rank, " of ", w.size, ": ", why);
}

void check_member(const void* impl, const char* op) {
  if (!impl) fail("dist::", op, ": this rank is not in the group (a null Comm from split)");
}

void check_stream(const Where& w, const void* stream) {
  if (stream)
    fail_at(w, cat("a stream was given, but the ", backend_name(),
                   " communicator works on host buffers (streams belong to the NCCL backend)"));
}

void check_buffer(const Where& w, const void* p, size_t count, const char* name) {
  if (!p && count > 0) fail_at(w, cat(name, " is null but holds ", count, " elements"));
}

void check_root(const Where& w, int root) {
  if (root < 0 || root >= w.size) fail_at(w, cat("root ", root, " is not a rank of this group"));
}

void check_peer_tag(const Where& w, int peer, int tag) {
  if (peer < 0 || peer >= w.size) fail_at(w, cat("peer ", peer, " is not a rank of this group"));
  if (peer == w.rank) fail_at(w, cat("peer ", peer, " is this rank (send/recv need another rank)"));
  if (tag < 0 || tag > 32767) fail_at(w, cat("tag ", tag, " is outside [0, 32767]"));
}

std::vector<size_t> piece_offsets(const Where& w, const Pieces& p, const void* buf,
                                  const char* name) {
  const size_t n = size_t(w.size);
  if (p.counts.size() != n)
    fail_at(w, cat(name, " has ", p.counts.size(), " counts for a group of ", n, " ranks"));
  if (!p.displs.empty() && p.displs.size() != n)
    fail_at(w, cat(name, " has ", p.displs.size(), " displacements for a group of ", n, " ranks"));
  std::vector<size_t> off(n);
  size_t next = 0;
  for (size_t r = 0; r < n; r++) {
    off[r] = p.displs.empty() ? next : p.displs[r];
    next += p.counts[r];
    if (!buf && p.counts[r] > 0)
      fail_at(w, cat(name, " buffer is null but piece ", r, " holds ", p.counts[r], " elements"));
  }
  return off;
}

void copy_elems(void* dst, const void* src, size_t count, DType dtype) {
  if (count > 0 && dst != src) std::memcpy(dst, src, count * dtype_size(dtype));
}

void one_rank_all_to_allv(const Where& w, const void* send, const Pieces& sp, void* recv,
                          const Pieces& rp, DType dtype) {
  const auto so = piece_offsets(w, sp, send, "send"), ro = piece_offsets(w, rp, recv, "recv");
  if (sp.counts[0] != rp.counts[0])
    fail_at(w, cat("sends ", sp.counts[0], " elements to itself but expects ", rp.counts[0]));
  const size_t es = dtype_size(dtype);
  copy_elems(static_cast<char*>(recv) + ro[0] * es, static_cast<const char*>(send) + so[0] * es,
             sp.counts[0], dtype);
}

Comm one_rank_subset(const Where& w, const Comm& self, std::span<const int> ranks) {
  if (ranks.empty()) return Comm();
  if (ranks.size() != 1 || ranks[0] != 0)
    fail_at(w, "the list names ranks this group of one does not have");
  return self;
}

}  // namespace dsv3::dist::detail

namespace dsv3::dist {
void set_chunk_bytes_for_testing(size_t bytes) {
  detail::g_chunk_bytes = bytes > 0 ? bytes : detail::kDefaultChunkBytes;
}
}  // namespace dsv3::dist

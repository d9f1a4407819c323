// Single-process communicator: the world is rank 0 of 1, so every collective leaves data as it is
// or copies send to recv, and there is no peer to send to (comm.h, "A Comm of one rank").
// Linked when the build has no MPI (-DDSV3_MPI=OFF, or Open MPI not installed).
#include "core/check.h"
#include "dist/comm.h"
#include "dist/comm_local.h"

namespace dsv3::dist {

struct Comm::Impl {};
struct Request::State {};

namespace {
using detail::Where;
Comm g_world;

const Comm::Impl& active(const std::shared_ptr<Comm::Impl>& impl, const char* op) {
  detail::check_member(impl.get(), op);
  return *impl;
}
Where at(const std::shared_ptr<Comm::Impl>& impl, const char* op, const void* stream) {
  active(impl, op);
  const Where w{op, 0, 1};
  detail::check_stream(w, stream);
  return w;
}
}  // namespace

Request::Request() noexcept = default;
Request::Request(std::unique_ptr<State> state) noexcept : state_(std::move(state)) {}
Request::Request(Request&&) noexcept = default;
Request& Request::operator=(Request&&) noexcept = default;
Request::~Request() = default;
void Request::wait() {}
void Request::abandon() noexcept { state_.reset(); }
bool Request::test() { return true; }

void init(int*, char***) {
  if (g_world) return;
  if (const int n = detail::launcher_world_size(); n > 1)
    fail("this dsv3 was built without MPI (single-process communicator) but mpirun started it as "
         "one of ", n, " processes; install libopenmpi-dev and rebuild, or run one process");
  g_world = Comm(std::make_shared<Comm::Impl>());
}
void finalize() { g_world = Comm(); }
const Comm& world() {
  if (!g_world) init(nullptr, nullptr);
  return g_world;
}
const char* backend_name() { return "single"; }
bool concurrent_threads() { return true; }

int Comm::rank() const {
  active(impl_, "rank");
  return 0;
}
int Comm::size() const {
  active(impl_, "size");
  return 1;
}

Comm Comm::split(int color, int key) const {
  const Where w = at(impl_, "split", nullptr);
  if (color < 0 && color != kNoColor) detail::fail_at(w, cat("color ", color, " is negative"));
  return color == kNoColor ? Comm() : *this;
}
Comm Comm::subset(std::span<const int> ranks) const {
  return detail::one_rank_subset(at(impl_, "subset", nullptr), *this, ranks);
}

// Each operation once, named by the caller ("all_reduce" or "iall_reduce") for its messages.
namespace {
using ImplPtr = std::shared_ptr<Comm::Impl>;
void reduce_op(const ImplPtr& impl, const char* op, void* data, size_t count, void* stream) {
  detail::check_buffer(at(impl, op, stream), data, count, "data");
}
void copy_op(const ImplPtr& impl, const char* op, const void* send, void* recv, size_t count,
             DType dtype, void* stream) {
  const Where w = at(impl, op, stream);
  detail::check_buffer(w, send, count, "send");
  detail::check_buffer(w, recv, count, "recv");
  detail::copy_elems(recv, send, count, dtype);
}
void broadcast_op(const ImplPtr& impl, const char* op, void* data, size_t count, int root,
                  void* stream) {
  const Where w = at(impl, op, stream);
  detail::check_buffer(w, data, count, "data");
  detail::check_root(w, root);
}
void p2p_op(const ImplPtr& impl, const char* op, int peer, int tag, void* stream) {
  detail::check_peer_tag(at(impl, op, stream), peer, tag);  // always throws: there is no peer
}
}  // namespace

void Comm::all_reduce(void* data, size_t count, DType, ReduceOp, void* stream) const {
  reduce_op(impl_, "all_reduce", data, count, stream);
}
void Comm::reduce_scatter(const void* send, void* recv, size_t count, DType dtype, ReduceOp,
                          void* stream) const {
  copy_op(impl_, "reduce_scatter", send, recv, count, dtype, stream);
}
void Comm::all_gather(const void* send, void* recv, size_t count, DType dtype,
                      void* stream) const {
  copy_op(impl_, "all_gather", send, recv, count, dtype, stream);
}
void Comm::all_to_all(const void* send, void* recv, size_t count, DType dtype,
                      void* stream) const {
  copy_op(impl_, "all_to_all", send, recv, count, dtype, stream);
}
void Comm::all_to_allv(const void* send, Pieces sp, void* recv, Pieces rp, DType dtype,
                       void* stream) const {
  detail::one_rank_all_to_allv(at(impl_, "all_to_allv", stream), send, sp, recv, rp, dtype);
}
void Comm::broadcast(void* data, size_t count, DType, int root, void* stream) const {
  broadcast_op(impl_, "broadcast", data, count, root, stream);
}
void Comm::barrier() const { active(impl_, "barrier"); }
void Comm::send(const void*, size_t, DType, int peer, int tag, void* stream) const {
  p2p_op(impl_, "send", peer, tag, stream);
}
void Comm::recv(void*, size_t, DType, int peer, int tag, void* stream) const {
  p2p_op(impl_, "recv", peer, tag, stream);
}

bool Comm::probe(int tag, int*) const {
  const Where w = at(impl_, "probe", nullptr);
  if (tag < 0 || tag > 32767) detail::fail_at(w, cat("tag ", tag, " is outside [0, 32767]"));
  return false;  // nobody else can send
}

// The nonblocking twins are complete when they return.
Request Comm::iall_reduce(void* data, size_t count, DType, ReduceOp, void* stream) const {
  reduce_op(impl_, "iall_reduce", data, count, stream);
  return {};
}
Request Comm::ireduce_scatter(const void* send, void* recv, size_t count, DType dtype, ReduceOp,
                              void* stream) const {
  copy_op(impl_, "ireduce_scatter", send, recv, count, dtype, stream);
  return {};
}
Request Comm::iall_gather(const void* send, void* recv, size_t count, DType dtype,
                          void* stream) const {
  copy_op(impl_, "iall_gather", send, recv, count, dtype, stream);
  return {};
}
Request Comm::iall_to_all(const void* send, void* recv, size_t count, DType dtype,
                          void* stream) const {
  copy_op(impl_, "iall_to_all", send, recv, count, dtype, stream);
  return {};
}
Request Comm::iall_to_allv(const void* send, Pieces sp, void* recv, Pieces rp, DType dtype,
                           void* stream) const {
  detail::one_rank_all_to_allv(at(impl_, "iall_to_allv", stream), send, sp, recv, rp, dtype);
  return {};
}
Request Comm::ibroadcast(void* data, size_t count, DType, int root, void* stream) const {
  broadcast_op(impl_, "ibroadcast", data, count, root, stream);
  return {};
}
Request Comm::isend(const void*, size_t, DType, int peer, int tag, void* stream) const {
  p2p_op(impl_, "isend", peer, tag, stream);
  return {};
}
Request Comm::irecv(void*, size_t, DType, int peer, int tag, void* stream) const {
  p2p_op(impl_, "irecv", peer, tag, stream);
  return {};
}

std::vector<std::string> Comm::all_gather_bytes(const std::string& mine) const {
  active(impl_, "all_gather_bytes");
  return {mine};
}
void Comm::broadcast_bytes(std::string&, int root) const {
  detail::check_root(at(impl_, "broadcast_bytes", nullptr), root);
}

}  // namespace dsv3::dist

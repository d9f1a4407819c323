// Open MPI communicator (comm.h). Every MPI call returns its error code (MPI_ERRORS_RETURN on
// every communicator) and a failure becomes a dsv3::Error naming the operation and MPI's reason.
//
// Counts beyond INT_MAX: Open MPI 4.1 has no big-count calls, so operations run in pieces of at
// most detail::chunk_elems() (1 GiB). Which path an operation takes may depend only on what every
// rank agrees on (count, dtype, group size), never on one rank's local counts, or ranks would
// enter different MPI calls and hang. So:
// - all_reduce, broadcast, send/recv: the same MPI call per piece.
// - all_gather, all_to_all: one MPI call when all size() blocks fit one piece, else the
//   point-to-point exchange below; reduce_scatter: else one MPI_Reduce per (block, piece).
// - all_to_allv and the byte helpers: always the point-to-point exchange (MPI_Alltoallv takes int
//   counts and displacements; Open MPI's own alltoallv is the same isend/irecv pattern anyway).
// The exchange runs on a duplicate of the group's communicator, so its messages never match a
// user's send/recv; messages between two ranks arrive in the order they were posted (MPI's
// non-overtaking rule), which keeps concurrent nonblocking operations apart.
#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/check.h"
#include "dist/comm.h"
#include "dist/comm_local.h"

namespace dsv3::dist {

using detail::Where;

struct Comm::Impl {
  MPI_Comm comm = MPI_COMM_NULL;  // user operations; null for the world of a process no
                                  // launcher started (size 1: nothing is ever sent)
  MPI_Comm p2p = MPI_COMM_NULL;   // the exchange's own traffic (size > 1 only)
  int rank = 0, size = 1;
  bool owned = false;  // MPI_COMM_WORLD is not ours to free
  ~Impl() {
    int done = 1;
    if (comm != MPI_COMM_NULL) MPI_Finalized(&done);
    if (done) return;  // after MPI_Finalize nothing may be freed
    if (p2p != MPI_COMM_NULL) MPI_Comm_free(&p2p);
    if (owned) MPI_Comm_free(&comm);
  }
};

// What a nonblocking operation has in flight.
struct Request::State {
  Where where{"", 0, 1};
  MPI_Datatype type = MPI_BYTE;
  std::vector<MPI_Request> reqs;
  std::vector<long long> expect;  // per request: elements a receive must get; -1 for the rest
  std::string error;              // the first failure, reported once all requests are done
  size_t done = 0;                // reqs[0, done) are complete
};

namespace {

struct Globals {
  Comm world;
  bool mpi_ours = false;  // we called MPI_Init, so we call MPI_Finalize
  bool finalized = false;
  bool concurrent = true;  // MPI granted MPI_THREAD_MULTIPLE (or MPI is not used)
  MPI_Op half_ops[2][3] = {};  // [bf16, f16][Sum, Max, Min]
} g;

std::string mpi_reason(int rc) {
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  return std::string(msg, size_t(len));
}
void check(const Where& w, int rc, const char* fn) {
  if (rc != MPI_SUCCESS) detail::fail_at(w, cat(fn, " failed: ", mpi_reason(rc)));
}

MPI_Datatype mpi_type(DType t) {
  switch (t) {
    case DType::F32: return MPI_FLOAT;
    case DType::F64: return MPI_DOUBLE;
    case DType::BF16: case DType::F16: return MPI_UINT16_T;  // reduced by our own ops
    case DType::I32: return MPI_INT32_T;
    case DType::I64: return MPI_INT64_T;
    case DType::U8: case DType::W8A8: case DType::W8A16: return MPI_UINT8_T;  // int8 weights: bytes
  }
  return MPI_DATATYPE_NULL;
}

// bf16/f16 reductions: each pair in fp32, rounded back (Sum); Max/Min keep the winner's bits.
template <float (*Widen)(uint16_t), uint16_t (*Narrow)(float), ReduceOp Op>
void half_reduce(void* in, void* inout, int* len, MPI_Datatype*) {
  const auto* a = static_cast<const uint16_t*>(in);
  auto* b = static_cast<uint16_t*>(inout);
  for (int i = 0; i < *len; i++) {
    const float x = Widen(a[i]), y = Widen(b[i]);
    if (Op == ReduceOp::Sum) b[i] = Narrow(x + y);
    else if (Op == ReduceOp::Max ? x > y : x < y) b[i] = a[i];
  }
}

MPI_Op mpi_op(DType t, ReduceOp op) {
  if (t == DType::BF16 || t == DType::F16) return g.half_ops[t == DType::F16][int(op)];
  switch (op) {
    case ReduceOp::Sum: return MPI_SUM;
    case ReduceOp::Max: return MPI_MAX;
    case ReduceOp::Min: return MPI_MIN;
  }
  return MPI_OP_NULL;
}

void create_half_ops() {
  using F = MPI_User_function;
  F* fns[2][3] = {
      {half_reduce<bf16_to_f32, f32_to_bf16, ReduceOp::Sum>,
       half_reduce<bf16_to_f32, f32_to_bf16, ReduceOp::Max>,
       half_reduce<bf16_to_f32, f32_to_bf16, ReduceOp::Min>},
      {half_reduce<f16_to_f32, f32_to_f16, ReduceOp::Sum>,
       half_reduce<f16_to_f32, f32_to_f16, ReduceOp::Max>,
       half_reduce<f16_to_f32, f32_to_f16, ReduceOp::Min>}};
  const Where w{"init", 0, 1};
  for (int d = 0; d < 2; d++)
    for (int o = 0; o < 3; o++)
      check(w, MPI_Op_create(fns[d][o], 1, &g.half_ops[d][o]), "MPI_Op_create");
}

std::shared_ptr<Comm::Impl> wrap(MPI_Comm comm, bool owned, const Where& w) {
  auto impl = std::make_shared<Comm::Impl>();
  impl->comm = comm;
  impl->owned = owned;
  check(w, MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
  check(w, MPI_Comm_rank(comm, &impl->rank), "MPI_Comm_rank");
  check(w, MPI_Comm_size(comm, &impl->size), "MPI_Comm_size");
  if (impl->size > 1) {
    check(w, MPI_Comm_dup(comm, &impl->p2p), "MPI_Comm_dup");
    check(w, MPI_Comm_set_errhandler(impl->p2p, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
  }
  return impl;
}

const Comm::Impl& active(const std::shared_ptr<Comm::Impl>& impl, const char* op) {
  detail::check_member(impl.get(), op);
  return *impl;
}

// One operation in progress: blocking ops use MPI's blocking calls where one exists and post
// the rest (the exchange) into `st`, which run() completes; nonblocking ops post everything
// and hand `st` to the Request.
struct Op {
  const Comm::Impl& c;
  bool nonblocking;
  Request::State st;
  Op(const Comm::Impl& comm, bool nb, const char* name, DType dtype) : c(comm), nonblocking(nb) {
    st.where = {name, comm.rank, comm.size};
    st.type = mpi_type(dtype);
  }
  const Where& where() const { return st.where; }
  void ok(int rc, const char* fn) const { check(st.where, rc, fn); }
  MPI_Request* post(long long expect = -1) {
    st.reqs.push_back(MPI_REQUEST_NULL);
    st.expect.push_back(expect);
    return &st.reqs.back();
  }
};

// Completes reqs[done, end) (end = all when wait, else as far as they are complete) and records
// the first failure. Returns true when every request is complete.
bool progress(Request::State& s, bool wait) {
  while (s.done < s.reqs.size()) {
    MPI_Status status;
    int flag = 1, rc;
    if (wait) {
      rc = MPI_Wait(&s.reqs[s.done], &status);
    } else {
      rc = MPI_Test(&s.reqs[s.done], &flag, &status);
      if (rc == MPI_SUCCESS && !flag) return false;
    }
    const long long want = s.expect[s.done];
    if (rc != MPI_SUCCESS) {
      if (s.error.empty())
        s.error = cat(wait ? "MPI_Wait" : "MPI_Test", " failed: ", mpi_reason(rc));
    } else if (want >= 0) {
      int got = 0;
      MPI_Get_count(&status, s.type, &got);
      if (got != want && s.error.empty())
        s.error = cat("expected ", want, " elements from rank ", status.MPI_SOURCE, ", got ", got);
    }
    s.done++;
  }
  return true;
}
void raise_if_failed(Request::State& s) {
  if (!s.error.empty()) {
    std::string e;
    e.swap(s.error);
    detail::fail_at(s.where, e);
  }
}

Request finish(Op& o) {
  if (!o.nonblocking) {
    progress(o.st, true);
    raise_if_failed(o.st);
    return {};
  }
  return Request(std::make_unique<Request::State>(std::move(o.st)));
}

// Pieces of [0, count): calls f(offset, length) with length <= chunk_elems(dtype), at least once.
template <typename F>
void for_pieces(size_t count, DType dtype, F&& f) {
  const size_t lim = detail::chunk_elems(dtype);
  size_t off = 0;
  do {
    const size_t n = std::min(lim, count - off);
    f(off, int(n));
    off += n;
  } while (off < count);
}

char* at_elem(const void* p, size_t i, DType t) {
  return static_cast<char*>(const_cast<void*>(p)) + i * dtype_size(t);
}

// Point-to-point exchange: to_n[p] elements at to[p] go to rank p and from_n[p] elements from
// rank p land at from[p], in pieces, on the group's p2p communicator. Receives are posted first;
// sends go round the ring from rank+1 so no rank is everyone's first target.
void exchange(Op& o, DType t, const std::vector<const char*>& to, std::span<const size_t> to_n,
              const std::vector<char*>& from, std::span<const size_t> from_n) {
  const int me = o.c.rank, n = o.c.size;
  const MPI_Datatype type = mpi_type(t);
  if (to_n[size_t(me)] != from_n[size_t(me)])
    detail::fail_at(o.where(), cat("sends ", to_n[size_t(me)], " elements to itself but expects ",
                                   from_n[size_t(me)]));
  for (int k = 1; k < n; k++) {
    const int p = (me - k + n) % n;
    if (from_n[size_t(p)] == 0) continue;
    for_pieces(from_n[size_t(p)], t, [&](size_t off, int len) {
      o.ok(MPI_Irecv(from[size_t(p)] + off * dtype_size(t), len, type, p, 0, o.c.p2p, o.post(len)),
           "MPI_Irecv");
    });
  }
  detail::copy_elems(from[size_t(me)], to[size_t(me)], to_n[size_t(me)], t);
  for (int k = 1; k < n; k++) {
    const int p = (me + k) % n;
    if (to_n[size_t(p)] == 0) continue;
    for_pieces(to_n[size_t(p)], t, [&](size_t off, int len) {
      o.ok(MPI_Isend(to[size_t(p)] + off * dtype_size(t), len, type, p, 0, o.c.p2p, o.post()),
           "MPI_Isend");
    });
  }
}

// --- the operations; `nb` selects the nonblocking twin -----------------------------------------

Where where(const Comm::Impl& c, const char* op) { return {op, c.rank, c.size}; }

Request all_reduce_op(const std::shared_ptr<Comm::Impl>& impl, bool nb, void* data, size_t count,
                      DType t, ReduceOp r, void* stream) {
  const char* name = nb ? "iall_reduce" : "all_reduce";
  const Comm::Impl& c = active(impl, name);
  detail::check_stream(where(c, name), stream);
  detail::check_buffer(where(c, name), data, count, "data");
  if (c.size == 1 || count == 0) return {};
  Op o(c, nb, name, t);
  for_pieces(count, t, [&](size_t off, int n) {
    if (nb)
      o.ok(MPI_Iallreduce(MPI_IN_PLACE, at_elem(data, off, t), n, mpi_type(t), mpi_op(t, r), c.comm,
                          o.post()), "MPI_Iallreduce");
    else
      o.ok(MPI_Allreduce(MPI_IN_PLACE, at_elem(data, off, t), n, mpi_type(t), mpi_op(t, r), c.comm),
           "MPI_Allreduce");
  });
  return finish(o);
}

Request reduce_scatter_op(const std::shared_ptr<Comm::Impl>& impl, bool nb, const void* send,
                          void* recv, size_t count, DType t, ReduceOp r, void* stream) {
  const char* name = nb ? "ireduce_scatter" : "reduce_scatter";
  const Comm::Impl& c = active(impl, name);
  const Where w = where(c, name);
  detail::check_stream(w, stream);
  detail::check_buffer(w, send, count, "send");
  detail::check_buffer(w, recv, count, "recv");
  if (c.size == 1) {
    detail::copy_elems(recv, send, count, t);
    return {};
  }
  if (count == 0) return {};
  Op o(c, nb, name, t);
  const MPI_Datatype type = mpi_type(t);
  if (count * size_t(c.size) <= detail::chunk_elems(t)) {
    if (nb)
      o.ok(MPI_Ireduce_scatter_block(send, recv, int(count), type, mpi_op(t, r), c.comm, o.post()),
           "MPI_Ireduce_scatter_block");
    else
      o.ok(MPI_Reduce_scatter_block(send, recv, int(count), type, mpi_op(t, r), c.comm),
           "MPI_Reduce_scatter_block");
    return finish(o);
  }
  // Large: block b reduced onto rank b, piece by piece.
  for (int b = 0; b < c.size; b++)
    for_pieces(count, t, [&](size_t off, int n) {
      const void* in = at_elem(send, size_t(b) * count + off, t);
      void* out = b == c.rank ? at_elem(recv, off, t) : nullptr;
      if (nb)
        o.ok(MPI_Ireduce(in, out, n, type, mpi_op(t, r), b, c.comm, o.post()), "MPI_Ireduce");
      else
        o.ok(MPI_Reduce(in, out, n, type, mpi_op(t, r), b, c.comm), "MPI_Reduce");
    });
  return finish(o);
}

Request all_gather_op(const std::shared_ptr<Comm::Impl>& impl, bool nb, const void* send,
                      void* recv, size_t count, DType t, void* stream) {
  const char* name = nb ? "iall_gather" : "all_gather";
  const Comm::Impl& c = active(impl, name);
  const Where w = where(c, name);
  detail::check_stream(w, stream);
  detail::check_buffer(w, send, count, "send");
  detail::check_buffer(w, recv, count, "recv");
  if (c.size == 1) {
    detail::copy_elems(recv, send, count, t);
    return {};
  }
  if (count == 0) return {};
  Op o(c, nb, name, t);
  char* mine = at_elem(recv, size_t(c.rank) * count, t);
  if (count * size_t(c.size) <= detail::chunk_elems(t)) {
    const void* in = send == mine ? MPI_IN_PLACE : send;
    const MPI_Datatype type = mpi_type(t);
    if (nb)
      o.ok(MPI_Iallgather(in, int(count), type, recv, int(count), type, c.comm, o.post()),
           "MPI_Iallgather");
    else
      o.ok(MPI_Allgather(in, int(count), type, recv, int(count), type, c.comm), "MPI_Allgather");
    return finish(o);
  }
  const size_t n = size_t(c.size);
  std::vector<const char*> to(n, static_cast<const char*>(send));
  std::vector<char*> from(n);
  for (size_t p = 0; p < n; p++) from[p] = at_elem(recv, p * count, t);
  exchange(o, t, to, std::vector<size_t>(n, count), from, std::vector<size_t>(n, count));
  return finish(o);
}

Request all_to_allv_op(const std::shared_ptr<Comm::Impl>& impl, bool nb, const char* name,
                       const void* send, const Pieces& sp, void* recv, const Pieces& rp, DType t,
                       void* stream) {
  const Comm::Impl& c = active(impl, name);
  const Where w = where(c, name);
  detail::check_stream(w, stream);
  if (c.size == 1) {
    detail::one_rank_all_to_allv(w, send, sp, recv, rp, t);
    return {};
  }
  const auto so = detail::piece_offsets(w, sp, send, "send");
  const auto ro = detail::piece_offsets(w, rp, recv, "recv");
  Op o(c, nb, name, t);
  const size_t n = size_t(c.size);
  std::vector<const char*> to(n);
  std::vector<char*> from(n);
  for (size_t p = 0; p < n; p++) {
    to[p] = at_elem(send, so[p], t);
    from[p] = at_elem(recv, ro[p], t);
  }
  exchange(o, t, to, sp.counts, from, rp.counts);
  return finish(o);
}

Request all_to_all_op(const std::shared_ptr<Comm::Impl>& impl, bool nb, const void* send,
                      void* recv, size_t count, DType t, void* stream) {
  const char* name = nb ? "iall_to_all" : "all_to_all";
  const Comm::Impl& c = active(impl, name);
  const Where w = where(c, name);
  detail::check_stream(w, stream);
  detail::check_buffer(w, send, count, "send");
  detail::check_buffer(w, recv, count, "recv");
  if (c.size == 1) {
    detail::copy_elems(recv, send, count, t);
    return {};
  }
  if (count == 0) return {};
  if (count * size_t(c.size) > detail::chunk_elems(t)) {
    const std::vector<size_t> counts(size_t(c.size), count);
    return all_to_allv_op(impl, nb, name, send, {counts}, recv, {counts}, t, nullptr);
  }
  Op o(c, nb, name, t);
  const MPI_Datatype type = mpi_type(t);
  if (nb)
    o.ok(MPI_Ialltoall(send, int(count), type, recv, int(count), type, c.comm, o.post()),
         "MPI_Ialltoall");
  else
    o.ok(MPI_Alltoall(send, int(count), type, recv, int(count), type, c.comm), "MPI_Alltoall");
  return finish(o);
}

Request broadcast_op(const std::shared_ptr<Comm::Impl>& impl, bool nb, const char* name,
                     void* data, size_t count, DType t, int root, void* stream) {
  const Comm::Impl& c = active(impl, name);
  const Where w = where(c, name);
  detail::check_stream(w, stream);
  detail::check_buffer(w, data, count, "data");
  detail::check_root(w, root);
  if (c.size == 1 || count == 0) return {};
  Op o(c, nb, name, t);
  for_pieces(count, t, [&](size_t off, int n) {
    if (nb)
      o.ok(MPI_Ibcast(at_elem(data, off, t), n, mpi_type(t), root, c.comm, o.post()), "MPI_Ibcast");
    else
      o.ok(MPI_Bcast(at_elem(data, off, t), n, mpi_type(t), root, c.comm), "MPI_Bcast");
  });
  return finish(o);
}

Request send_op(const std::shared_ptr<Comm::Impl>& impl, bool nb, const void* data, size_t count,
                DType t, int peer, int tag, void* stream) {
  const char* name = nb ? "isend" : "send";
  const Comm::Impl& c = active(impl, name);
  const Where w = where(c, name);
  detail::check_stream(w, stream);
  detail::check_buffer(w, data, count, "data");
  detail::check_peer_tag(w, peer, tag);
  Op o(c, nb, name, t);
  for_pieces(count, t, [&](size_t off, int n) {  // an empty message still pairs with its recv
    if (nb)
      o.ok(MPI_Isend(at_elem(data, off, t), n, mpi_type(t), peer, tag, c.comm, o.post()),
           "MPI_Isend");
    else
      o.ok(MPI_Send(at_elem(data, off, t), n, mpi_type(t), peer, tag, c.comm), "MPI_Send");
  });
  return finish(o);
}

Request recv_op(const std::shared_ptr<Comm::Impl>& impl, bool nb, void* data, size_t count,
                DType t, int peer, int tag, void* stream) {
  const char* name = nb ? "irecv" : "recv";
  const Comm::Impl& c = active(impl, name);
  const Where w = where(c, name);
  detail::check_stream(w, stream);
  detail::check_buffer(w, data, count, "data");
  detail::check_peer_tag(w, peer, tag);
  Op o(c, nb, name, t);
  for_pieces(count, t, [&](size_t off, int n) {
    if (nb) {
      o.ok(MPI_Irecv(at_elem(data, off, t), n, mpi_type(t), peer, tag, c.comm, o.post(n)),
           "MPI_Irecv");
      return;
    }
    MPI_Status status;
    o.ok(MPI_Recv(at_elem(data, off, t), n, mpi_type(t), peer, tag, c.comm, &status), "MPI_Recv");
    int got = 0;
    MPI_Get_count(&status, mpi_type(t), &got);
    if (got != n)
      detail::fail_at(w, cat("expected ", n, " elements from rank ", peer, ", got ", got));
  });
  return finish(o);
}

}  // namespace

// --- Request ------------------------------------------------------------------------------------

Request::Request() noexcept = default;
Request::Request(std::unique_ptr<State> state) noexcept : state_(std::move(state)) {}
Request::Request(Request&&) noexcept = default;
Request& Request::operator=(Request&& other) noexcept {
  if (this != &other) {
    Request replaced(std::move(*this));  // its destructor waits for the operation it holds
    state_ = std::move(other.state_);
  }
  return *this;
}
Request::~Request() {
  if (!state_) return;
  try {
    wait();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dsv3: a nonblocking operation nobody waited for failed: %s\n", e.what());
  }
}
void Request::wait() {
  if (!state_) return;
  progress(*state_, true);
  std::unique_ptr<State> s = std::move(state_);
  raise_if_failed(*s);
}
void Request::abandon() noexcept { (void)state_.release(); }  // leaked on purpose: see comm.h
bool Request::test() {
  if (!state_) return true;
  if (!progress(*state_, false)) return false;
  std::unique_ptr<State> s = std::move(state_);
  raise_if_failed(*s);
  return true;
}

// --- world --------------------------------------------------------------------------------------

void init(int* argc, char*** argv) {
  if (g.world) return;
  if (g.finalized) fail("dist::init after dist::finalize: MPI cannot start twice in one process");
  int started = 0;
  MPI_Initialized(&started);
  if (!started && detail::launcher_world_size() == 0) {
    g.world = Comm(std::make_shared<Comm::Impl>());  // a world of one; MPI stays untouched
    return;
  }
  const Where w{"init", 0, 1};
  if (!started) {
    // MULTIPLE lets DualPipe run an F&B's forward and backward on two threads; an MPI that
    // grants only FUNNELED still trains, one after the other (concurrent_threads()).
    // DSV3_MPI_THREADS=funneled asks for FUNNELED only (an MPI or network layer that is slower
    // or unavailable under MULTIPLE).
    const char* want = std::getenv("DSV3_MPI_THREADS");
    const std::string level = want ? want : "multiple";
    if (level != "multiple" && level != "funneled")
      fail("DSV3_MPI_THREADS must be multiple or funneled, not '", level, "'");
    int provided = 0;
    check(w, MPI_Init_thread(argc, argv, level == "multiple" ? MPI_THREAD_MULTIPLE
                                                            : MPI_THREAD_FUNNELED, &provided),
          "MPI_Init_thread");
    g.mpi_ours = true;
    if (provided < MPI_THREAD_FUNNELED)
      fail("dist::init: this MPI provides no thread support (MPI_THREAD_FUNNELED is needed)");
  }
  int level = 0;
  check(w, MPI_Query_thread(&level), "MPI_Query_thread");
  g.concurrent = level >= MPI_THREAD_MULTIPLE;
  check(w, MPI_Comm_set_errhandler(MPI_COMM_SELF, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
  create_half_ops();
  g.world = Comm(wrap(MPI_COMM_WORLD, false, w));
}

bool concurrent_threads() { return g.concurrent; }

void finalize() {
  if (!g.world || g.finalized) return;
  g.world = Comm();
  int started = 0;
  MPI_Initialized(&started);
  if (!started) return;
  for (auto& d : g.half_ops)
    for (MPI_Op& op : d)
      if (op != MPI_OP_NULL) MPI_Op_free(&op);
  if (g.mpi_ours) {
    MPI_Finalize();
    g.finalized = true;
  }
}

const Comm& world() {
  if (!g.world) init(nullptr, nullptr);
  return g.world;
}
const char* backend_name() { return "mpi"; }

// --- Comm ---------------------------------------------------------------------------------------

int Comm::rank() const { return active(impl_, "rank").rank; }
int Comm::size() const { return active(impl_, "size").size; }

Comm Comm::split(int color, int key) const {
  const Comm::Impl& c = active(impl_, "split");
  const Where w = where(c, "split");
  if (color < 0 && color != kNoColor) detail::fail_at(w, cat("color ", color, " is negative"));
  if (c.size == 1) return color == kNoColor ? Comm() : *this;
  MPI_Comm out = MPI_COMM_NULL;
  check(w, MPI_Comm_split(c.comm, color == kNoColor ? MPI_UNDEFINED : color, key, &out),
        "MPI_Comm_split");
  if (out == MPI_COMM_NULL) return Comm();
  return Comm(wrap(out, true, w));
}

Comm Comm::subset(std::span<const int> ranks) const {
  const Comm::Impl& c = active(impl_, "subset");
  const Where w = where(c, "subset");
  if (c.size == 1) return detail::one_rank_subset(w, *this, ranks);
  std::vector<bool> seen(size_t(c.size), false);
  int key = -1;
  for (size_t i = 0; i < ranks.size(); i++) {
    const int r = ranks[i];
    if (r < 0 || r >= c.size) detail::fail_at(w, cat("rank ", r, " is not a rank of this group"));
    if (seen[size_t(r)]) detail::fail_at(w, cat("rank ", r, " is listed twice"));
    seen[size_t(r)] = true;
    if (r == c.rank) key = int(i);
  }
  return split(key >= 0 ? 0 : kNoColor, key);
}

void Comm::all_reduce(void* data, size_t count, DType t, ReduceOp op, void* stream) const {
  all_reduce_op(impl_, false, data, count, t, op, stream);
}
void Comm::reduce_scatter(const void* send, void* recv, size_t count, DType t, ReduceOp op,
                          void* stream) const {
  reduce_scatter_op(impl_, false, send, recv, count, t, op, stream);
}
void Comm::all_gather(const void* send, void* recv, size_t count, DType t, void* stream) const {
  all_gather_op(impl_, false, send, recv, count, t, stream);
}
void Comm::all_to_all(const void* send, void* recv, size_t count, DType t, void* stream) const {
  all_to_all_op(impl_, false, send, recv, count, t, stream);
}
void Comm::all_to_allv(const void* send, Pieces sp, void* recv, Pieces rp, DType t,
                       void* stream) const {
  all_to_allv_op(impl_, false, "all_to_allv", send, sp, recv, rp, t, stream);
}
void Comm::broadcast(void* data, size_t count, DType t, int root, void* stream) const {
  broadcast_op(impl_, false, "broadcast", data, count, t, root, stream);
}
void Comm::barrier() const {
  const Comm::Impl& c = active(impl_, "barrier");
  if (c.size > 1) check(where(c, "barrier"), MPI_Barrier(c.comm), "MPI_Barrier");
}
void Comm::send(const void* data, size_t count, DType t, int peer, int tag, void* stream) const {
  send_op(impl_, false, data, count, t, peer, tag, stream);
}
void Comm::recv(void* data, size_t count, DType t, int peer, int tag, void* stream) const {
  recv_op(impl_, false, data, count, t, peer, tag, stream);
}

bool Comm::probe(int tag, int* source) const {
  const Comm::Impl& c = active(impl_, "probe");
  const Where w = where(c, "probe");
  if (tag < 0 || tag > 32767) detail::fail_at(w, cat("tag ", tag, " is outside [0, 32767]"));
  if (c.size == 1) return false;
  int flag = 0;
  MPI_Status status;
  check(w, MPI_Iprobe(MPI_ANY_SOURCE, tag, c.comm, &flag, &status), "MPI_Iprobe");
  if (flag && source) *source = status.MPI_SOURCE;
  return flag != 0;
}

Request Comm::iall_reduce(void* data, size_t count, DType t, ReduceOp op, void* stream) const {
  return all_reduce_op(impl_, true, data, count, t, op, stream);
}
Request Comm::ireduce_scatter(const void* send, void* recv, size_t count, DType t, ReduceOp op,
                              void* stream) const {
  return reduce_scatter_op(impl_, true, send, recv, count, t, op, stream);
}
Request Comm::iall_gather(const void* send, void* recv, size_t count, DType t,
                          void* stream) const {
  return all_gather_op(impl_, true, send, recv, count, t, stream);
}
Request Comm::iall_to_all(const void* send, void* recv, size_t count, DType t,
                          void* stream) const {
  return all_to_all_op(impl_, true, send, recv, count, t, stream);
}
Request Comm::iall_to_allv(const void* send, Pieces sp, void* recv, Pieces rp, DType t,
                           void* stream) const {
  return all_to_allv_op(impl_, true, "iall_to_allv", send, sp, recv, rp, t, stream);
}
Request Comm::ibroadcast(void* data, size_t count, DType t, int root, void* stream) const {
  return broadcast_op(impl_, true, "ibroadcast", data, count, t, root, stream);
}
Request Comm::isend(const void* data, size_t count, DType t, int peer, int tag,
                    void* stream) const {
  return send_op(impl_, true, data, count, t, peer, tag, stream);
}
Request Comm::irecv(void* data, size_t count, DType t, int peer, int tag, void* stream) const {
  return recv_op(impl_, true, data, count, t, peer, tag, stream);
}

std::vector<std::string> Comm::all_gather_bytes(const std::string& mine) const {
  const Comm::Impl& c = active(impl_, "all_gather_bytes");
  if (c.size == 1) return {mine};
  const size_t n = size_t(c.size);
  std::vector<int64_t> sizes(n);
  const int64_t my_size = int64_t(mine.size());
  all_gather(&my_size, sizes.data(), 1, DType::I64);
  std::vector<std::string> all(n);
  std::vector<const char*> to(n, mine.data());
  std::vector<char*> from(n);
  std::vector<size_t> from_n(n);
  for (size_t p = 0; p < n; p++) {
    all[p].resize(size_t(sizes[p]));
    from[p] = all[p].data();
    from_n[p] = size_t(sizes[p]);
  }
  Op o(c, false, "all_gather_bytes", DType::U8);
  exchange(o, DType::U8, to, std::vector<size_t>(n, mine.size()), from, from_n);
  finish(o);
  return all;
}

void Comm::broadcast_bytes(std::string& data, int root) const {
  const Comm::Impl& c = active(impl_, "broadcast_bytes");
  detail::check_root(where(c, "broadcast_bytes"), root);
  if (c.size == 1) return;
  int64_t n = int64_t(data.size());
  broadcast_op(impl_, false, "broadcast_bytes", &n, 1, DType::I64, root, nullptr);
  data.resize(size_t(n));
  broadcast_op(impl_, false, "broadcast_bytes", data.data(), data.size(), DType::U8, root, nullptr);
}

}  // namespace dsv3::dist

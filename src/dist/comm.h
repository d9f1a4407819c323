// Communicator (P1): groups of ranks and the operations data, expert, tensor and pipeline
// parallelism are built on. Declared once; CMake links exactly one implementation:
// comm_mpi.cpp (Open MPI, the default when it is installed) or comm_single.cpp (one process).
// dist::NcclComm (comm_nccl.h) has the same calls on device buffers, ordered on a CUDA stream.
//
// Contract of every operation:
// - A buffer is (pointer, count, DType). Counts are elements, never bytes, and may exceed
//   INT_MAX: operations are carried out in pieces of at most 1 GiB.
// - Collective operations are called by every rank of the Comm, in the same order, with the same
//   count, dtype, op and root. send/recv pair up by (peer, tag) and must agree on the count.
// - Reductions: Sum, Max, Min on every DType. BF16/F16 are combined pairwise in fp32 and rounded
//   back (as NCCL does); integers wrap. Every rank receives the same bits (Open MPI combines each
//   element in one order, or in mirrored orders that commutative addition makes equal).
// - Failures throw dsv3::Error naming the operation, the rank and MPI's reason; bad arguments are
//   caught before any communication. A receive that gets a different count than it expects is an
//   Error, not a silent short read.
// - Buffers are host memory: `stream` must be nullptr (device buffers go through NcclComm, whose
//   stream is a cudaStream_t).
// - Call from the thread that called init(), unless concurrent_threads() says MPI allows two
//   threads to communicate at once (MPI_THREAD_MULTIPLE); even then two threads never use one
//   Comm for collectives at the same time (their order on every rank would be undefined).
// A Comm of one rank never communicates: reductions, broadcast and barrier leave data as it is,
// reduce_scatter/all_gather/all_to_all(v) copy send to recv, send/recv are an Error (no peer).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace dsv3::dist {

enum class ReduceOp : uint8_t { Sum, Max, Min };

// How a buffer is cut into one piece per rank of the Comm (all_to_allv): piece p is elements
// [displs[p], displs[p] + counts[p]). Empty displs: packed, each piece starts where the previous
// one ends.
struct Pieces {
  std::span<const size_t> counts;
  std::span<const size_t> displs = {};
};

// A started nonblocking operation. Until wait() returns (or test() returns true) its send
// buffers must not change and its receive buffers are undefined. Destroying or overwriting a
// pending Request waits for it (printing, not throwing, a failure).
class Request {
 public:
  struct State;  // defined by the linked implementation
  Request() noexcept;  // already complete
  explicit Request(std::unique_ptr<State> state) noexcept;
  Request(Request&&) noexcept;
  Request& operator=(Request&&) noexcept;
  ~Request();
  void wait();  // blocks until complete; throws Error if the operation failed
  bool test();  // true once complete (and then throws, like wait(), if it failed)
  // Forgets the operation without completing it (MPI keeps its buffers): only on the way out
  // of a process that gives up, where waiting for a peer that stopped would hang the exit.
  void abandon() noexcept;

 private:
  std::unique_ptr<State> state_;
};

// A group of ranks: the world, or a sub-communicator made by split()/subset(). Copies share the
// group (cheap); the group is freed with its last copy. A default Comm is null: what split()
// gives a rank that joins no group; every operation on it throws.
class Comm {
 public:
  struct Impl;  // defined by the linked implementation
  static constexpr int kNoColor = -1;  // split(): this rank joins no group

  Comm() = default;
  explicit Comm(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
  explicit operator bool() const { return impl_ != nullptr; }
  int rank() const;  // 0 .. size()-1 within this group
  int size() const;

  // Sub-communicators; collective over this Comm. split: ranks passing the same color (>= 0)
  // form a group, ordered by key, ties by rank here. subset: the listed ranks of this Comm, in
  // list order; every rank passes the same list; ranks not listed get a null Comm.
  Comm split(int color, int key) const;
  Comm subset(std::span<const int> ranks) const;

  // data (count) becomes the element-wise reduction over all ranks.
  void all_reduce(void* data, size_t count, DType dtype, ReduceOp op = ReduceOp::Sum,
                  void* stream = nullptr) const;
  // recv (count) = reduction over all ranks of block rank() of send (size() blocks of count).
  void reduce_scatter(const void* send, void* recv, size_t count, DType dtype,
                      ReduceOp op = ReduceOp::Sum, void* stream = nullptr) const;
  // recv (size() blocks of count): block p is rank p's send (count). send may be recv's own
  // block (in place).
  void all_gather(const void* send, void* recv, size_t count, DType dtype,
                  void* stream = nullptr) const;
  // send and recv hold size() blocks of count: block p of send goes to rank p, block p of recv
  // came from rank p.
  void all_to_all(const void* send, void* recv, size_t count, DType dtype,
                  void* stream = nullptr) const;
  // Piece p of send goes to rank p; piece p of recv comes from rank p, so recv.counts[p] must be
  // what rank p sends here (MoE dispatch/combine). Counts may be zero; pieces must not overlap.
  void all_to_allv(const void* send, Pieces send_pieces, void* recv, Pieces recv_pieces,
                   DType dtype, void* stream = nullptr) const;
  // data (count) on root is copied to every rank.
  void broadcast(void* data, size_t count, DType dtype, int root, void* stream = nullptr) const;
  void barrier() const;
  // Point to point with another rank (never this one); tag in [0, 32767].
  void send(const void* data, size_t count, DType dtype, int peer, int tag,
            void* stream = nullptr) const;
  void recv(void* data, size_t count, DType dtype, int peer, int tag,
            void* stream = nullptr) const;

  // Whether a message with `tag` from any rank waits to be received (nonblocking; *source gets
  // the sender). For side channels that cannot know who will write: the collective watchdog.
  bool probe(int tag, int* source) const;

  // Nonblocking twins: same contracts; they start the operation and return at once, so work
  // (backward of the next layer, say) overlaps with the communication.
  [[nodiscard]] Request iall_reduce(void* data, size_t count, DType dtype,
                                    ReduceOp op = ReduceOp::Sum, void* stream = nullptr) const;
  [[nodiscard]] Request ireduce_scatter(const void* send, void* recv, size_t count, DType dtype,
                                        ReduceOp op = ReduceOp::Sum,
                                        void* stream = nullptr) const;
  [[nodiscard]] Request iall_gather(const void* send, void* recv, size_t count, DType dtype,
                                    void* stream = nullptr) const;
  [[nodiscard]] Request iall_to_all(const void* send, void* recv, size_t count, DType dtype,
                                    void* stream = nullptr) const;
  [[nodiscard]] Request iall_to_allv(const void* send, Pieces send_pieces, void* recv,
                                     Pieces recv_pieces, DType dtype,
                                     void* stream = nullptr) const;
  [[nodiscard]] Request ibroadcast(void* data, size_t count, DType dtype, int root,
                                   void* stream = nullptr) const;
  [[nodiscard]] Request isend(const void* data, size_t count, DType dtype, int peer, int tag,
                              void* stream = nullptr) const;
  [[nodiscard]] Request irecv(void* data, size_t count, DType dtype, int peer, int tag,
                              void* stream = nullptr) const;

  // Byte strings of any length (sizes travel first). all_gather_bytes: every rank contributes
  // one, every rank gets all of them indexed by rank. broadcast_bytes: root's string is copied
  // to every rank (resized there). Used by `dsv3 curate` for its global dedup.
  std::vector<std::string> all_gather_bytes(const std::string& mine) const;
  void broadcast_bytes(std::string& data, int root) const;

 private:
  std::shared_ptr<Impl> impl_;
};

// Starts the communicator (idempotent). Under mpirun/srun this initialises MPI; a process not
// started by a launcher is a world of one and never touches MPI (no startup cost). A program
// that may run under mpirun calls init() first and finalize() when it ends normally; on an
// error it may exit without finalize(): mpirun then stops the other ranks instead of letting
// them wait forever.
void init(int* argc, char*** argv);
void finalize();
const Comm& world();  // calls init(nullptr, nullptr) if init() was not called
const char* backend_name();  // "mpi" | "single"
// Whether two threads may communicate at once (MPI granted MPI_THREAD_MULTIPLE; a world of one
// has nothing to communicate and says true). DualPipe's overlapped F&B needs it.
bool concurrent_threads();

// Tests only: the piece size large operations are cut into (default 1 GiB; 0 restores it), so
// small tests exercise the paths counts beyond INT_MAX take. Same value on every rank.
void set_chunk_bytes_for_testing(size_t bytes);

}  // namespace dsv3::dist

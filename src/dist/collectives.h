// The collectives of distributed training, with what a run must see about them (P1, P7, O1):
// every operation is started nonblocking on a named Group, its bytes are booked by kind and
// purpose, and waiting for it is guarded by the collective watchdog, which turns a hang into an
// Error naming the operation, the group and the ranks that did not arrive.
//
// Bytes are what this rank sends under a bandwidth-optimal algorithm for the call (ring
// all-reduce 2(n-1)/n S, reduce-scatter and all-gather (n-1)/n S of the whole buffer S, the
// exact pieces an all-to-all(v) sends to other ranks): the volume the analytic model of
// docs/parallel.md predicts, independent of which algorithm Open MPI picks. Time: `busy` is
// start to observed completion of every operation, `exposed` the part of it this rank spent
// blocked in wait() (not hidden behind computation).
//
// The watchdog (collective_timeout > 0). wait() polls the operation; after the timeout it asks
// every other member of the group, over a side channel (a duplicate of the world communicator),
// how far it got on that group; a rank waiting in any collective answers while it polls. After a
// short grace period it throws: "all_reduce #57 of group dp (grads) timed out after 30 s: rank 2
// did not answer (stopped, dead or busy outside collectives); ranks 0, 1, 3 are in it". A process
// may hold several Collectives used by different threads (the pipeline's overlapped F&B): each
// registers its channel, and any of them polling answers on all of them.
#pragma once
#include <array>
#include <atomic>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "dist/comm.h"

namespace dsv3::dist {

enum class Coll : uint8_t { AllReduce, ReduceScatter, AllGather, AllToAll, Broadcast };
constexpr int kCollKinds = 5;
const char* coll_name(Coll k);  // "all_reduce", "reduce_scatter", ...

// What an operation is for, for the metrics: gradient reduction, parameter all-gather (ZeRO),
// expert dispatch/combine, step statistics, tensor parallelism's activation reductions.
enum class Purpose : uint8_t { Grads, Params, Experts, Stats, Tensor };
constexpr int kPurposes = 5;
const char* purpose_name(Purpose p);

// This rank's traffic and communication time since the last clear().
struct CommLedger {
  std::array<double, kCollKinds> bytes{};   // sent, by kind
  std::array<int64_t, kCollKinds> calls{};
  std::array<double, kPurposes> purpose_bytes{};
  double busy_s = 0;     // sum over operations of (observed completion - start)
  double exposed_s = 0;  // blocked in wait() or in a blocking call
  void clear() { *this = {}; }
  CommLedger& operator+=(const CommLedger& o);  // another Collectives' traffic, added in
  double total_bytes() const;
  nlohmann::json to_json() const;  // {"all_reduce": bytes, ...} (kinds with calls only)
};

// A communicator with a name and its members' world ranks (member i = world_ranks[i]).
struct Group {
  Comm comm;
  std::string name;              // "world", "dp", "ep", "edp"
  std::vector<int> world_ranks;
  // Operations started on this group by this rank: written by the one thread that uses the
  // group, read by the watchdog's answers from any thread (atomically, both sides).
  uint64_t started = 0;
  int size() const { return int(world_ranks.size()); }
  int rank() const { return comm.rank(); }
};
// The group of this rank from a Comm and the world ranks of its members (gathered over it).
Group make_group(const Comm& comm, const std::string& name);

// An operation in flight. Destroyed while an exception unwinds the stack it is abandoned, not
// waited for: a rank giving up must not hang on a peer that stopped.
struct Pending {
  Pending() = default;
  Pending(Pending&&) = default;
  Pending& operator=(Pending&&) = default;
  ~Pending();
  Request req;
  Group* group = nullptr;
  Coll kind = Coll::AllReduce;
  Purpose purpose = Purpose::Stats;
  uint64_t seq = 0;   // its number on the group (1-based)
  double t0 = 0;
  bool done = true;
};

class Collectives {
 public:
  // timeout_s: the watchdog's limit for one wait (0 = wait forever, without polling).
  explicit Collectives(double timeout_s);
  ~Collectives();
  Collectives(const Collectives&) = delete;
  Collectives& operator=(const Collectives&) = delete;

  Pending all_reduce(Group& g, Purpose p, void* data, size_t count, DType t,
                     ReduceOp op = ReduceOp::Sum);
  Pending reduce_scatter(Group& g, Purpose p, const void* send, void* recv, size_t count,
                         DType t);
  Pending all_gather(Group& g, Purpose p, const void* send, void* recv, size_t count, DType t);
  Pending all_to_all(Group& g, Purpose p, const void* send, void* recv, size_t count, DType t);
  Pending all_to_allv(Group& g, Purpose p, const void* send, Pieces sp, void* recv, Pieces rp,
                      DType t);

  // Completes the operation (watchdog-guarded); the time spent here is exposed communication.
  void wait(Pending& op);
  // Progress without blocking; true once complete (then wait() returns at once).
  bool test(Pending& op);
  // Blocking shorthand: start and wait.
  void run(Pending op) { wait(op); }
  // Completes a point-to-point send or receive with peer (a world rank) under the same watchdog:
  // after the timeout it asks the peer what it is blocked in and throws an Error that starts
  // with `what` ("pipeline: receiving micro-batch 3's activation from pp rank 1"). Its time is
  // not booked as collective time (the pipeline measures its own idle time).
  void wait_p2p(Request& r, int peer, const std::string& what);

  CommLedger& ledger() { return ledger_; }
  double timeout() const { return timeout_; }

  // For a thread that shares the rank with another one communicating at the same time (the
  // pipeline's overlapped F&B, train/pipeline.h), each with its own Collectives: while set,
  // wait() appends the span [start, end] (now_seconds()) it blocked to *spans, so the pipeline
  // can book as exposed only the time neither thread computed; and every wait gives up with an
  // Error once *abort is true (the other thread failed: waiting out the timeout would only delay
  // its report). Set and read by the thread that uses this object.
  void set_span_sink(std::vector<std::pair<double, double>>* spans) { spans_ = spans; }
  void set_abort_flag(const std::atomic<bool>* abort) { abort_ = abort; }

  // The watchdog's answers: every Collectives of the process with a side channel is registered,
  // and a rank polling in any of them answers queries on all of their channels, naming what each
  // of its threads is blocked in, so a thread blocked in one object does not leave a peer's
  // question to another unanswered.
 private:
  Pending start(Group& g, Coll k, Purpose p, double bytes, Request req);
  void finish(Pending& op);
  static void serve_queries();  // every registered object's channel
  bool aborted() const { return abort_ && abort_->load(std::memory_order_relaxed); }
  [[noreturn]] void abandon(const std::string& what) const;  // after aborted()
  struct Waiting;  // marks what this object is blocked in, for the answers
  [[noreturn]] void time_out(const Pending& op, double waited);
  [[noreturn]] void time_out_p2p(int peer, const std::string& what, double waited);

  double timeout_;
  CommLedger ledger_;
  Comm side_;  // the watchdog's channel: a duplicate of the world
  std::vector<Group*> groups_;  // every group an operation was started on (to answer queries)
  // What this object is blocked in (answers say so): a collective or a point-to-point
  // operation. groups_, waiting_ and waiting_p2p_ change under the registry's lock.
  const Pending* waiting_ = nullptr;
  const std::string* waiting_p2p_ = nullptr;
  std::vector<std::pair<double, double>>* spans_ = nullptr;
  const std::atomic<bool>* abort_ = nullptr;
};

}  // namespace dsv3::dist

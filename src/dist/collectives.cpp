#include "dist/collectives.h"

#include <algorithm>
#include <cstring>
#include <exception>
#include <mutex>
#include <thread>

#include "core/check.h"
#include "core/timer.h"

namespace dsv3::dist {

namespace {
constexpr int kQueryTag = 30001, kReplyTag = 30002;
constexpr size_t kQueryBytes = 64, kReplyBytes = 320;

std::string list_ranks(const std::vector<int>& r) {
  std::string s;
  for (size_t i = 0; i < r.size(); i++) s += (i ? ", " : "") + std::to_string(r[i]);
  return s;
}

// Fixed-size text messages of the watchdog's side channel.
std::vector<uint8_t> pack(const std::string& text, size_t n) {
  std::vector<uint8_t> b(n, 0);
  std::memcpy(b.data(), text.data(), std::min(text.size(), n - 1));
  return b;
}
std::string unpack(const std::vector<uint8_t>& b) {
  return std::string(reinterpret_cast<const char*>(b.data()),
                     strnlen(reinterpret_cast<const char*>(b.data()), b.size()));
}
}  // namespace

const char* coll_name(Coll k) {
  switch (k) {
    case Coll::AllReduce: return "all_reduce";
    case Coll::ReduceScatter: return "reduce_scatter";
    case Coll::AllGather: return "all_gather";
    case Coll::AllToAll: return "all_to_all";
    case Coll::Broadcast: return "broadcast";
  }
  return "?";
}

const char* purpose_name(Purpose p) {
  switch (p) {
    case Purpose::Grads: return "grads";
    case Purpose::Params: return "params";
    case Purpose::Experts: return "experts";
    case Purpose::Stats: return "stats";
    case Purpose::Tensor: return "tensor";
  }
  return "?";
}

CommLedger& CommLedger::operator+=(const CommLedger& o) {
  for (int k = 0; k < kCollKinds; k++)
    bytes[size_t(k)] += o.bytes[size_t(k)], calls[size_t(k)] += o.calls[size_t(k)];
  for (int p = 0; p < kPurposes; p++) purpose_bytes[size_t(p)] += o.purpose_bytes[size_t(p)];
  busy_s += o.busy_s, exposed_s += o.exposed_s;
  return *this;
}

double CommLedger::total_bytes() const {
  double t = 0;
  for (double b : bytes) t += b;
  return t;
}

nlohmann::json CommLedger::to_json() const {
  nlohmann::json j = nlohmann::json::object();
  for (int k = 0; k < kCollKinds; k++)
    if (calls[size_t(k)] > 0) j[coll_name(Coll(k))] = bytes[size_t(k)];
  return j;
}

Group make_group(const Comm& comm, const std::string& name) {
  Group g;
  g.comm = comm;
  g.name = name;
  g.world_ranks.resize(size_t(comm.size()));
  const int32_t me = world().rank();
  comm.all_gather(&me, g.world_ranks.data(), 1, DType::I32);
  return g;
}

namespace {
// Every Collectives with a side channel, for the answers (serve_queries).
struct Registry {
  std::mutex mu;
  std::vector<Collectives*> all;
};
Registry& registry() {
  static Registry r;
  return r;
}

uint64_t load_started(const Group& g) {
  return std::atomic_ref<uint64_t>(const_cast<uint64_t&>(g.started)).load(std::memory_order_relaxed);
}
void bump_started(Group& g) {
  std::atomic_ref<uint64_t>(g.started).fetch_add(1, std::memory_order_relaxed);
}
}  // namespace

// Marks what a Collectives is blocked in for the duration of a wait, also on the way out of an
// exception (an answer must never read a Pending or a string that is gone).
struct Collectives::Waiting {
  Collectives& c;
  Waiting(Collectives& col, const Pending* op, const std::string* p2p) : c(col) {
    std::lock_guard<std::mutex> lock(registry().mu);
    c.waiting_ = op, c.waiting_p2p_ = p2p;
  }
  ~Waiting() {
    std::lock_guard<std::mutex> lock(registry().mu);
    c.waiting_ = nullptr, c.waiting_p2p_ = nullptr;
  }
};

Pending::~Pending() {
  if (!done && std::uncaught_exceptions() > 0) req.abandon();
}

Collectives::Collectives(double timeout_s) : timeout_(timeout_s) {
  DSV3_CHECK(timeout_s >= 0, "collective_timeout must be >= 0 (0 = off)");
  if (timeout_s > 0 && world().size() > 1) side_ = world().split(0, world().rank());
  if (side_) {
    std::lock_guard<std::mutex> lock(registry().mu);
    registry().all.push_back(this);
  }
}

Collectives::~Collectives() {
  std::lock_guard<std::mutex> lock(registry().mu);
  auto& all = registry().all;
  all.erase(std::remove(all.begin(), all.end(), this), all.end());
}

void Collectives::abandon(const std::string& what) const {
  fail(what, " abandoned on rank ", world().rank(), ": the other thread of this rank failed");
}

Pending Collectives::start(Group& g, Coll k, Purpose p, double bytes, Request req) {
  Pending op;
  op.req = std::move(req);
  op.group = &g;
  op.kind = k;
  op.purpose = p;
  op.seq = g.started;  // incremented by the caller before the MPI call (this thread's write)
  op.t0 = now_seconds();
  op.done = false;
  ledger_.bytes[size_t(k)] += bytes;
  ledger_.calls[size_t(k)]++;
  ledger_.purpose_bytes[size_t(p)] += bytes;
  if (std::find(groups_.begin(), groups_.end(), &g) == groups_.end()) {
    std::lock_guard<std::mutex> lock(registry().mu);
    groups_.push_back(&g);
  }
  return op;
}

Pending Collectives::all_reduce(Group& g, Purpose p, void* data, size_t count, DType t,
                                ReduceOp op) {
  const double n = g.size(), S = double(count) * dtype_size(t);
  bump_started(g);
  return start(g, Coll::AllReduce, p, 2 * (n - 1) / n * S, g.comm.iall_reduce(data, count, t, op));
}

Pending Collectives::reduce_scatter(Group& g, Purpose p, const void* send, void* recv,
                                    size_t count, DType t) {
  const double n = g.size();
  bump_started(g);
  return start(g, Coll::ReduceScatter, p, (n - 1) * double(count) * dtype_size(t),
               g.comm.ireduce_scatter(send, recv, count, t));
}

Pending Collectives::all_gather(Group& g, Purpose p, const void* send, void* recv, size_t count,
                                DType t) {
  const double n = g.size();
  bump_started(g);
  return start(g, Coll::AllGather, p, (n - 1) * double(count) * dtype_size(t),
               g.comm.iall_gather(send, recv, count, t));
}

Pending Collectives::all_to_all(Group& g, Purpose p, const void* send, void* recv, size_t count,
                                DType t) {
  const double n = g.size();
  bump_started(g);
  return start(g, Coll::AllToAll, p, (n - 1) * double(count) * dtype_size(t),
               g.comm.iall_to_all(send, recv, count, t));
}

Pending Collectives::all_to_allv(Group& g, Purpose p, const void* send, Pieces sp, void* recv,
                                 Pieces rp, DType t) {
  double sent = 0;
  for (size_t q = 0; q < sp.counts.size(); q++)
    if (int(q) != g.rank()) sent += double(sp.counts[q]) * dtype_size(t);
  bump_started(g);
  return start(g, Coll::AllToAll, p, sent, g.comm.iall_to_allv(send, sp, recv, rp, t));
}

void Collectives::finish(Pending& op) {
  op.done = true;
  ledger_.busy_s += now_seconds() - op.t0;
}

bool Collectives::test(Pending& op) {
  if (op.done) return true;
  if (!op.req.test()) return false;
  finish(op);
  return true;
}

void Collectives::wait(Pending& op) {
  if (op.done) return;
  const double t0 = now_seconds();
  if (timeout_ <= 0 || !side_) {
    op.req.wait();
  } else {
    const Waiting mark(*this, &op, nullptr);
    // Spin briefly (most operations finish within microseconds once every rank is there), then
    // back off so an idle rank does not take the core an oversubscribed neighbour computes on.
    int spins = 0;
    while (!op.req.test()) {
      serve_queries();
      const double waited = now_seconds() - t0;
      if (waited > timeout_) time_out(op, waited);
      if (aborted()) abandon(cat(coll_name(op.kind), " #", op.seq, " of group ", op.group->name));
      if (++spins > 200)
        std::this_thread::sleep_for(std::chrono::microseconds(spins > 2000 ? 1000 : 50));
    }
  }
  const double t1 = now_seconds();
  ledger_.exposed_s += t1 - t0;
  if (spans_) spans_->push_back({t0, t1});
  finish(op);
}

void Collectives::wait_p2p(Request& r, int peer, const std::string& what) {
  if (timeout_ <= 0 || !side_) return r.wait();
  const Waiting mark(*this, nullptr, &what);
  const double t0 = now_seconds();
  int spins = 0;
  while (!r.test()) {  // the same polling as wait(): answers queries, backs off when idle
    serve_queries();
    const double waited = now_seconds() - t0;
    if (waited > timeout_) {
      r.abandon();  // its destructor would wait for the peer that did not come
      time_out_p2p(peer, what, waited);
    }
    if (aborted()) {
      r.abandon();
      abandon(what);
    }
    if (++spins > 200)
      std::this_thread::sleep_for(std::chrono::microseconds(spins > 2000 ? 1000 : 50));
  }
}

// Asks the one peer what it is blocked in (a collective, another point-to-point operation, or
// nothing it can say: busy computing, stopped or dead) and throws with its answer.
void Collectives::time_out_p2p(int peer, const std::string& what, double waited) {
  const auto q = pack("", kQueryBytes);
  Request sent = side_.isend(q.data(), q.size(), DType::U8, peer, kQueryTag);
  const double grace = std::clamp(timeout_ / 4, 1.0, 10.0), t0 = now_seconds();
  std::string answer;
  while (answer.empty() && now_seconds() - t0 < grace) {
    serve_queries();
    int src = -1;
    if (side_.probe(kReplyTag, &src)) {
      std::vector<uint8_t> b(kReplyBytes);
      side_.recv(b.data(), b.size(), DType::U8, src, kReplyTag);
      if (src != peer) continue;  // a late answer to an earlier question
      const std::string text = unpack(b);
      answer = text.substr(text.find('\n') + 1);
      continue;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  sent.abandon();
  fail(what, " timed out after ", int(waited), " s (--collective_timeout ", timeout_, ") on rank ",
       world().rank(), ": rank ", peer,
       answer.empty() ? " did not answer (stopped, dead or busy outside communication)"
                      : " is blocked in " + answer);
}

// Answers every query waiting on any registered side channel: how many operations this rank
// started on the asked group, and what each of its Collectives is blocked in. A thread that
// finds another one answering skips its turn (that one serves every channel).
void Collectives::serve_queries() {
  Registry& reg = registry();
  std::unique_lock<std::mutex> lock(reg.mu, std::try_to_lock);
  if (!lock.owns_lock()) return;
  for (Collectives* c : reg.all) {
    int src = -1;
    while (c->side_.probe(kQueryTag, &src)) {
      std::vector<uint8_t> q(kQueryBytes);
      c->side_.recv(q.data(), q.size(), DType::U8, src, kQueryTag);
      const std::string group = unpack(q);
      long long started = -1;
      std::string in;
      for (const Collectives* o : reg.all) {
        for (const Group* g : o->groups_)
          if (g->name == group) started = (long long)load_started(*g);
        const std::string w = o->waiting_ ? cat(coll_name(o->waiting_->kind), " #", o->waiting_->seq,
                                                " of group ", o->waiting_->group->name)
                              : o->waiting_p2p_ ? *o->waiting_p2p_
                                                : std::string();
        if (!w.empty()) in += (in.empty() ? "" : " and in ") + w;
      }
      const auto r = pack(cat(started, "\n", in.empty() ? std::string("nothing") : in), kReplyBytes);
      c->side_.send(r.data(), r.size(), DType::U8, src, kReplyTag);  // small: sent eagerly
    }
  }
}

void Collectives::time_out(const Pending& op, double waited) {
  const Group& g = *op.group;
  const int me = world().rank();
  const auto q = pack(g.name, kQueryBytes);
  std::vector<Request> sent;
  for (int r : g.world_ranks)
    if (r != me) sent.push_back(side_.isend(q.data(), q.size(), DType::U8, r, kQueryTag));
  // Every member that polls a collective answers within moments; wait a little for the rest.
  const double grace = std::clamp(timeout_ / 4, 1.0, 10.0), t0 = now_seconds();
  std::vector<int> arrived = {me}, behind, silent;
  std::vector<std::string> where;
  std::vector<bool> answered(g.world_ranks.size(), false);
  size_t answers = 0;
  while (answers + 1 < g.world_ranks.size() && now_seconds() - t0 < grace) {
    serve_queries();
    int src = -1;
    if (side_.probe(kReplyTag, &src)) {
      std::vector<uint8_t> b(kReplyBytes);
      side_.recv(b.data(), b.size(), DType::U8, src, kReplyTag);
      const std::string text = unpack(b);
      const size_t nl = text.find('\n');
      const long long started = std::atoll(text.substr(0, nl).c_str());
      for (size_t i = 0; i < g.world_ranks.size(); i++)
        if (g.world_ranks[i] == src && !answered[i]) {
          answered[i] = true;
          answers++;
          if (started >= (long long)op.seq) {
            arrived.push_back(src);
          } else {
            behind.push_back(src);
            where.push_back(cat("rank ", src, " has started ", started < 0 ? 0 : started,
                                " operations on the group and is blocked in ",
                                text.substr(nl + 1)));
          }
        }
      continue;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  for (size_t i = 0; i < g.world_ranks.size(); i++)
    if (!answered[i] && g.world_ranks[i] != me) silent.push_back(g.world_ranks[i]);
  for (Request& r : sent) r.abandon();
  std::sort(arrived.begin(), arrived.end());
  std::string msg = cat(coll_name(op.kind), " #", op.seq, " of group ", g.name, " (",
                        purpose_name(op.purpose), ", ", g.size(), " ranks) timed out after ",
                        int(waited), " s (--collective_timeout ", timeout_, ") on rank ", me,
                        ": ");
  std::vector<int> missing = silent;
  missing.insert(missing.end(), behind.begin(), behind.end());
  std::sort(missing.begin(), missing.end());
  msg += cat(missing.size() == 1 ? "rank " : "ranks ", list_ranks(missing), " did not arrive");
  if (!silent.empty())
    msg += cat(" (no answer from ", list_ranks(silent),
               ": stopped, dead or busy outside collectives)");
  for (const std::string& w : where) msg += "; " + w;
  msg += cat("; ", arrived.size() == 1 ? "rank " : "ranks ", list_ranks(arrived),
             arrived.size() == 1 ? " is" : " are", " waiting in it");
  fail(msg);
}

}  // namespace dsv3::dist

#include "train/pipeline.h"

#include <omp.h>

#include <algorithm>
#include <condition_variable>
#include <exception>
#include <thread>
#include <utility>

#include "core/check.h"
#include "core/timer.h"
#include "train/expert_parallel.h"
#include "train/tp_comm.h"

namespace dsv3 {

StageParts pipeline_parts(const ModelConfig& c, const std::vector<int>& bounds, int rank,
                          PipeSchedule s) {
  const int P = int(bounds.size()) - 1;
  DSV3_CHECK(P >= 1 && rank >= 0 && rank < P, "internal: pipeline rank ", rank, " of ", P);
  StageParts parts;
  if (P == 1) return parts;
  parts.whole = false;
  std::vector<int> stages{rank};
  if (s == PipeSchedule::DualPipe) stages.push_back(P - 1 - rank);
  std::sort(stages.begin(), stages.end());
  for (int st : stages) {
    parts.blocks.push_back({bounds[size_t(st)], bounds[size_t(st) + 1]});
    parts.embed |= st == 0 || (st == P - 1 && c.mtp_depth > 0);
    parts.last |= st == P - 1;
  }
  parts.mirrored = s == PipeSchedule::DualPipe;
  parts.embed_shared = parts.mirrored ? parts.embed : (rank == 0 || rank == P - 1) && c.mtp_depth > 0;
  return parts;
}

struct PipelineStage::Slot {
  std::unique_ptr<Workspace> ws;
  std::unique_ptr<Pass> pass;
};

// A message on its way: a copy of the tensor, so the workspace may be rewritten at once (waiting
// for the send before reusing a buffer can deadlock DualPipe's two directions: each rank's
// send completes only when the other posts a receive it reaches after its own wait).
struct PipelineStage::Outgoing {
  std::vector<std::byte> bytes;
  dist::Request req;
  int peer = 0, tag = 0;
};

namespace {
using Spans = std::vector<std::pair<double, double>>;  // disjoint, in order

// The length of the intersection of two span lists.
double common(const Spans& a, const Spans& b) {
  double t = 0;
  for (size_t i = 0, j = 0; i < a.size() && j < b.size();) {
    t += std::max(0.0, std::min(a[i].second, b[j].second) - std::max(a[i].first, b[j].first));
    if (a[i].second < b[j].second) i++;
    else j++;
  }
  return t;
}

// Two span lists of one thread (disjoint: its waits follow each other) as one, in order.
Spans merged(Spans a, const Spans& b) {
  a.insert(a.end(), b.begin(), b.end());
  std::sort(a.begin(), a.end());
  return a;
}

double length(const Spans& s) {
  double t = 0;
  for (const auto& [a, b] : s) t += b - a;
  return t;
}

// [t0, t1] without the spans (which lie inside it).
Spans outside(const Spans& s, double t0, double t1) {
  Spans r;
  for (const auto& [a, b] : s) {
    if (a > t0) r.push_back({t0, a});
    t0 = std::max(t0, b);
  }
  if (t1 > t0) r.push_back({t0, t1});
  return r;
}
}  // namespace

// The spans [t0, t1] one thread spent blocked on a neighbour during an op (seconds of
// now_seconds()), in order.
struct PipelineStage::Clock {
  Spans blocked;
  Spans comm;  // in collectives (overlapped F&B only)
  double idle() const { return length(blocked); }
};

// The thread an overlapped F&B runs its forward on: one for the stage's life, so its OpenMP team
// (libgomp keeps one per thread) is made once. post() hands it a job, wait() waits for the job
// and rethrows what it threw.
struct PipelineStage::Worker {
  std::mutex mu;
  std::condition_variable cv;
  std::function<void()> job;
  std::exception_ptr error;
  bool busy = false, quit = false;
  std::thread th;

  Worker() : th([this] { loop(); }) {}
  ~Worker() {
    {
      std::lock_guard<std::mutex> lock(mu);
      quit = true;
    }
    cv.notify_all();
    th.join();
  }
  void loop() {
    std::unique_lock<std::mutex> lock(mu);
    for (;;) {
      cv.wait(lock, [&] { return quit || busy; });
      if (!busy) return;  // quit with nothing to do
      lock.unlock();
      std::exception_ptr e;
      try {
        job();
      } catch (...) {
        e = std::current_exception();
      }
      lock.lock();
      error = e, busy = false, job = nullptr;
      cv.notify_all();
    }
  }
  void post(std::function<void()> f) {
    {
      std::lock_guard<std::mutex> lock(mu);
      job = std::move(f), busy = true, error = nullptr;
    }
    cv.notify_all();
  }
  void wait() {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return !busy; });
    if (error) std::rethrow_exception(std::exchange(error, nullptr));
  }
};

// Tags: 2a carries micro-batch a's activation forward, 2a + 1 its gradient backward.
std::string PipelineStage::describe(bool sending, int peer, int tag) const {
  const std::string what = tag == kEvalTag ? std::string("a validation batch's activation")
                           : cat("micro-batch ", tag / 2, "'s ", tag % 2 ? "gradient" : "activation");
  return cat("pipeline: ", sending ? "sending " : "receiving ", what, sending ? " to" : " from",
             " stage rank ", peer, " (world rank ", pp_world_[size_t(peer)], ")");
}

void PipelineStage::send(const Tensor& t, int peer, int tag) {
  std::lock_guard<std::mutex> lock(out_mu_);
  for (auto it = out_.begin(); it != out_.end();) it = it->req.test() ? out_.erase(it) : std::next(it);
  Outgoing& o = out_.emplace_back();
  o.bytes.resize(t.bytes());
  backend::copy({w_.device()}, Tensor(o.bytes.data(), t.numel, t.dtype), t);
  o.req = pp_.isend(o.bytes.data(), t.numel, t.dtype, peer, tag);
  o.peer = peer, o.tag = tag;
  stats_.sent_bytes += double(t.bytes());
}

namespace {
// The residual stream's elements a stage passes on for a micro-batch: N x C, or under --sp this
// tp rank's N / tp rows (the blocks of every stage split rows the same way, so tp rank r of one
// stage hands its rows to tp rank r of the next; the first stage's embedding reduce-scatters
// them, the last stage's head gathers them).
size_t stream_elems(const Pass& p) {
  TensorParallel* tp = p.ws.tensor_parallel();
  const size_t NC = size_t(p.d.N()) * p.w.config().hidden;
  return tp && tp->sequence_parallel && tp->size() > 1 ? NC / size_t(tp->size()) : NC;
}
}  // namespace

struct PipelineStage::Lane {
  int dir = 0, stage = 0, l0 = 0, l1 = 0;
  bool first = false, last = false;
  int from = -1, to = -1;  // the pp ranks its forward input comes from and its output goes to
  int micro0 = 0;          // the step's index of its micro-batch 0
  std::vector<bool> mine_moe;  // which MoE layers (LossReport::moe order) it runs
  WorkspaceConfig cfg;
  std::vector<std::unique_ptr<Slot>> slots;  // one per micro-batch in flight
  Slot& slot(int m) { return *slots[size_t(m) % slots.size()]; }
  // enable_overlap: this direction's own communication (else the stage's watchdog and run()'s
  // exchange and hook). ExpertAllToAll and TpComm hold their group by reference: a Lane never
  // moves (lanes_ holds pointers).
  std::unique_ptr<dist::Collectives> coll;
  dist::Group ep, tp;
  std::unique_ptr<ExpertAllToAll> experts;
  std::unique_ptr<TpComm> tpc;
};

PipelineStage::PipelineStage(const ModelWeights& w, const dist::Group& pp,
                             dist::Collectives& coll, std::vector<int> bounds, PipeSchedule s)
    : w_(w), pp_(pp.comm), pp_world_(pp.world_ranks), coll_(coll), bounds_(std::move(bounds)),
      schedule_(s) {
  rank_ = pp_.rank();
  const int P = stages();
  DSV3_CHECK(pp_.size() == P, "internal: ", P, " stage boundaries for a pipeline group of ",
             pp_.size());
  DSV3_CHECK(s == PipeSchedule::OneFOneB || P % 2 == 0, "--pp_schedule dualpipe needs an even "
             "--pp (two directions over the same stages), not ", P);
  const ModelConfig& c = w.config();
  const int dirs = s == PipeSchedule::DualPipe ? 2 : 1;
  for (int d = 0; d < dirs; d++) {
    auto lane = std::make_unique<Lane>();
    Lane& l = *lane;
    l.dir = d;
    l.stage = d == 0 ? rank_ : P - 1 - rank_;
    l.l0 = bounds_[size_t(l.stage)], l.l1 = bounds_[size_t(l.stage + 1)];
    l.first = l.stage == 0, l.last = l.stage == P - 1;
    const int down = rank_ + 1 < P ? rank_ + 1 : -1, up = rank_ > 0 ? rank_ - 1 : -1;
    l.from = d == 0 ? up : down;
    l.to = d == 0 ? down : up;
    for (int i = 0; i < c.layers; i++)
      if (c.is_moe_layer(i)) l.mine_moe.push_back(i >= l.l0 && i < l.l1);
    if (c.experts > 0)
      for (int k = 1; k <= c.mtp_depth; k++) l.mine_moe.push_back(l.last);
    lanes_.push_back(std::move(lane));
  }
}

PipelineStage::~PipelineStage() = default;

void PipelineStage::enable_overlap(double collective_timeout, const dist::Group* ep,
                                   const dist::Group* tp, bool sequence_parallel) {
  DSV3_CHECK(schedule_ == PipeSchedule::DualPipe && !worker_,
             "internal: F&B overlap is DualPipe's, enabled once");
  DSV3_CHECK(dist::concurrent_threads(), "internal: F&B overlap needs MPI_THREAD_MULTIPLE");
  const auto dup = [](const dist::Group& g, int d) {  // collective over g
    return dist::make_group(g.comm.split(0, g.rank()), cat(g.name, " (direction ", d, ")"));
  };
  for (auto& lp : lanes_) {
    Lane& l = *lp;
    l.coll = std::make_unique<dist::Collectives>(collective_timeout);  // collective: world
    l.coll->set_abort_flag(&abort_);
    if (ep && ep->size() > 1) {
      l.ep = dup(*ep, l.dir);
      l.experts = std::make_unique<ExpertAllToAll>(*l.coll, l.ep, w_.config(), w_.dtype(),
                                                   w_.device());
    }
    if (tp && tp->size() > 1) {
      l.tp = dup(*tp, l.dir);
      l.tpc = std::make_unique<TpComm>(*l.coll, l.tp);
      l.tpc->sequence_parallel = sequence_parallel;
    }
  }
  worker_ = std::make_unique<Worker>();
}

dist::CommLedger PipelineStage::take_ledger() {
  dist::CommLedger sum;
  for (auto& l : lanes_)
    if (l->coll) sum += l->coll->ledger(), l->coll->ledger().clear();
  return sum;
}

dist::Collectives& PipelineStage::coll_of(Lane& l) { return l.coll ? *l.coll : coll_; }

void PipelineStage::check_micros(int M) const {
  if (schedule_ == PipeSchedule::DualPipe) schedule_dualpipe(rank_, stages(), M);  // throws
  DSV3_CHECK(M >= 1 && 2 * M <= 32767, "a pipeline step runs 1 to 16383 micro-batches, not ", M);
}

void PipelineStage::recv(const Tensor& t, int peer, int tag, dist::Collectives& coll,
                         Clock& clock) {
  const double t0 = now_seconds();
  dist::Request r = pp_.irecv(t.data, t.numel, t.dtype, peer, tag);
  coll.wait_p2p(r, pp_world_[size_t(peer)], describe(false, peer, tag));
  clock.blocked.push_back({t0, now_seconds()});
}

void PipelineStage::forward(Lane& lane, int m, Clock& clock) {
  Slot& s = lane.slot(m);
  const int a = lane.micro0 + m;  // the step's micro-batch
  const MicroBatch mb = (*micro_)(a);
  s.pass = std::make_unique<Pass>(w_, *s.ws, *loss_, mb.d, grads_, (*scale_)[size_t(a)]);
  Pass& p = *s.pass;
  load_batch(p, mb, /*mtp=*/true);
  const size_t NC = stream_elems(p);
  if (lane.first) embed_forward(p);
  else recv(s.ws->resid[size_t(lane.l0)].slice(0, NC), lane.from, 2 * a, coll_of(lane), clock);
  blocks_forward(p, lane.l0, lane.l1);
  LossReport& r = reports_[size_t(a)];
  r = {};
  if (lane.last) {
    r.targets = p.targets;
    r.loss = head_loss(p, {});
    r.mtp_loss = mtp_forward(p, {});
    r.total = r.loss + p.loss.mtp_weight * r.mtp_loss;
    if (p.soft) {
      r.distill_loss = p.distill_loss;
      r.total += p.soft->alpha * (r.distill_loss - r.loss);
    }
  } else {
    send(s.ws->resid[size_t(lane.l1)].slice(0, NC), lane.to, 2 * a);
  }
  r.moe = moe_stats(p);
  for (size_t i = 0; i < r.moe.size(); i++) {
    if (i < lane.mine_moe.size() && lane.mine_moe[i]) {
      r.balance_loss += r.moe[i].balance_loss;
      continue;
    }
    r.moe[i].balance_loss = r.moe[i].entropy = 0;  // another stage's layer: its numbers count
    std::fill(r.moe[i].loads.begin(), r.moe[i].loads.end(), 0);
  }
  r.total += r.balance_loss;
}

void PipelineStage::backward(Lane& lane, int m, Clock& clock) {
  Slot& s = lane.slot(m);
  const int a = lane.micro0 + m;
  DSV3_CHECK(s.pass, "internal: backward of micro-batch ", a, " before its forward");
  Pass& p = *s.pass;
  const size_t NC = stream_elems(p);
  if (lane.last) mtp_backward(p);
  else recv(s.ws->dres.slice(0, NC), lane.to, 2 * a + 1, coll_of(lane), clock);
  blocks_backward(p, lane.l0, lane.l1);
  if (lane.first) {
    embed_backward(p);
  } else {
    send(s.ws->dres.slice(0, NC), lane.from, 2 * a + 1);
  }
}

std::vector<LossReport> PipelineStage::run(const WorkspaceConfig& whole, ExpertExchange* experts,
                                           TensorParallel* tp,
                                           const TrainingLossConfig& loss,
                                           const ModelParams& grads, const MicroFn& micro,
                                           const std::vector<float>& scale, const Hooks& hooks) {
  const int M = int(scale.size()), P = stages();
  check_micros(M);
  const double t0 = now_seconds();
  stats_ = {};
  stats_.micros = M;
  // The step's ops on this rank: F or B of a lane's micro-batch m, or an overlapped F&B.
  std::vector<Op> ops;
  const bool dual = schedule_ == PipeSchedule::DualPipe;
  if (!dual) {
    for (const PipeOp& op : schedule_1f1b(rank_, P, M)) ops.push_back({0, op});
  } else {
    for (const DualOp& op : schedule_dualpipe(rank_, P, M)) switch (op.kind) {
        case DualOp::F: ops.push_back({op.dir, {false, op.micro}}); break;
        case DualOp::B:
        case DualOp::BInput: ops.push_back({op.dir, {true, op.micro}}); break;
        case DualOp::W: break;  // the backward computed the weight gradient already
        case DualOp::FAndB:
          if (worker_) {
            ops.push_back({op.dir, {false, op.micro}, op.bdir, op.bmicro});
          } else {
            ops.push_back({op.dir, {false, op.micro}});
            ops.push_back({op.bdir, {true, op.bmicro}});
          }
          break;
      }
  }
  // one workspace per micro-batch in flight, for the lane's layers
  for (auto& lp : lanes_) {
    Lane& l = *lp;
    l.micro0 = dual ? l.dir * (M / 2) : 0;
    const WorkspaceConfig wc = lane_workspace(whole, l, true);
    const size_t want = size_t(inflight(l, M));
    const bool same = wc.max.B == l.cfg.max.B && wc.max.T == l.cfg.max.T &&
                      wc.recompute == l.cfg.recompute && wc.soft_targets == l.cfg.soft_targets;
    if (!same || l.slots.size() != want) l.slots.clear();
    l.cfg = wc;
    while (l.slots.size() < want) {
      auto s = std::make_unique<Slot>();
      s->ws = std::make_unique<Workspace>(w_.config(), w_.dtype(), w_.device(), wc);
      l.slots.push_back(std::move(s));
    }
    for (auto& s : l.slots) {
      s->ws->set_expert_exchange(l.experts ? l.experts.get() : experts);
      s->ws->set_tensor_parallel(l.tpc ? l.tpc.get() : tp);
    }
  }
  loss_ = &loss, grads_ = &grads, micro_ = &micro, scale_ = &scale;
  reports_.assign(size_t(M), LossReport{});
  try {
    run_ops(ops, hooks);
  } catch (...) {
    // A rank giving up must not hang on its way out in a send no stage will receive; the
    // copies stay allocated (MPI may still read them) until this stage is destroyed.
    for (Outgoing& o : out_) o.req.abandon();
    throw;
  }
  stats_.wall_s = now_seconds() - t0;
  loss_ = nullptr, grads_ = nullptr, micro_ = nullptr, scale_ = nullptr;
  return reports_;
}

WorkspaceConfig PipelineStage::lane_workspace(const WorkspaceConfig& whole, const Lane& l,
                                              bool backward) {
  WorkspaceConfig wc = whole;
  wc.layer_begin = l.l0, wc.layer_end = l.l1;
  wc.embed = l.first, wc.head = l.last;
  wc.backward = backward, wc.cuda_graphs = false;
  return wc;
}

int PipelineStage::inflight(const Lane& l, int M) const {
  return schedule_ == PipeSchedule::DualPipe ? inflight_dualpipe(rank_, stages(), M, l.dir)
                                             : inflight_1f1b(l.stage, stages(), M);
}

size_t PipelineStage::activation_bytes(const WorkspaceConfig& whole, int M) const {
  size_t total = 0;
  for (const auto& l : lanes_)
    total += size_t(inflight(*l, M)) *
             Workspace::measure_bytes(w_.config(), w_.dtype(), lane_workspace(whole, *l, true),
                                      w_.device());
  return total;
}

LossReport PipelineStage::forward_only(const WorkspaceConfig& whole, ExpertExchange* experts,
                                       TensorParallel* tp, const MicroBatch& mb) {
  const Lane& lane = *lanes_[0];
  const WorkspaceConfig wc = lane_workspace(whole, lane, false);
  if (!eval_ws_ || wc.max.B != eval_cfg_.max.B || wc.max.T != eval_cfg_.max.T) {
    eval_ws_ = std::make_unique<Workspace>(w_.config(), w_.dtype(), w_.device(), wc);
    eval_cfg_ = wc;
  }
  eval_ws_->set_expert_exchange(experts), eval_ws_->set_tensor_parallel(tp);
  const ForwardOptions opt;
  Pass p(w_, *eval_ws_, TrainingLossConfig{}, mb.d);
  load_batch(p, mb, opt.mtp);
  const size_t NC = stream_elems(p);
  try {
    Clock clock;
    if (lane.first) embed_forward(p);
    else recv(eval_ws_->resid[size_t(lane.l0)].slice(0, NC), lane.from, kEvalTag, coll_, clock);
    blocks_forward(p, lane.l0, lane.l1);
    LossReport r;
    if (lane.last) {
      r.targets = p.targets;
      r.loss = head_loss(p, opt);
      r.mtp_loss = mtp_forward(p, opt);
    } else {
      send(eval_ws_->resid[size_t(lane.l1)].slice(0, NC), lane.to, kEvalTag);
    }
    return r;
  } catch (...) {
    for (Outgoing& o : out_) o.req.abandon();
    throw;
  }
}

void PipelineStage::finish_forwards() {
  for (Outgoing& o : out_)
    coll_.wait_p2p(o.req, pp_world_[size_t(o.peer)], describe(true, o.peer, o.tag));
  out_.clear();
}

void PipelineStage::run_ops(const std::vector<Op>& ops, const Hooks& hooks) {
  int backwards = 0;
  for (const Op& op : ops) {
    const double c0 = now_seconds(), i0 = stats_.idle_s;
    Clock clock;
    if (op.blane >= 0) {
      overlapped(op, backwards++, hooks);
    } else if (op.op.backward) {
      const int k = backwards++;
      if (hooks.before_backward) hooks.before_backward(k);
      backward(*lanes_[size_t(op.lane)], op.op.micro, clock);
      if (hooks.after_backward) hooks.after_backward(k);
    } else {
      forward(*lanes_[size_t(op.lane)], op.op.micro, clock);
    }
    stats_.idle_s += clock.idle();
    stats_.compute_s += (now_seconds() - c0) - (stats_.idle_s - i0);
  }
  const double w0 = now_seconds();
  for (Outgoing& o : out_)
    coll_.wait_p2p(o.req, pp_world_[size_t(o.peer)], describe(true, o.peer, o.tag));
  out_.clear();
  for (auto& l : lanes_)
    for (auto& s : l->slots) s->pass.reset();
  stats_.idle_s += now_seconds() - w0;
}

// An F&B on two threads: the forward on the worker, the backward (and the gradient hooks) here.
// This thread's OpenMP threads are split in proportion to the work, a third for the forward (a
// backward costs about two forwards), so that with enough threads both halves end together and
// the overlap costs no compute: with n threads the F&B takes max(n/f, 2n/(n-f)) forward-times
// against 3 one after the other (n = 6: 3 either way). Each half gets at least one thread (with
// one or two the halves time-share the cores). Neither touches the other's lane: the two are
// different directions, so different workspaces, layers and communicators. The rank idles when
// neither thread computes (blocked on a neighbour, or done while the other is blocked).
void PipelineStage::overlapped(const Op& op, int backward_no, const Hooks& hooks) {
  const int threads = omp_get_max_threads();
  const int fwd_threads = std::max(1, (threads + 1) / 3);
  const int bwd_threads = std::max(1, threads - fwd_threads);
  Lane &fl = *lanes_[size_t(op.lane)], &bl = *lanes_[size_t(op.blane)];
  Clock fc, bc;
  double f_end = 0;
  abort_ = false;
  std::atomic<int> first_failure{0};  // 1: the forward failed first, 2: the backward
  const auto failed = [&](int who) {
    int none = 0;
    first_failure.compare_exchange_strong(none, who);
    abort_ = true;
  };
  fl.coll->set_span_sink(&fc.comm), bl.coll->set_span_sink(&bc.comm);
  // only once the worker is done: its waits read the sink
  const auto unsink = [&] { fl.coll->set_span_sink(nullptr), bl.coll->set_span_sink(nullptr); };
  const double t0 = now_seconds();
  worker_->post([&] {
    omp_set_num_threads(fwd_threads);
    try {
      forward(fl, op.op.micro, fc);
    } catch (...) {
      failed(1);
      throw;
    }
    f_end = now_seconds();
  });
  omp_set_num_threads(bwd_threads);
  double b_end = 0;
  try {
    if (hooks.before_backward) hooks.before_backward(backward_no);
    backward(bl, op.bmicro, bc);
    if (hooks.after_backward) hooks.after_backward(backward_no);
    b_end = now_seconds();
  } catch (...) {
    failed(2);
    omp_set_num_threads(threads);
    // the forward uses this stage's slots: it must end (its waits give up, abort_) before the
    // error unwinds them; the error reported is the half that failed first, not the other
    // half's "abandoned"
    std::exception_ptr fwd_error;
    try {
      worker_->wait();
    } catch (...) {
      fwd_error = std::current_exception();
    }
    unsink();
    if (first_failure == 1 && fwd_error) std::rethrow_exception(fwd_error);
    throw;
  }
  omp_set_num_threads(threads);
  try {
    worker_->wait();
  } catch (...) {
    unsink();
    throw;
  }
  unsink();
  const double t1 = now_seconds();
  // A thread is idle while blocked on a neighbour and once done; it waits in communication
  // while in a collective; it computes in the rest of [t0, its end]. The rank idles (the bubble)
  // when neither computes nor communicates, and is exposed to communication when neither
  // computes and one communicates: the directions' ledgers booked each thread's collective time
  // whole, so they are corrected to that.
  Spans f_idle = fc.blocked, b_idle = bc.blocked;
  f_idle.push_back({f_end, t1}), b_idle.push_back({b_end, t1});
  const double idle = common(f_idle, b_idle);
  const Spans f_wait = merged(f_idle, fc.comm), b_wait = merged(b_idle, bc.comm);
  const double exposed = common(f_wait, b_wait) - idle;
  fl.coll->ledger().exposed_s -= length(fc.comm);
  bl.coll->ledger().exposed_s += exposed - length(bc.comm);
  stats_.idle_s += idle;
  stats_.overlap_s += common(outside(merged(fc.blocked, fc.comm), t0, f_end),
                             outside(merged(bc.blocked, bc.comm), t0, b_end));
}

}  // namespace dsv3

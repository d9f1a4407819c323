// One pipeline stage of a training step (P5): the model's layer-range passes (model.h) run on
// this rank's blocks [bounds[s], bounds[s+1]), the embedding on the first stage, the final norm,
// head and MTP modules on the last, in the order of the schedule (pipeline_schedule.h).
// Activations go forward and their gradients backward between neighbouring stages with
// send/recv on the pp group; model code never communicates.
//
// Each in-flight micro-batch has its own workspace (1F1B: P - s of them on stage s), restricted
// to the stage's layers. DualPipe runs two such stages per rank, one per direction. Its F&B ops
// run the forward of one direction on a second thread beside the backward of the other
// (enable_overlap, DeepSeek-V3 section 3.2.1: one micro-batch's communication hides behind the
// other's computation), or one after the other. Its W ops are empty: the model's backward
// computes weight gradients with input gradients, so a postponed W is already done
// (docs/decisions.md). A rank's weights hold only its stages' tensors (pipeline_parts,
// docs/decisions.md "Distributed II"): gradients reduce over dp. The MTP modules on the last
// stage read the embedding stage 0 trains, so the last stage holds a copy; the two copies'
// gradients are summed over both stages (dp_mirror, train/grad_sync.h), so they stay equal.
// Validation runs forward_only through the same stages.
#pragma once
#include <atomic>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <vector>

#include "dist/collectives.h"
#include "dist/comm.h"
#include "model/model.h"
#include "train/pipeline_schedule.h"
#include "train/step.h"

namespace dsv3 {

// What one step's pipeline cost this stage. idle_s: blocked waiting for a neighbour (the
// bubble, plus any imbalance between stages; during an overlapped F&B, the time neither thread
// computed); compute_s: the rest of the wall time. overlap_s: the time an overlapped F&B's two
// threads both computed (0 without overlap).
struct PipeStepStats {
  double wall_s = 0, idle_s = 0, compute_s = 0, overlap_s = 0;
  double sent_bytes = 0;
  int micros = 0;
};

// What pipeline rank `rank` of bounds.size() - 1 stages holds of the model (its parameter table,
// params.h StageParts): under 1F1B stage `rank`, under DualPipe stages rank and P-1-rank (so
// rank P-1-rank holds the same: two copies of every parameter, as DeepSeek-V3 notes). The
// embedding lives on the first stage and, when the model has MTP modules (they read it, as
// DeepSeek-V3 shares it), on the last too.
StageParts pipeline_parts(const ModelConfig& c, const std::vector<int>& bounds, int rank,
                          PipeSchedule s);

class PipelineStage {
 public:
  // bounds: stages + 1 layer boundaries (pipeline_split); pp: this rank's pipeline group, its
  // rank this rank's stage (1F1B) or stages r and P-1-r (DualPipe's two directions). Waits for
  // neighbours go through coll's watchdog: a stage that stops turns into an Error naming it.
  PipelineStage(const ModelWeights& w, const dist::Group& pp, dist::Collectives& coll,
                std::vector<int> bounds, PipeSchedule s);
  ~PipelineStage();

  int rank() const { return rank_; }
  int stages() const { return int(bounds_.size()) - 1; }
  PipeSchedule schedule() const { return schedule_; }
  // Throws unless the schedule can run M micro-batches per step (DualPipe: M even, >= 2P).
  void check_micros(int M) const;

  // DualPipe: from now on an F&B runs its forward on a second thread (this stage's, persistent)
  // beside its backward, with a third of the caller's OpenMP threads (the backward the rest; at
  // least one each). Each direction gets its
  // own collectives watchdog, and over duplicates of ep and tp (null: not used) its own expert
  // exchange and tensor-parallel hook, which run()'s `experts` and `tp` then stand aside for: a
  // micro-batch's forward and backward run in one direction, so the expert rows its forward
  // keeps stay with one exchange, and the two threads never share a communicator for
  // collectives (ep and tp peers run the same schedule, so each direction's collectives come in
  // the same order on every peer). Needs dist::concurrent_threads(). Collective over the world
  // (it duplicates communicators): every rank calls it, in the same order, or none does.
  void enable_overlap(double collective_timeout, const dist::Group* ep, const dist::Group* tp,
                      bool sequence_parallel);
  // The directions' own communication since the last call (enable_overlap; empty otherwise),
  // for the step's ledger.
  dist::CommLedger take_ledger();

  // Around each backward on this rank, numbered 0, 1, ... in the order they run (the gradient
  // reduction's hooks: it reduces after the last).
  struct Hooks {
    std::function<void(int)> before_backward, after_backward;
  };
  // F and B of micro-batches 0..scale.size()-1 (micro(a) asked for before F(a), on the forward
  // thread under overlap; its gradient scaled by scale[a]) in the schedule's order; gradients
  // add into grads. Under overlap both threads write gradients: the last stage's forward its
  // head, final norm and MTP modules' (head_loss and mtp_forward run their backward at once),
  // the other thread its own stage's; an F&B's halves are different stages, and the hooks run
  // on the calling thread only. DualPipe sends the
  // first half of the micro-batches down from rank 0 and the second half up from rank P-1.
  // Returns this rank's part of each micro-batch's report: the losses and targets where it runs
  // the last stage, the router statistics of the MoE layers it runs (zero elsewhere), so summing
  // over the ranks of a pipeline gives the whole model's report.
  // experts, tp: the expert exchange and tensor-parallel hook of the stage's workspaces.
  std::vector<LossReport> run(const WorkspaceConfig& whole, ExpertExchange* experts,
                              TensorParallel* tp, const TrainingLossConfig& loss, const ModelParams& grads,
                              const MicroFn& micro, const std::vector<float>& scale,
                              const Hooks& hooks);
  const PipeStepStats& stats() const { return stats_; }

  // Validation (no gradients): micro-batch mb through this rank's stage (under DualPipe the one
  // of its first direction): the first stage embeds, every stage but the last sends its output
  // on, the last computes the losses as model.h's forward() with default options does. Returns
  // the loss, MTP loss and targets on the last stage, zeros elsewhere. Every rank of the pipeline
  // calls it for the same micro-batches in the same order, then finish_forwards().
  LossReport forward_only(const WorkspaceConfig& whole, ExpertExchange* experts,
                          TensorParallel* tp, const MicroBatch& mb);
  void finish_forwards();  // waits for the sends in flight
  // What run() allocates for M micro-batches per step: every lane's in-flight workspaces.
  size_t activation_bytes(const WorkspaceConfig& whole, int M) const;

 private:
  struct Slot;
  struct Lane;  // one direction's stage on this rank
  struct Outgoing;
  struct Clock;   // one thread's blocked time during an op
  struct Worker;  // the F&B forward's thread
  // forward_only's messages: above every training tag (2a + 1 < 32766, check_micros)
  static constexpr int kEvalTag = 32766;
  static WorkspaceConfig lane_workspace(const WorkspaceConfig& whole, const Lane& l, bool backward);
  int inflight(const Lane& l, int M) const;  // workspaces the lane keeps for M micro-batches
  struct Op {  // one op of the step on this rank: F or B of a lane's micro-batch m, or an F&B
    int lane = 0;
    PipeOp op;
    int blane = -1, bmicro = -1;  // an overlapped F&B's backward (op: its forward)
  };
  void run_ops(const std::vector<Op>& ops, const Hooks& hooks);
  void overlapped(const Op& op, int backward_no, const Hooks& hooks);
  void forward(Lane& lane, int m, Clock& clock);
  void backward(Lane& lane, int m, Clock& clock);
  // recv waits through the lane's watchdog (coll_ without one); its blocked time goes to clock
  void recv(const Tensor& t, int peer, int tag, dist::Collectives& coll, Clock& clock);
  void send(const Tensor& t, int peer, int tag);  // nonblocking, from a copy; thread-safe
  dist::Collectives& coll_of(Lane& l);
  std::string describe(bool sending, int peer, int tag) const;  // for the watchdog's errors

  const ModelWeights& w_;
  dist::Comm pp_;
  std::vector<int> pp_world_;  // world rank of each pp rank
  dist::Collectives& coll_;
  std::vector<int> bounds_;
  PipeSchedule schedule_;
  int rank_ = 0;
  std::vector<std::unique_ptr<Lane>> lanes_;
  std::unique_ptr<Workspace> eval_ws_;  // forward_only's, for lane 0's layers
  WorkspaceConfig eval_cfg_;
  std::vector<LossReport> reports_;
  std::mutex out_mu_;         // out_ and stats_.sent_bytes (both threads send)
  std::list<Outgoing> out_;  // sends in flight
  PipeStepStats stats_;
  std::unique_ptr<Worker> worker_;  // enable_overlap
  // An overlapped F&B's half that fails sets it: the other half's waits (its direction's
  // Collectives) then give up at once instead of at their own timeout.
  std::atomic<bool> abort_{false};
  // set for the duration of run()
  const TrainingLossConfig* loss_ = nullptr;
  const ModelParams* grads_ = nullptr;
  const MicroFn* micro_ = nullptr;
  const std::vector<float>* scale_ = nullptr;
};

}  // namespace dsv3

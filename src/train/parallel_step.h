// The optimizer step of a training run on one process or over many (P2, P3, P6, P8): what the
// trainer calls instead of compute_gradients/apply_update (step.h) so that the loop, the guard,
// evaluation and checkpoints stay one piece of code. Model code stays single-device: this file
// wraps its passes (forward_backward with a backward hook for the gradient buckets) and gives
// the MoE layers an expert exchange (expert_parallel.h) through the workspace.
//
// One process (world of one): exactly step.h's compute_gradients and apply_update on a
// TrainState. Several: data parallel over dp with expert parallelism carved out of it (ep), the
// gradient reduction of grad_sync.h, and ZeRO:
//   zero 0: a TrainState over this rank's table (all dense parameters, its experts); the
//           reduced gradient is complete on every rank, every rank updates everything.
//   zero 1/2: fp32 master weights and the optimizer's state arrays exist for the rank's own
//           pieces only (GradSync::own); after the update each rank writes its pieces into the
//           compute-dtype weights and all-gathers the rest. The optimizer only needs to be
//           elementwise over its state arrays (AdamW::state()); docs/parallel.md says what a
//           non-elementwise one (Muon) needs.
#pragma once
#include <memory>
#include <vector>

#include "dist/collectives.h"
#include "dist/layout.h"
#include "model/tensor_parallel.h"
#include "train/grad_sync.h"
#include "train/parallel_config.h"
#include "train/state.h"
#include "train/step.h"

namespace dsv3 {

class ExpertAllToAll;
class PipelineStage;
class TpComm;
struct ShardData;

// This process's place in the run: the layout (resolved against the world), its groups, the
// distributed settings and the collectives. Made once, collectively, by every rank.
struct ParallelContext {
  dist::ParallelLayout layout;
  dist::RankCoords at;
  int world = 1, rank = 0;
  DistConfig cfg;
  ExpertShard shard;  // the routed experts this rank holds
  // The whole model, and (tp > 1) the tensor-parallel group: this rank's weights, workspace and
  // optimizer are built from local_model() (model/tensor_parallel.h), its slices of every
  // split tensor under the HF names.
  ModelConfig model;
  dist::Group tp;
  ModelConfig local_model() const { return tensor_parallel_config(model, layout.tp); }
  std::unique_ptr<dist::Collectives> coll;
  dist::Group world_group, dp, ep, edp;
  // Pipeline parallelism (pp > 1): the pp group (stage = its rank), each stage's first layer
  // (pipeline_split; stages + 1 entries), what this rank holds of the model (its stages' layers,
  // pipeline_parts) and the groups over which the tensors that stage s and P-1-s both hold (the
  // embedding; under DualPipe all) reduce their gradients (grad_sync.h).
  dist::Group pp;
  std::vector<int> pp_bounds;
  StageParts parts;
  dist::Group dp_mirror, edp_mirror;
  bool concurrent_threads = true;  // every rank's MPI lets two threads communicate at once
  bool distributed() const { return world > 1; }
  bool root() const { return rank == 0; }
  std::string describe() const;  // "4 ranks: dp 4 x tp 1 x pp 1, ep 2, zero 1"
  // DualPipe with --pp_overlap and an MPI that lets two threads communicate: F&B ops run their
  // forward and backward at once (PipelineStage::enable_overlap).
  bool pp_overlap() const;
  std::string overlap_note() const;  // for describe(): how DualPipe's F&B ops run
};
// Checks the layout against the world size and the model without communicating (errors name
// what to change): what make_parallel_context checks before it splits the world.
// seq_len: the training sequence length (the pipeline split balances FLOPs at it; 0: max_seq).
void validate_parallel(const dist::ParallelLayout& layout, const DistConfig& cfg,
                       const ModelConfig& model, int world_size, int seq_len = 0);
// The pipeline schedule against the micro-batches per step that --global_batch (or batch x
// grad_accum x dp), --batch and the layout give each rank (DualPipe: even, >= 2 pp).
void validate_pipeline_micros(const dist::ParallelLayout& layout, const DistConfig& cfg,
                              int world_size, int batch, int grad_accum);
// Collective over the world: the context of this rank.
std::unique_ptr<ParallelContext> make_parallel_context(const dist::ParallelLayout& layout,
                                                       const DistConfig& cfg,
                                                       const ModelConfig& model, int seq_len = 0);

// Reads tensor values by name from a checkpoint of either kind (single file or sharded).
struct CheckpointReader {
  std::function<void(const std::string& array, const std::string& tensor, size_t begin,
                     size_t count, float* out)> read;
  std::function<bool(const std::string& array)> has;
};

// What this rank holds of the training state (M7), bytes: the compute-dtype weights (with the
// fp32 routing biases), the fp32 gradients (the full-size buffer backward adds into, plus ZeRO's
// reduced pieces), the optimizer (fp32 master weights where separate from the weights, and the
// moments). params: elements of this rank's parameter table.
struct RankMemory {
  double weights = 0, grads = 0, optimizer = 0;
  double params = 0;
};

// What one step's communication cost this rank (O1).
struct StepComm {
  dist::CommLedger ledger;
  double grad_wire_bytes = 0;  // the gradient reduction's share (compressed or not)
  double compute_s = 0;        // forward + backward + optimizer, without exposed communication
  // Pipeline parallelism: the mean over stages of the time blocked on a neighbour, and of its
  // share of the pipeline's wall time (the bubble; -1 without pp), the schedule's share on equal
  // stages (ideal_bubble_fraction; 1F1B (P-1)/(M+P-1)), and the activation bytes this rank sent.
  double pp_idle_s = 0, pp_bubble_fraction = -1, pp_bubble_formula = 0, pp_send_bytes = 0;
  // DualPipe's overlapped F&B ops: the mean over stages of the time both threads computed at
  // once (on fewer cores than threads, time-sharing them; 0 when F&B ops run one after the
  // other).
  double pp_overlap_s = 0;
};

class ParallelStep {
 public:
  // qat: quantisation-aware training (TrainState's; not with ZeRO, whose pieces cut through the
  // rows that share an int8 scale).
  ParallelStep(ParallelContext& ctx, ModelWeights& w, const AdamWConfig& oc,
               const PrecisionConfig& pc, const ModelConfig& c, bool qat = false);
  ~ParallelStep();
  // The workspace whose passes this step runs (its MoE layers get the expert exchange).
  void attach(Workspace& ws);
  // The expert exchange (ep > 1; else null): EPLB places its replicas, which this step keeps
  // equal to their home experts after every update and load.
  ExpertAllToAll* experts() { return experts_.get(); }
  // The pipeline stage (pp > 1; else null): validation runs its forward (evaluate_parallel).
  PipelineStage* pipeline() { return pipe_.get(); }

  LossScaler& scaler();
  int64_t updates() const;
  void set_updates(int64_t n);
  // The batch plan of the next step (which sequences of the global batch this rank runs).
  const BatchPlan& plan() const { return plan_; }
  // (Throws when the pipeline schedule cannot run the plan's micro-batches.)
  void set_plan(BatchPlan p);

  // Parameters from fp32 values in the whole model's table layout (a fresh initialisation).
  void load_full(const std::vector<float>& full);
  // Parameters and optimizer state from a checkpoint (any layout wrote it).
  void restore(const CheckpointReader& r);

  // Zeroes the gradients, runs this rank's share.size() micro-batches (micro(a), each asked for
  // right before its pass; its loss weighted by share[a], its share of the global batch),
  // reduces. Loss, norm and expert loads are global.
  Gradients compute_gradients(Workspace& ws, const TrainingLossConfig& loss,
                              const StepSettings& s, int64_t step, const MicroFn& micro,
                              const std::vector<double>& share);
  double apply_update(const StepSettings& s, int64_t step, const Gradients& g);

  // One process: the TrainState (single-file checkpoints read and write it directly).
  TrainState* single() { return single_.get(); }
  // Distributed: this rank's pieces of the parameters and optimizer state (a checkpoint shard).
  ShardData snapshot() const;
  RankMemory memory() const;
  // The last step's communication (call after apply_update; the trainer adds compute time).
  StepComm last_comm() const;
  // Per dp rank, compute seconds per sequence of the last step (balancing, metrics).
  const std::vector<double>& rank_seconds() const { return rank_sec_; }

 private:
  double update_weights(const StepSettings& s, int64_t step, const Gradients& g);
  void update_bias_sharded(const std::vector<MoeLayerStats>& moe, double gamma);
  void load_local(const std::vector<float>& local);
  const Tensor& grads() const;
  const ModelParams& grad_view() const;

  ParallelContext& ctx_;
  ModelWeights& w_;
  ModelConfig c_;
  std::unique_ptr<TrainState> single_;  // one process, or zero 0
  std::unique_ptr<GradSync> sync_;
  std::unique_ptr<ExpertAllToAll> experts_;
  std::unique_ptr<PipelineStage> pipe_;
  std::unique_ptr<TpComm> tp_;
  // The gradient norm's spans (own_spans_flat/_shard): under tp, the replicated tensors count on
  // tp rank 0 only (their gradients are the same on every tp rank).
  std::vector<ParamSpan> norm_flat_, norm_shard_;
  double pp_idle_ = 0, pp_wall_ = 0, pp_overlap_ = 0;  // last step, summed over stages
  // zero 1/2
  Buffer grads_;         // fp32, this rank's whole table: what backward accumulates into
  ModelParams grad_view_;
  Buffer master_;        // fp32, own pieces
  std::unique_ptr<AdamW> opt_;
  LossScaler scaler_;
  BatchPlan plan_;
  std::vector<double> rank_sec_;
};

}  // namespace dsv3

// What the training loop needs around the parallel step (trainer.cpp): reading checkpoints of
// either kind by tensor name, the manifest of a sharded save, the debug rank faults, the
// communication metrics and console text, and the EPLB report.
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "checkpoint/checkpoint.h"
#include "checkpoint/sharded.h"
#include "eval/eval.h"
#include "train/parallel_step.h"

namespace dsv3 {

// Values by tensor name from a single-file checkpoint (full arrays) or a sharded one. The
// reader refers to its argument, which must outlive it.
CheckpointReader checkpoint_reader(const Checkpoint& ck);
CheckpointReader checkpoint_reader(const ShardedCheckpoint& sc);
// A sharded checkpoint's config and train state as a Checkpoint without values (for
// spec_from_checkpoint / state_from_checkpoint).
Checkpoint sharded_checkpoint_state(const std::string& dir);
// The manifest of a sharded save at `step` (its shard list is added when it commits).
nlohmann::json shard_manifest(const ModelConfig& c, const nlohmann::json& train,
                              const ParallelContext& ctx, int64_t step);

// Every rank's RankMemory (ParallelStep::memory), gathered over the world (collective):
// [{"rank", "pp", "params", "weights_bytes", "grads_bytes", "optimizer_bytes", "total_bytes"}].
nlohmann::json rank_memory_json(ParallelContext& ctx, const RankMemory& mine);
// "weights 1.2 MB + grads 2.4 MB + optimizer 4.8 MB = 8.4 MB on the fullest rank (1), holding
// 51% of the parameters" (whole_params: the whole model's table, elements)
std::string rank_memory_text(const nlohmann::json& ranks, double whole_params);

// --rank_fault: at the start of step `step` (1-based) the named rank kills (SIGKILL) or stops
// (SIGSTOP) itself, once per run directory (remembered in OUT/.rank_fault_done, so a restarted
// run gets past it).
void inject_rank_fault(const RankFault& f, const ParallelContext& ctx, int64_t step,
                       const std::string& run_dir);

// metrics.jsonl fields of a distributed step: compute_s, comm_s, exposed_comm_s, comm_bytes
// {kind: bytes}, comm_purpose_bytes, grad_wire_bytes, and with --balance_microbatches the
// per-rank sequences and seconds per sequence.
void add_comm_metrics(nlohmann::json& rec, const StepComm& c, double step_s,
                      const ParallelStep& eng, const ParallelContext& ctx);
std::string comm_console_text(const StepComm& c, double step_s);  // "comm 1.2 MB, exposed 3 ms"

// --eplb: every eplb_every steps, EPLB with the homes kept (dist::eplb_place_on_homes) over the
// loads measured since the last placement, applied to the expert exchange from the next step on.
// The record gives per layer the planned per-rank imbalance before (each rank its own experts)
// and after (with the replicas) on those loads, and the imbalance measured from the rows each
// rank really computed since the last placement (under the placement then in effect).
class EplbMonitor {
 public:
  // xc: the expert exchange the placement is applied to (null: nothing to apply, e.g. ep 1).
  EplbMonitor(ParallelContext& ctx, const ModelConfig& c, ExpertAllToAll* xc,
              const ModelWeights& w);
  // A {"kind": "eplb", ...} record when a placement was made at this step, else null. Collective
  // over the world on the steps that place.
  nlohmann::json observe(int64_t steps_done, const std::vector<MoeLayerStats>& moe,
                         const std::vector<std::string>& names);

 private:
  ParallelContext& ctx_;
  ExpertAllToAll* xc_;
  const ModelWeights& w_;
  bool on_;
  int every_, ranks_, redundant_;
  std::vector<std::vector<double>> loads_;  // per MoE layer, accumulated
};
std::string eplb_console_text(const nlohmann::json& rec);

// Validation loss (eval/eval.h's evaluate) split over the data-parallel ranks: rank r evaluates
// batches r, r + dp, ..., the sums are all-reduced over dp, so the result is one process's (the
// same batches; the mean summed in another order). Under expert parallelism every rank runs
// as many forward passes (padding with an uncounted repeat) since each needs its whole ep group.
// Collective over dp; one process: evaluate() itself. Under pipeline parallelism (pipe) each
// batch is a pipeline forward (PipelineStage::forward_only: a stage holds only its layers) and
// the last stage's sums are all-reduced over the world; collective over the world.
EvalResult evaluate_parallel(ParallelContext& ctx, const ModelWeights& w, Workspace& ws,
                             const std::vector<int32_t>& tokens, Dims d, int max_batches,
                             PipelineStage* pipe = nullptr);

}  // namespace dsv3

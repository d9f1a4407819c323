// One optimizer step (docs/model.md "One optimizer step"): micro-batches -> mean gradient ->
// (fp16: unscale, overflow check) -> global-norm clip -> AdamW -> routing-bias update. Split in
// two so the trainer's guard can look at the loss and the gradient norm before anything changes
// (compute_gradients, then apply_update or not); train_step does both. Shared by `dsv3 train`,
// `dsv3 bench` and the reference test tool, so the product's step is the one that is checked.
#pragma once
#include <climits>
#include <cmath>
#include <functional>
#include <string>

#include "model/model.h"
#include "optim/schedule.h"
#include "train/state.h"

namespace dsv3 {

struct StepSettings {
  int grad_accum = 1;
  ScheduleConfig schedule;
  int64_t total_steps = 1;        // the run's length, for the schedule
  double bias_update_rate = 0.0;  // gamma
  // MTP lambda schedule: mtp_weight before step mtp_late_step, mtp_weight_late from it on.
  double mtp_weight = 0.3, mtp_weight_late = 0.1;
  int64_t mtp_late_step = INT64_MAX;
};
// The settings above from a run's loss config, schedule and length.
StepSettings step_settings(int grad_accum, const ScheduleConfig& sched, int64_t total_steps,
                           const TrainingLossConfig& loss);

// Expert-load detail of one MoE layer over a step (O1).
struct LoadStats {
  double max_over_mean = 0, min_over_mean = 0;
  double cv = 0;       // coefficient of variation: std / mean of the per-expert loads
  double entropy = 0;  // mean router entropy (nats)
  std::vector<int64_t> loads;  // tokens routed to each expert over the step
};
LoadStats load_stats(const MoeLayerStats& s);

struct Gradients {
  LossReport loss;       // means over the micro-batches (MoE loads summed)
  double grad_norm = 0;  // of the true (unscaled) gradient, before clipping
  bool finite = true;    // loss and gradient norm
  double loss_scale = 1;
};

struct StepResult {
  LossReport loss;
  double grad_norm = 0;
  double lr = 0;
  bool applied = true;        // false: the update was skipped
  std::string skipped;        // why ("fp16 overflow", a guard reason)
  double loss_scale = 1;
  std::vector<LoadStats> load;  // per MoE layer
};

using MicroFn = std::function<MicroBatch(int)>;  // micro-batch a of the step

// Zeroes the gradients and runs every micro-batch's forward and backward. The gradient buffer
// holds loss_scale x the mean gradient (fp16; 1 otherwise); apply_update divides it out as the
// optimizer reads each value (the buffer itself stays scaled).
Gradients compute_gradients(TrainState& st, Workspace& ws, const TrainingLossConfig& loss,
                            const StepSettings& s, int64_t step, const MicroFn& micro);
// Unscale + clip + AdamW + routing-bias update (step counts from 0, for the schedule; AdamW's
// bias correction counts applied updates). Returns the lr used.
double apply_update(TrainState& st, const StepSettings& s, int64_t step, const Gradients& g);
// Both, the loss scaler deciding whether the update is applied (fp16 overflow: skipped).
StepResult train_step(TrainState& st, Workspace& ws, const TrainingLossConfig& loss,
                      const StepSettings& s, int64_t step, const MicroFn& micro);
// What train_step reports from the two halves (also used by the trainer's guarded step).
StepResult step_result(const Gradients& g, double lr, bool applied, const std::string& why);

// The routing bias tensor of an MoE layer named as in moe_layer_names ("layer 3", "mtp 1").
std::string routing_bias_name(const ModelConfig& c, const std::string& moe_layer);

// b_i += gamma * sign(mean load - load_i) for every sigmoid-routed MoE layer, on the master
// weights; the weights' fp32 bias copies follow.
void update_routing_bias(TrainState& st, const std::vector<MoeLayerStats>& moe, double gamma);

}  // namespace dsv3

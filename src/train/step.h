// One optimizer step (docs/model.md "One optimizer step"): micro-batches -> mean gradient ->
// global-norm clip -> AdamW -> routing-bias update. Shared by `dsv3 train` and the reference
// test tool so the product's step is the one that is checked.
#pragma once
#include <climits>
#include <cmath>
#include <functional>

#include "model/model.h"
#include "optim/adamw.h"
#include "optim/schedule.h"

namespace dsv3 {

struct StepSettings {
  int grad_accum = 1;
  double clip = 1.0;
  ScheduleConfig schedule;
  double bias_update_rate = 0.0;  // gamma
  // MTP lambda schedule: mtp_weight before step mtp_late_step, mtp_weight_late from it on.
  double mtp_weight = 0.3, mtp_weight_late = 0.1;
  int64_t mtp_late_step = INT64_MAX;
};
// The settings above from a run's loss config and length.
StepSettings step_settings(int grad_accum, double clip, const ScheduleConfig& sched,
                           const TrainingLossConfig& loss);

struct StepResult {
  LossReport loss;        // means over the micro-batches
  double grad_norm = 0;   // before clipping
  double lr = 0;
  std::vector<double> load_max_over_mean;  // per MoE layer, this step
};

// `micro(a)` returns micro-batch a's tokens (B, T+1). step counts from 0.
StepResult train_step(Model& model, AdamW& opt, const StepSettings& s, int64_t step, Dims d,
                      const std::function<const int32_t*(int)>& micro);

// b_i += gamma * sign(mean load - load_i) for every sigmoid-routed MoE layer.
void update_routing_bias(Model& model, double gamma);

}  // namespace dsv3

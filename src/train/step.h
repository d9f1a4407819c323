// One optimizer step (docs/model.md "One optimizer step"): micro-batches -> mean gradient ->
// global-norm clip -> AdamW -> routing-bias update. Shared by `dsv3 train` and the reference
// test tool so the product's step is the one that is checked.
#pragma once
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
};

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

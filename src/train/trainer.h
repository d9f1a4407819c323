// `dsv3 train`: the training loop around the optimizer step -- data, the guard, evaluation,
// checkpoints, metrics, and the sample at the end.
#pragma once
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "checkpoint/checkpoint.h"
#include "core/rng.h"
#include "train/run_config.h"

namespace dsv3 {

// What a checkpoint's "train" JSON holds besides weights and moments: step, RNG, data position,
// tokens seen, every settings group, the loss scaler and the guard. Enough for an exact resume.
struct RunState {
  int64_t steps_done = 0;
  uint64_t tokens_seen = 0;
  int64_t attempts = 0;  // step attempts so far, replays after a rollback included
  int64_t updates = 0;   // optimizer updates applied (AdamW's bias correction counts these)
  nlohmann::json data, loss_scaler, guard;
  Rng rng{1};
  std::string run_id;  // the run this state belongs to (train/run_dir.h); "" in older files
};
nlohmann::json run_state_json(const RunSpec& spec, const RunState& st);
// The run's settings from a checkpoint (model, losses and every other group), in either the
// current layout ("settings") or the one before the per-component configs ("train_config").
RunSpec spec_from_checkpoint(const Checkpoint& ck);
RunState state_from_checkpoint(const Checkpoint& ck);

// Trains; `resume` (when given) supplies weights, moments, step, data position and the rest.
void run_training(const RunSpec& spec, const Checkpoint* resume);

}  // namespace dsv3

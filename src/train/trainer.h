// `dsv3 train`: the training loop around train_step() -- data, evaluation, checkpoints,
// metrics, and the sample at the end.
#pragma once
#include <optional>

#include "checkpoint/checkpoint.h"
#include "core/rng.h"
#include "model/config.h"
#include "train/train_config.h"

namespace dsv3 {

struct RunSpec {
  ModelConfig model;
  TrainingLossConfig loss;
  TrainConfig train;
};

// The checkpoint's "train" JSON: everything resume needs besides weights and moments.
// The run's RNG (data order decisions, sampling) is saved with it so resume is exact.
nlohmann::json run_state_json(const RunSpec& spec, int64_t steps_done,
                              const nlohmann::json& data_state, uint64_t tokens_seen,
                              const Rng& rng);
// Restores the run's settings from a checkpoint (model, loss and training settings).
RunSpec spec_from_checkpoint(const Checkpoint& ck);

// Trains; `resume` (when given) supplies weights, moments, step and data position.
void run_training(const RunSpec& spec, const Checkpoint* resume);

}  // namespace dsv3

// The settings that belong to a training run itself (its length, batch, seed, directory, device);
// every component it uses owns its own config struct and field table: ModelConfig and
// TrainingLossConfig (model), AdamWConfig (optimizer), ScheduleConfig, PrecisionConfig,
// DataConfig, CheckpointConfig, EvalConfig, GuardConfig, ParallelLayout. RunSpec gathers them;
// the CLI assembles the flag groups from the same tables (O5).
#pragma once
#include <string>
#include <vector>

#include "checkpoint/checkpoint.h"
#include "core/fields.h"
#include "dist/layout.h"
#include "eval/eval.h"
#include "model/block.h"
#include "model/config.h"
#include "optim/adamw.h"
#include "optim/precision.h"
#include "optim/schedule.h"
#include "train/compress.h"
#include "train/guard.h"
#include "train/metrics.h"
#include "train/parallel_config.h"
#include "train/train_data.h"

namespace dsv3 {

struct RunConfig {
  long long steps = 200;
  int batch = 8;       // sequences per micro-batch (B)
  int seq_len = 256;   // T
  int grad_accum = 1;  // micro-batches per optimizer step
  Recompute recompute = Recompute::None;
  long long seed = 1;
  std::string out = "runs/default";
  int sample_tokens = 160;  // printed at the end (0 = none)
  double peak_gflops = 0;   // for MFU; 0 = measure the compute dtype's GEMM peak at start
  std::string device = "cpu";
  Dims dims() const { return {batch, seq_len}; }
};
const std::vector<FieldSpec>& run_fields();
void validate(const RunConfig& r);

struct RunSpec {
  ModelConfig model;
  TrainingLossConfig loss;
  RunConfig run;
  AdamWConfig optimizer;
  ScheduleConfig schedule;
  PrecisionConfig precision;
  DataConfig data;
  CheckpointConfig checkpoint;
  EvalConfig eval;
  GuardConfig guard;
  dist::ParallelLayout parallel;
  CompressionConfig compress;
  MetricsConfig metrics;
  DistConfig distributed;
};
// Every group of a run, titled as in --help and in checkpoints.
std::vector<FieldGroup> run_groups(RunSpec& s);
std::vector<FieldGroup> run_groups_without_model(RunSpec& s);  // what a resumed run may change
// Every setting validated, each by its own component, then the combinations.
void validate(const RunSpec& s);
// Flags that do not apply to this run (data-mixing flags without --data, fp16 settings with
// bf16, ...) are refused, naming the flag and what it needs. set_keys: the keys the user gave.
void reject_inapplicable(const RunSpec& s, const std::vector<std::string>& set_keys);

}  // namespace dsv3

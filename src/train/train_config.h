// Settings of a training run (T1, T2, T4, T8, O1); the model's own settings are ModelConfig and
// TrainingLossConfig. Field list as data: train_fields().
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/fields.h"
#include "data/loader.h"
#include "model/model.h"
#include "optim/adamw.h"
#include "optim/schedule.h"

namespace dsv3 {

struct TrainConfig {
  long long steps = 200;
  int batch = 8;          // sequences per micro-batch (B)
  int seq_len = 256;      // T
  int grad_accum = 1;     // micro-batches per optimizer step
  double lr = 1e-3;
  double min_lr = 1e-4;
  long long warmup = 20;
  ScheduleKind schedule = ScheduleKind::Cosine;
  double decay_frac = 0.2;
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double weight_decay = 0.1;
  double clip = 1.0;      // 0 = no clipping
  Recompute recompute = Recompute::None;
  long long seed = 1;
  std::string data;        // a `dsv3 prepare` directory: shards, domains, tokenizer
  std::string train_data;  // or an llm.c token file; neither = the built-in corpus
  std::string val_data;    // llm.c token file for validation (with train_data)
  bool shuffle = true;     // train_data / built-in corpus: random windows (false: in order)
  std::string mix;         // domain weights "a:0.7,b:0.3" (default: each domain's token share)
  std::string mix_end;     // weights at the end of the run (moved linearly from `mix`)
  double mix_adaptive = 1.0;  // loss-adaptive factor (1 = off; the seed: 1.15)
  int mix_window = 3;         // K evaluations of rising validation loss before a raise
  double fim_rate = 0.1;      // fill-in-the-middle share of documents (DeepSeek-V3: 0.1)
  FimOrder fim_order = FimOrder::PSM;
  int window_overlap = 0;     // tokens shared by consecutive windows of long documents
  // Sequence-length warmup (T10): over the first seq_warmup_steps steps each row of seq_len+1
  // tokens is cut into k rows of seq_len/k (+1) tokens, k a power of two, so the context grows
  // from about seq_warmup_start to seq_len while tokens per step stay the same.
  long long seq_warmup_steps = 0;
  int seq_warmup_start = 64;
  // Rows per loader row at `step` (1 = full length).
  int seq_split(long long step) const;
  long long eval_every = 50;
  int eval_batches = 8;
  long long save_every = 100;  // 0 = only at the end
  int keep = 3;                // checkpoints kept
  std::string out = "runs/default";
  std::string resume;          // checkpoint file or run dir to continue from
  int sample_tokens = 160;     // printed at the end (0 = none)
  double peak_gflops = 0;      // for MFU; 0 = measure the fp32 GEMM peak at start
  std::string device = "cpu";

  AdamWConfig adamw() const { return {beta1, beta2, eps, weight_decay}; }
  ScheduleConfig schedule_config() const {
    return {schedule, lr, min_lr, warmup, steps, decay_frac};
  }
  Dims dims() const { return {batch, seq_len}; }
};

const std::vector<FieldSpec>& train_fields();
void validate(const TrainConfig& t);

}  // namespace dsv3

// Learning-rate schedules (T2). Formulas: docs/model.md "One optimizer step". The run's length
// is the training run's `steps`, passed in (not a setting of its own).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/fields.h"

namespace dsv3 {

// v3: DeepSeek-V3's multi-stage schedule (warmup, constant, cosine decay, two constant tails).
enum class ScheduleKind : uint8_t { Cosine, Wsd, Constant, V3 };
const char* schedule_name(ScheduleKind k);
ScheduleKind parse_schedule(const std::string& s);

struct ScheduleConfig {
  ScheduleKind kind = ScheduleKind::Cosine;
  double lr = 1e-3;         // peak
  double min_lr = 1e-4;     // floor at the end of the decay
  long long warmup = 20;    // steps
  double decay_frac = 0.2;  // WSD: fraction of steps in the final decay
  double final_lr_ratio = 7.3 / 22;  // v3: the last tail's lr / min_lr (V3: 7.3e-6 / 2.2e-5)
  // Batch-size ramp (V3: 3072 -> 15360 sequences over the first 469B tokens): the step's
  // micro-batches grow from batch_ramp_start to grad_accum over the first batch_ramp_tokens.
  long long batch_ramp_tokens = 0;  // 0 = off
  int batch_ramp_start = 1;
};
const std::vector<FieldSpec>& schedule_fields();
void validate(const ScheduleConfig& s);

double lr_at(const ScheduleConfig& s, int64_t step, int64_t total);  // step counts from 0

// V3's stage ends as fractions of the run (tokens in the paper, steps here): constant to 10T,
// cosine to 14.3T, min_lr for 333B, final_lr_ratio * min_lr for the last 167B of 14.8T.
constexpr double kV3ConstantEnd = 10.0 / 14.8, kV3DecayEnd = 14.3 / 14.8,
                 kV3TailEnd = (14.3 + 0.333) / 14.8;

// Micro-batches of the step that starts after tokens_seen tokens: batch_ramp_start at first,
// one more every batch_ramp_tokens / (grad_accum - batch_ramp_start) tokens (Megatron's
// rampup-batch-size in whole micro-batches), grad_accum from batch_ramp_tokens on.
int accum_at(const ScheduleConfig& s, int grad_accum, uint64_t tokens_seen);

}  // namespace dsv3

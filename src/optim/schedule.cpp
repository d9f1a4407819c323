#include "optim/schedule.h"

#include <algorithm>
#include <cmath>

#include "core/check.h"

namespace dsv3 {

const char* schedule_name(ScheduleKind k) {
  switch (k) {
    case ScheduleKind::Cosine: return "cosine";
    case ScheduleKind::Wsd: return "wsd";
    case ScheduleKind::Constant: return "constant";
    case ScheduleKind::V3: return "v3";
  }
  return "?";
}

ScheduleKind parse_schedule(const std::string& s) {
  if (s == "cosine") return ScheduleKind::Cosine;
  if (s == "wsd") return ScheduleKind::Wsd;
  if (s == "constant") return ScheduleKind::Constant;
  if (s == "v3") return ScheduleKind::V3;
  fail("unknown schedule '", s, "' (expected cosine, wsd, constant or v3)");
}

double lr_at(const ScheduleConfig& s, int64_t step, int64_t total) {
  if (step < s.warmup) return s.lr * double(step + 1) / double(s.warmup);
  switch (s.kind) {
    case ScheduleKind::Constant: return s.lr;
    case ScheduleKind::Cosine: {
      const double progress =
          std::min(1.0, double(step - s.warmup) / double(std::max<int64_t>(1, total - s.warmup)));
      return s.min_lr + (s.lr - s.min_lr) * (1.0 + std::cos(M_PI * progress)) / 2.0;
    }
    case ScheduleKind::Wsd: {
      const int64_t decay = std::llround(s.decay_frac * double(total));
      const int64_t start = total - decay;
      if (decay <= 0 || step < start) return s.lr;
      const double frac = std::min(1.0, double(step - start + 1) / double(decay));
      return s.lr + (s.min_lr - s.lr) * frac;
    }
    case ScheduleKind::V3: {
      const auto at = [&](double f) { return int64_t(std::llround(f * double(total))); };
      const int64_t c_end = std::max<int64_t>(at(kV3ConstantEnd), s.warmup);
      const int64_t d_end = std::max(at(kV3DecayEnd), c_end), t_end = std::max(at(kV3TailEnd), d_end);
      if (step < c_end) return s.lr;
      if (step < d_end) {
        const double progress = double(step - c_end) / double(d_end - c_end);
        return s.min_lr + (s.lr - s.min_lr) * (1.0 + std::cos(M_PI * progress)) / 2.0;
      }
      return step < t_end ? s.min_lr : s.min_lr * s.final_lr_ratio;
    }
  }
  return s.lr;
}

int accum_at(const ScheduleConfig& s, int grad_accum, uint64_t tokens_seen) {
  if (s.batch_ramp_tokens <= 0 || s.batch_ramp_start >= grad_accum) return grad_accum;
  const double per_step_up = double(s.batch_ramp_tokens) / double(grad_accum - s.batch_ramp_start);
  const double ups = std::floor(double(tokens_seen) / per_step_up);
  return int(std::min<double>(grad_accum, s.batch_ramp_start + ups));
}

const std::vector<FieldSpec>& schedule_fields() {
  using S = ScheduleConfig;
  static const std::vector<FieldSpec> f = {
      choice("schedule", &S::kind, "cosine|wsd|constant|v3",
             "learning-rate schedule (v3: DeepSeek-V3's warmup, constant to 68%, cosine to 97%, "
             "then min_lr and final_lr_ratio x min_lr tails)",
             schedule_name, parse_schedule),
      field("lr", &S::lr, "peak learning rate", above(0)),
      field("min_lr", &S::min_lr, "learning rate at the end of the decay", at_least(0)),
      field("warmup", &S::warmup, "linear warmup steps", at_least(0)),
      field("decay_frac", &S::decay_frac, "wsd: fraction of steps in the final decay", in_range(0, 1)),
      field("final_lr_ratio", &S::final_lr_ratio, "v3: lr of the last tail / min_lr", in_range(0, 1)),
      field("batch_ramp_tokens", &S::batch_ramp_tokens,
            "batch-size ramp: micro-batches per step grow from batch_ramp_start to grad_accum "
            "over this many tokens (0 = off)", at_least(0)),
      field("batch_ramp_start", &S::batch_ramp_start, "batch-size ramp: micro-batches at the start", in_range(1, 1 << 20)),
  };
  return f;
}

void validate(const ScheduleConfig& s) {
  DSV3_CHECK(s.lr > 0, "lr must be positive, got ", s.lr);
  // a constant schedule never reaches min_lr (its default must not forbid a small --lr)
  DSV3_CHECK(s.min_lr >= 0 && (s.min_lr <= s.lr || s.kind == ScheduleKind::Constant),
             "min_lr must be in [0, lr], got ", s.min_lr);
  DSV3_CHECK(s.warmup >= 0, "warmup must be >= 0");
  DSV3_CHECK(s.decay_frac >= 0 && s.decay_frac <= 1, "decay_frac must be in [0, 1]");
  DSV3_CHECK(s.final_lr_ratio >= 0 && s.final_lr_ratio <= 1, "final_lr_ratio must be in [0, 1]");
  DSV3_CHECK(s.batch_ramp_tokens >= 0, "batch_ramp_tokens must be >= 0");
  DSV3_CHECK(s.batch_ramp_start >= 1, "batch_ramp_start must be >= 1 micro-batch");
}

}  // namespace dsv3

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
  }
  return "?";
}

ScheduleKind parse_schedule(const std::string& s) {
  if (s == "cosine") return ScheduleKind::Cosine;
  if (s == "wsd") return ScheduleKind::Wsd;
  if (s == "constant") return ScheduleKind::Constant;
  fail("unknown schedule '", s, "' (expected cosine, wsd or constant)");
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
  }
  return s.lr;
}

const std::vector<FieldSpec>& schedule_fields() {
  using S = ScheduleConfig;
  static const std::vector<FieldSpec> f = {
      choice("schedule", &S::kind, "cosine|wsd|constant", "learning-rate schedule", schedule_name,
             parse_schedule),
      field("lr", &S::lr, "peak learning rate", above(0)),
      field("min_lr", &S::min_lr, "learning rate at the end of the decay", at_least(0)),
      field("warmup", &S::warmup, "linear warmup steps", at_least(0)),
      field("decay_frac", &S::decay_frac, "wsd: fraction of steps in the final decay", in_range(0, 1)),
  };
  return f;
}

void validate(const ScheduleConfig& s) {
  DSV3_CHECK(s.lr > 0, "lr must be positive, got ", s.lr);
  DSV3_CHECK(s.min_lr >= 0 && s.min_lr <= s.lr, "min_lr must be in [0, lr], got ", s.min_lr);
  DSV3_CHECK(s.warmup >= 0, "warmup must be >= 0");
  DSV3_CHECK(s.decay_frac >= 0 && s.decay_frac <= 1, "decay_frac must be in [0, 1]");
}

}  // namespace dsv3

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

double lr_at(const ScheduleConfig& s, int64_t step) {
  if (step < s.warmup) return s.lr * double(step + 1) / double(s.warmup);
  switch (s.kind) {
    case ScheduleKind::Constant: return s.lr;
    case ScheduleKind::Cosine: {
      const double progress =
          std::min(1.0, double(step - s.warmup) / double(std::max<int64_t>(1, s.total - s.warmup)));
      return s.min_lr + (s.lr - s.min_lr) * (1.0 + std::cos(M_PI * progress)) / 2.0;
    }
    case ScheduleKind::Wsd: {
      const int64_t decay = std::llround(s.decay_frac * double(s.total));
      const int64_t start = s.total - decay;
      if (decay <= 0 || step < start) return s.lr;
      const double frac = std::min(1.0, double(step - start + 1) / double(decay));
      return s.lr + (s.min_lr - s.lr) * frac;
    }
  }
  return s.lr;
}

}  // namespace dsv3

// Learning-rate schedules (T2). Formulas: docs/model.md "One optimizer step".
#pragma once
#include <cstdint>
#include <string>

namespace dsv3 {

enum class ScheduleKind : uint8_t { Cosine, Wsd, Constant };
const char* schedule_name(ScheduleKind k);
ScheduleKind parse_schedule(const std::string& s);

struct ScheduleConfig {
  ScheduleKind kind = ScheduleKind::Cosine;
  double lr = 1e-3;          // peak
  double min_lr = 1e-4;      // floor at the end of the decay
  int64_t warmup = 0;        // steps
  int64_t total = 1;         // steps
  double decay_frac = 0.2;   // WSD: fraction of steps in the final decay
};

double lr_at(const ScheduleConfig& s, int64_t step);  // step counts from 0

}  // namespace dsv3

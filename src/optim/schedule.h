// Learning-rate schedules (T2). Formulas: docs/model.md "One optimizer step". The run's length
// is the training run's `steps`, passed in (not a setting of its own).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/fields.h"

namespace dsv3 {

enum class ScheduleKind : uint8_t { Cosine, Wsd, Constant };
const char* schedule_name(ScheduleKind k);
ScheduleKind parse_schedule(const std::string& s);

struct ScheduleConfig {
  ScheduleKind kind = ScheduleKind::Cosine;
  double lr = 1e-3;         // peak
  double min_lr = 1e-4;     // floor at the end of the decay
  long long warmup = 20;    // steps
  double decay_frac = 0.2;  // WSD: fraction of steps in the final decay
};
const std::vector<FieldSpec>& schedule_fields();
void validate(const ScheduleConfig& s);

double lr_at(const ScheduleConfig& s, int64_t step, int64_t total);  // step counts from 0

}  // namespace dsv3

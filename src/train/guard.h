// Loss-spike and NaN guard (T7). A step whose loss or gradient norm is not finite, or whose loss
// jumps more than spike_zscore standard deviations above the mean of the last spike_window
// accepted steps, is not applied (the step still counts, as Megatron counts skipped iterations).
// After max_bad_steps bad steps in a row the trainer rolls back to the last checkpoint and
// continues with the data after the offending batches; after max_rollbacks rollbacks it stops.
// fp16 gradient overflows are the loss scaler's business, not the guard's.
#pragma once
#include <cstdint>
#include <deque>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/fields.h"

namespace dsv3 {

struct GuardConfig {
  bool guard = true;         // skip updates with a non-finite loss or gradient norm
  double spike_zscore = 0;   // also skip when z = (loss - mean) / std exceeds this (0 = off)
  int spike_window = 100;    // accepted steps the mean and std are taken over
  int max_bad_steps = 3;     // bad steps in a row before a rollback
  int max_rollbacks = 5;     // rollbacks before the run stops with an error
  // Fault injection, for tests of the guard: "nan@A,B spike@C" poisons step attempt A and B
  // (1-based, counting every attempt of the run, replays after a rollback included) with a NaN
  // loss and gradient, and multiplies the loss the guard sees at attempt C by 4.
  std::string inject_fault;
};
const std::vector<FieldSpec>& guard_fields();
void validate(const GuardConfig& g);

enum class Fault : uint8_t { None, Nan, Spike };

class Guard {
 public:
  explicit Guard(const GuardConfig& c);
  // Why a step with this loss and gradient norm must not be applied; "" when it may.
  std::string assess(double loss, double grad_norm) const;
  void accepted(double loss);  // the step was applied
  void rejected();             // the step was skipped
  bool rollback_due() const { return config_.guard && bad_streak_ >= config_.max_bad_steps; }
  // Called when the trainer rolls back; throws once max_rollbacks is exceeded.
  void rolled_back(int64_t step);
  int bad_streak() const { return bad_streak_; }
  Fault fault_at(int64_t attempt) const;

  nlohmann::json state() const;  // the loss window and counters, for exact resume
  void restore(const nlohmann::json& s);

 private:
  GuardConfig config_;
  std::deque<double> window_;
  int bad_streak_ = 0, rollbacks_ = 0;
  std::vector<int64_t> nan_at_, spike_at_;
};

}  // namespace dsv3

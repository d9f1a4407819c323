#include "train/guard.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <sstream>

#include "core/check.h"

namespace dsv3 {

const std::vector<FieldSpec>& guard_fields() {
  using G = GuardConfig;
  static const std::vector<FieldSpec> f = {
      field("guard", &G::guard, "skip updates with a non-finite loss or gradient norm; roll back "
            "after max_bad_steps in a row"),
      field("spike_zscore", &G::spike_zscore,
            "also skip a step whose loss is this many std above the recent mean (0 = off)", at_least(0)),
      field("spike_window", &G::spike_window, "recent accepted steps of the spike statistics", in_range(2, 1000000)),
      field("max_bad_steps", &G::max_bad_steps, "bad steps in a row before rolling back", in_range(1, 1000000)),
      field("max_rollbacks", &G::max_rollbacks, "rollbacks before the run stops", in_range(0, 1000000)),
      field("inject_fault", &G::inject_fault,
            "tests: 'nan@A,B spike@C' poisons step attempts A, B with NaN, spikes C's loss"),
  };
  return f;
}

namespace {
std::vector<int64_t> parse_attempts(const std::string& list, const std::string& spec) {
  std::vector<int64_t> out;
  std::stringstream ss(list);
  std::string item;
  while (std::getline(ss, item, ',')) {
    DSV3_CHECK(!item.empty(), "inject_fault '", spec, "': empty step number");
    const long long v = parse_int("inject_fault", item);
    DSV3_CHECK(v >= 1, "inject_fault '", spec, "': step attempts count from 1, got ", v);
    out.push_back(v);
  }
  return out;
}
void parse_faults(const std::string& spec, std::vector<int64_t>* nan, std::vector<int64_t>* spike) {
  std::stringstream ss(spec);
  std::string tok;
  while (ss >> tok) {
    const size_t at = tok.find('@');
    DSV3_CHECK(at != std::string::npos, "inject_fault '", spec, "': expected kind@steps, got '",
               tok, "'");
    const std::string kind = tok.substr(0, at), steps = tok.substr(at + 1);
    if (kind == "nan") *nan = parse_attempts(steps, spec);
    else if (kind == "spike") *spike = parse_attempts(steps, spec);
    else fail("inject_fault '", spec, "': unknown fault '", kind, "' (nan or spike)");
  }
}
}  // namespace

void validate(const GuardConfig& g) {
  DSV3_CHECK(g.spike_zscore >= 0, "spike_zscore must be >= 0 (0 = off), got ", g.spike_zscore);
  DSV3_CHECK(g.spike_window >= 2, "spike_window must be >= 2, got ", g.spike_window);
  DSV3_CHECK(g.max_bad_steps >= 1, "max_bad_steps must be >= 1, got ", g.max_bad_steps);
  DSV3_CHECK(g.max_rollbacks >= 0, "max_rollbacks must be >= 0, got ", g.max_rollbacks);
  std::vector<int64_t> a, b;
  parse_faults(g.inject_fault, &a, &b);
}

Guard::Guard(const GuardConfig& c) : config_(c) { parse_faults(c.inject_fault, &nan_at_, &spike_at_); }

std::string Guard::assess(double loss, double grad_norm) const {
  if (!config_.guard) return "";
  if (!std::isfinite(loss)) return "non-finite loss";
  if (!std::isfinite(grad_norm)) return "non-finite gradient norm";
  // spikes are judged once half the window is there (earlier losses fall fast and are noisy)
  if (config_.spike_zscore > 0 && int(window_.size()) >= std::max(2, config_.spike_window / 2)) {
    double mean = 0, var = 0;
    for (double x : window_) mean += x;
    mean /= double(window_.size());
    for (double x : window_) var += (x - mean) * (x - mean);
    const double sd = std::sqrt(var / double(window_.size() - 1));
    const double z = sd > 0 ? (loss - mean) / sd : 0.0;
    if (z > config_.spike_zscore) {
      std::ostringstream os;
      os << "loss spike (z = " << z << " > " << config_.spike_zscore << ")";
      return os.str();
    }
  }
  return "";
}

void Guard::accepted(double loss) {
  bad_streak_ = 0;
  window_.push_back(loss);
  while (int(window_.size()) > config_.spike_window) window_.pop_front();
}

void Guard::rejected() { bad_streak_++; }

void Guard::rolled_back(int64_t step) {
  bad_streak_ = 0;
  DSV3_CHECK(++rollbacks_ <= config_.max_rollbacks, "training keeps diverging: ", rollbacks_,
             " rollbacks (the last at step ", step, "); lower --lr, raise --warmup or check the data");
}

Fault Guard::fault_at(int64_t attempt) const {
  if (std::find(nan_at_.begin(), nan_at_.end(), attempt) != nan_at_.end()) return Fault::Nan;
  if (std::find(spike_at_.begin(), spike_at_.end(), attempt) != spike_at_.end()) return Fault::Spike;
  return Fault::None;
}

nlohmann::json Guard::state() const {
  return {{"window", std::vector<double>(window_.begin(), window_.end())},
          {"bad_streak", bad_streak_},
          {"rollbacks", rollbacks_}};
}

void Guard::restore(const nlohmann::json& s) {
  if (s.is_null()) return;  // a checkpoint from before the guard existed
  DSV3_CHECK(s.is_object() && s.contains("window") && s.at("window").is_array(),
             "checkpoint guard state is malformed (expected {window: [losses], ...})");
  window_.clear();
  for (const auto& v : s.at("window")) {
    DSV3_CHECK(v.is_number() && std::isfinite(v.get<double>()),
               "checkpoint guard state: the loss window holds ", v.dump(),
               ", not a finite number");
    window_.push_back(v.get<double>());
  }
  while (int(window_.size()) > config_.spike_window) window_.pop_front();
  auto count = [&](const char* key) {
    if (!s.contains(key)) return 0;
    const nlohmann::json& v = s.at(key);
    DSV3_CHECK(v.is_number_integer() && v.get<int64_t>() >= 0 && v.get<int64_t>() <= INT32_MAX,
               "checkpoint guard state: '", key, "' must be a non-negative integer, got ",
               v.dump());
    return int(v.get<int64_t>());
  };
  bad_streak_ = count("bad_streak");
  rollbacks_ = count("rollbacks");
}

}  // namespace dsv3

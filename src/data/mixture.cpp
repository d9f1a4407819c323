#include "data/mixture.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <set>

#include "core/check.h"

namespace dsv3 {

namespace {

using json = nlohmann::json;

// Checks one weight vector and returns it normalised to sum 1.
std::vector<double> normalised(const std::vector<double>& w, const std::vector<std::string>& names,
                               const char* which) {
  DSV3_CHECK(w.size() == names.size(), "mixture: ", which, " has ", w.size(),
             " weights for ", names.size(), " domains");
  double sum = 0;
  for (size_t i = 0; i < w.size(); i++) {
    DSV3_CHECK(std::isfinite(w[i]) && w[i] >= 0, "mixture: ", which, " weight of domain '",
               names[i], "' is ", w[i], " (must be a finite number >= 0)");
    sum += w[i];
  }
  DSV3_CHECK(sum > 0, "mixture: ", which, " are all zero: at least one domain needs weight");
  std::vector<double> out(w.size());
  for (size_t i = 0; i < w.size(); i++) out[i] = w[i] / sum;
  return out;
}

std::string trim(const std::string& s) {
  const size_t a = s.find_first_not_of(" \t"), b = s.find_last_not_of(" \t");
  return a == std::string::npos ? std::string() : s.substr(a, b - a + 1);
}

}  // namespace

Mixture::Mixture(std::vector<std::string> names, MixtureConfig c)
    : names_(std::move(names)), c_(std::move(c)) {
  DSV3_CHECK(!names_.empty(), "mixture: no domains");
  std::set<std::string> seen;
  for (const auto& n : names_) {
    DSV3_CHECK(!n.empty(), "mixture: a domain has an empty name");
    DSV3_CHECK(seen.insert(n).second, "mixture: domain '", n, "' is listed twice");
  }
  if (c_.start_weights.empty()) c_.start_weights.assign(names_.size(), 1.0);
  start_ = normalised(c_.start_weights, names_, "start weights");
  end_ = c_.end_weights.empty() ? start_ : normalised(c_.end_weights, names_, "end weights");
  DSV3_CHECK(std::isfinite(c_.adaptive_factor) && c_.adaptive_factor > 0,
             "mixture: adaptive factor ", c_.adaptive_factor, " must be > 0 (1 = off)");
  DSV3_CHECK(c_.adaptive_window >= 1, "mixture: adaptive window ", c_.adaptive_window,
             " must be at least 1 evaluation");
  mult_.assign(names_.size(), 1.0);
  run_.assign(names_.size(), {});
}

void Mixture::set_step(int64_t step, int64_t total_steps) {
  DSV3_CHECK(step >= 0, "mixture: step ", step, " is negative");
  step_ = step, total_ = total_steps;
}

std::vector<double> Mixture::weights_at(int64_t step, int64_t total_steps) const {
  const double t =
      total_steps <= 0 ? 0.0 : std::clamp(double(step) / double(total_steps), 0.0, 1.0);
  std::vector<double> w(names_.size());
  double sum = 0;
  for (size_t i = 0; i < w.size(); i++) {
    w[i] = ((1 - t) * start_[i] + t * end_[i]) * mult_[i];
    sum += w[i];
  }
  for (auto& x : w) x /= sum;  // sum > 0: both endpoints have positive sums, multipliers > 0
  return w;
}

std::vector<size_t> Mixture::observe_validation(const std::vector<double>& loss) {
  DSV3_CHECK(loss.size() == names_.size(), "mixture: ", loss.size(),
             " validation losses for ", names_.size(), " domains");
  std::vector<size_t> raised;
  if (c_.adaptive_factor == 1.0) return raised;
  for (size_t i = 0; i < loss.size(); i++) {
    auto& run = run_[i];
    if (!std::isfinite(loss[i])) {
      run.clear();
      continue;
    }
    if (!run.empty() && !(loss[i] > run.back())) run.clear();
    run.push_back(loss[i]);
    if (run.size() == size_t(c_.adaptive_window) + 1) {
      mult_[i] *= c_.adaptive_factor;
      raised.push_back(i);
      run.assign(1, loss[i]);
    }
  }
  return raised;
}

json Mixture::state() const {
  return {{"domains", names_}, {"multipliers", mult_}, {"runs", run_}, {"step", step_},
          {"total_steps", total_}};
}

void Mixture::restore(const json& j) {
  const char* where = "loader state: mixture";
  DSV3_CHECK(j.is_object(), where, " is not an object");
  for (const char* k : {"domains", "multipliers", "runs", "step", "total_steps"})
    DSV3_CHECK(j.contains(k), where, " has no '", k, "'");
  std::vector<std::string> names;
  std::vector<double> mult;
  std::vector<std::vector<double>> run;
  int64_t step = 0, total = 0;
  try {
    names = j["domains"].get<std::vector<std::string>>();
    mult = j["multipliers"].get<std::vector<double>>();
    run = j["runs"].get<std::vector<std::vector<double>>>();
    step = j["step"].get<int64_t>(), total = j["total_steps"].get<int64_t>();
  } catch (const json::exception& e) {
    fail(where, " is malformed: ", e.what());
  }
  DSV3_CHECK(names == names_, where, " is for domains ", json(names).dump(),
             ", this run has ", json(names_).dump());
  DSV3_CHECK(mult.size() == names_.size() && run.size() == names_.size(), where,
             ": multipliers/runs do not match the ", names_.size(), " domains");
  for (size_t i = 0; i < mult.size(); i++) {
    DSV3_CHECK(std::isfinite(mult[i]) && mult[i] > 0, where, ": multiplier of '", names_[i],
               "' is ", mult[i]);
    DSV3_CHECK(run[i].size() <= size_t(c_.adaptive_window), where, ": loss run of '", names_[i],
               "' is longer than the adaptive window ", c_.adaptive_window);
  }
  DSV3_CHECK(step >= 0, where, ": negative step ", step);
  mult_ = std::move(mult), run_ = std::move(run), step_ = step, total_ = total;
}

json Mixture::log_record() const {
  const std::vector<double> w = weights();
  json jw = json::object(), jm = json::object();
  for (size_t i = 0; i < names_.size(); i++) jw[names_[i]] = w[i], jm[names_[i]] = mult_[i];
  return {{"weights", jw}, {"multipliers", jm}};
}

std::vector<double> parse_domain_weights(const std::string& spec,
                                         const std::vector<std::string>& names,
                                         const std::string& what) {
  auto known = [&] {
    std::string s;
    for (const auto& n : names) s += (s.empty() ? "" : ", ") + n;
    return s;
  };
  DSV3_CHECK(!trim(spec).empty(), what, ": empty; expected name:weight,name:weight (domains: ",
             known(), ")");
  std::vector<double> w(names.size(), 0.0);
  std::vector<bool> given(names.size(), false);
  size_t pos = 0;
  while (pos <= spec.size()) {
    const size_t comma = std::min(spec.find(',', pos), spec.size());
    const std::string item = trim(spec.substr(pos, comma - pos));
    pos = comma + 1;
    const size_t colon = item.rfind(':');
    DSV3_CHECK(colon != std::string::npos, what, ": '", item,
               "' is not name:weight (e.g. web:0.6,code:0.4)");
    const std::string name = trim(item.substr(0, colon)), num = trim(item.substr(colon + 1));
    const auto it = std::find(names.begin(), names.end(), name);
    DSV3_CHECK(it != names.end(), what, ": unknown domain '", name, "' (domains: ", known(), ")");
    const size_t i = size_t(it - names.begin());
    DSV3_CHECK(!given[i], what, ": domain '", name, "' is given twice");
    char* end = nullptr;
    const double v = num.empty() ? NAN : std::strtod(num.c_str(), &end);
    DSV3_CHECK(!num.empty() && end == num.c_str() + num.size() && std::isfinite(v), what,
               ": weight of '", name, "' is '", num, "', not a number");
    DSV3_CHECK(v >= 0, what, ": weight of '", name, "' is ", v, " (must be >= 0)");
    w[i] = v, given[i] = true;
  }
  double sum = 0;
  for (double x : w) sum += x;
  DSV3_CHECK(sum > 0, what, ": all weights are zero: at least one domain needs weight");
  return w;
}

std::string format_domain_weights(const std::vector<std::string>& names,
                                  const std::vector<double>& weights) {
  std::string s;
  char buf[64];
  for (size_t i = 0; i < names.size() && i < weights.size(); i++) {
    std::snprintf(buf, sizeof buf, "%.4g", weights[i]);
    s += (i ? "," : "") + names[i] + ":" + buf;
  }
  return s;
}

}  // namespace dsv3

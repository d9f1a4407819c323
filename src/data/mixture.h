// Domain mixing (D8, T10): per-domain sampling weights that move linearly over training and are
// raised for domains whose validation loss keeps rising. Formulas: docs/data.md "Mixing".
//
//   t        = clamp(step / total_steps, 0, 1)            (0 when total_steps <= 0)
//   base_i   = (1 - t) * s_i / sum(s) + t * e_i / sum(e)  (e = s when end_weights is empty)
//   w_i      = base_i * m_i / sum_j(base_j * m_j)         (m: adaptive multipliers, start at 1)
//
// Adaptive rule (factor f, window K): each domain keeps its current run of strictly rising
// validation losses. When the run holds K rises (K + 1 evaluations, each loss above the one
// before), m_i *= f and the run restarts from the latest loss, so a domain is raised at most
// once every K evaluations. A loss that does not rise restarts the run from itself; a
// non-finite loss empties it.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace dsv3 {

struct MixtureConfig {
  std::vector<double> start_weights;  // one per domain, >= 0, positive sum (any scale); empty:
                                      // equal (the Loader fills in each domain's token share)
  std::vector<double> end_weights;    // at the end of the run; empty = constant start_weights
  double adaptive_factor = 1.0;       // multiplier for a domain whose loss keeps rising; 1 = off
  int adaptive_window = 3;            // K: rises in a row that trigger it
};

class Mixture {
 public:
  // Validates sizes, signs, sums and the adaptive settings; errors name the domain.
  Mixture(std::vector<std::string> names, MixtureConfig c);

  const std::vector<std::string>& names() const { return names_; }
  size_t size() const { return names_.size(); }
  const MixtureConfig& config() const { return c_; }

  // The step the weights are taken at (schedules); steps count from 0, step == total_steps is
  // the end of the run (end_weights).
  void set_step(int64_t step, int64_t total_steps);
  int64_t step() const { return step_; }
  int64_t total_steps() const { return total_; }

  std::vector<double> weights() const { return weights_at(step_, total_); }  // in force now
  std::vector<double> weights_at(int64_t step, int64_t total_steps) const;
  const std::vector<double>& multipliers() const { return mult_; }

  // One evaluation's validation loss per domain (same order as names). Applies the adaptive
  // rule and returns the indices of the domains raised by this call.
  std::vector<size_t> observe_validation(const std::vector<double>& per_domain_loss);

  // Multipliers, rising-loss runs and the step; restore() checks it matches these domains.
  nlohmann::json state() const;
  void restore(const nlohmann::json& j);
  // {"weights": {name: w}, "multipliers": {name: m}} for the metrics log.
  nlohmann::json log_record() const;

 private:
  std::vector<std::string> names_;
  MixtureConfig c_;
  std::vector<double> start_, end_;  // normalised
  std::vector<double> mult_;
  std::vector<std::vector<double>> run_;  // per domain: current strictly rising loss run
  int64_t step_ = 0, total_ = 0;
};

// Parses "name:weight,name:weight" (spaces around items allowed) into one weight per name, in
// the order of `names`; unnamed domains get 0. Errors (starting with `what`, e.g. "--mix"):
// unknown domain (the known ones are listed), a missing ':', a weight that is not a finite
// number >= 0, a domain named twice, all weights zero.
std::vector<double> parse_domain_weights(const std::string& spec,
                                         const std::vector<std::string>& names,
                                         const std::string& what = "domain weights");
// "web:0.6,code:0.4" with %.4g weights: the inverse of parse_domain_weights, for logs.
std::string format_domain_weights(const std::vector<std::string>& names,
                                  const std::vector<double>& weights);

}  // namespace dsv3

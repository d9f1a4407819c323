// Hyperparameter sweeps (O3): a search space over `dsv3 train` settings, trials chosen by grid,
// random or TPE search, run as child processes (J at a time, each an ordinary run directory),
// stopped early by an ASHA-style successive-halving rule, logged to JSONL and resumable.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/fields.h"
#include "core/rng.h"

namespace dsv3 {

// One dimension of the space: `name=log(a,b)` (log-uniform float), `name=uniform(a,b)`,
// `name=int(a,b)` (inclusive) or `name=[v1,v2,...]` (categorical, values as given).
struct SweepParam {
  enum class Kind { Log, Uniform, Int, Choice } kind;
  std::string name;
  double lo = 0, hi = 0;
  std::vector<std::string> choices;
};
// Parses 'a=...; b=...' (';' separated); every problem is an Error that names the part.
std::vector<SweepParam> parse_space(const std::string& text);

using TrialParams = std::vector<std::pair<std::string, std::string>>;  // name, value as a flag

// Grid: categorical values as given, ranges as `points` evenly spaced values (log-spaced for
// log, distinct integers for int); the cartesian product, first parameter outermost.
std::vector<TrialParams> grid_points(const std::vector<SweepParam>& space, int points);
TrialParams random_point(const std::vector<SweepParam>& space, Rng& rng);

// A finished trial as the samplers see it: its parameters and metric (lower is better).
struct TrialResult {
  TrialParams params;
  double metric;
};
// Tree-structured Parzen estimator (Bergstra et al. 2011, independent per parameter as Optuna's
// default): the best gamma fraction of the results gives l(x), the rest g(x); of `candidates`
// draws from l the one with the largest l/g wins. Random until `startup` results exist.
TrialParams tpe_point(const std::vector<SweepParam>& space, const std::vector<TrialResult>& done,
                      Rng& rng, int startup = 5, double gamma = 0.25, int candidates = 24);

// ASHA (Li et al. 2020) as a stopping rule (Optuna's SuccessiveHalvingPruner): rung k is at step
// min_steps * eta^k; a trial reaching a rung continues only if its value is among the best
// max(1, n / eta) of the n values any trial has reported at that rung (itself included).
class Asha {
 public:
  Asha(int64_t min_steps, int eta) : min_steps_(min_steps), eta_(eta) {}
  int64_t rung_step(int k) const;
  // The rung a report at `step` completes (the highest k with rung_step(k) <= step), or -1.
  int rung_of(int64_t step) const;
  // Records `value` (lower is better) at rung k and says whether the trial goes on.
  bool report(int k, double value);
  void restore(int k, double value) { values_.resize(std::max<size_t>(values_.size(), size_t(k) + 1)), values_[size_t(k)].push_back(value); }

 private:
  int64_t min_steps_;
  int eta_;
  std::vector<std::vector<double>> values_;  // per rung
};

enum class SweepAlgo : uint8_t { Grid, Random, Tpe };
const char* sweep_algo_name(SweepAlgo a);
SweepAlgo parse_sweep_algo(const std::string& s);

struct SweepConfig {
  std::string space;           // the search space (parse_space)
  int trials = 0;              // 0: the whole grid (grid only)
  SweepAlgo algo = SweepAlgo::Random;
  int jobs = 1;                // trials running at once
  std::string metric = "val_loss";  // a number in the trials' eval records, else train records
  std::string mode = "min";         // min or max
  std::string early_stop = "none";  // none or asha
  long long asha_min_steps = 0;     // rung 0 (0: the trials' eval_every)
  int asha_eta = 3;
  int grid_points = 3;         // values per range dimension in a grid
  long long seed = 1;
  std::string out = "sweeps/default";
};
const std::vector<FieldSpec>& sweep_fields();
void validate(const SweepConfig& c);

// Runs the sweep: train_args are the arguments after `--` (starting with "train"); exe the dsv3
// binary. Resumes a sweep already in c.out (same settings): finished trials are not run again.
// Prints the table of trials and the best one; returns the results (also in c.out/trials.jsonl).
nlohmann::json run_sweep(const SweepConfig& c, const std::vector<std::string>& train_args,
                         const std::string& exe);

}  // namespace dsv3

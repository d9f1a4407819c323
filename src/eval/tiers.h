// Task tiers (E3): an ordered list of tiers, each a set of task files with a metric and a
// threshold; a model moves to the next tier only when every task of the current one reaches its
// threshold, so a weak model is not spent on hard tasks and the result reads "passed tier k".
//
// The tiers file (JSON):
//   {"tiers": [
//     {"name": "basic", "tasks": [{"path": "arith.jsonl", "metric": "acc", "threshold": 0.6}]},
//     {"name": "reading", "tasks": [{"path": "hellaswag.jsonl", "metric": "acc_norm",
//                                    "threshold": 0.4, "shots": 5}]}]}
// Paths are relative to the tiers file. "shots" (optional) overrides --shots for that task.
// Metrics: any the task's layout reports (acc, acc_norm, exact_match, numeric_match, bleu).
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace dsv3::eval {

struct TierTask {
  std::string path, metric;
  double threshold = 0;
  int shots = -1;  // -1: the run's --shots
};
struct Tier {
  std::string name;
  std::vector<TierTask> tasks;
};

// Throws dsv3::Error naming the file and the bad entry.
std::vector<Tier> parse_tiers(const std::string& json_text, const std::string& path);
std::vector<Tier> read_tiers(const std::string& path);

// Whether the metric value passes (values >= threshold pass).
inline bool passes(double value, double threshold) { return value >= threshold; }

}  // namespace dsv3::eval

// What a run shows and records (O1): one live console line with rate and ETA, and a JSONL file
// with a record per step and per evaluation that a person can plot.
#pragma once
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/fields.h"
#include "train/tensorboard.h"

namespace dsv3 {

struct MetricsConfig {
  bool tensorboard = false;  // also write TensorBoard event files into the run directory
  // USD per device-hour (O4): the running cost, wall time x ranks x this, in metrics.jsonl
  // (cost_usd, and cost_projected_usd at the current rate) and on the console line. 0: off.
  double gpu_hour_cost = 0;
};
const std::vector<FieldSpec>& metrics_fields();

// A metrics.jsonl record as TensorBoard values at its step: train records as train/<key>,
// expert_load/<layer>/<stat> and a histogram expert_load/<layer> of the per-expert loads; eval
// records as eval/<domain>/<key>; mixture records as mixture/<what>/<domain>. Returns false for
// records without values (a "start" record becomes a SessionLog instead).
bool tensorboard_summary(const nlohmann::json& record, int64_t* step, TbSummary* out);

class MetricsLog {
 public:
  // Appends to path (a resumed run continues the same file). With tensorboard_dir non-empty,
  // every record also goes to an event file there (EventWriter: queued, written by a thread).
  explicit MetricsLog(const std::string& path, const std::string& tensorboard_dir = "");
  ~MetricsLog();
  // One line, flushed. A {"kind": "start", "step": s} record (a run starting or resuming after
  // s steps) also tells TensorBoard to drop what an earlier, killed process wrote after step s.
  void write(const nlohmann::json& record);

 private:
  std::FILE* f_ = nullptr;
  std::string path_;
  std::unique_ptr<EventWriter> tb_;
};

// The console line: redrawn in place on a terminal, printed every `every` calls otherwise.
class ProgressLine {
 public:
  explicit ProgressLine(long long total);
  void update(long long done, const std::string& text, double eta_seconds);
  void finish();  // ends the line on a terminal
  void print(const std::string& line);  // a permanent line above the progress line

 private:
  long long total_;
  bool tty_;
  long long every_;
  bool open_ = false;
};

}  // namespace dsv3

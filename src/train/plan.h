// The planner (O4): which layout to train a model with on N devices of a kind, and what it will
// cost, before anyone spends GPU money. It enumerates layouts (dp x tp x pp with ep inside dp,
// ZeRO stage, recompute choice, micro-batch size, pipeline schedule), predicts each one's
// per-device memory and step time analytically, keeps the ones that fit and ranks them by time.
// The formulas and what they leave out are in docs/planner.md; the data- and expert-parallel
// volumes are docs/parallel.md's (checked against measurement by bench/bench_dist.py), the
// pipeline bubbles DeepSeek-V3's (1F1B (PP-1)(F+B), DualPipe (PP/2-1)(F&B+B-3W)).
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/fields.h"
#include "model/block.h"
#include "model/config.h"
#include "optim/precision.h"
#include "train/hardware.h"

namespace dsv3 {

enum class PlanSchedule : uint8_t { None, OneFOneB, DualPipe };  // None: pp 1
const char* plan_schedule_name(PlanSchedule s);

// `dsv3 plan` settings. The layout fields constrain the search (0 / "any": enumerate).
struct PlanConfig {
  int gpus = 8;
  std::string gpu = "h100";
  double tokens = 0;          // training tokens (required, > 0)
  double gpu_hour_cost = 0;   // USD per device-hour (0: no cost column)
  int seq_len = 4096;
  long long global_batch = 0; // sequences per step (0: 4M tokens' worth, at least dp)
  Precision precision = Precision::BF16;
  int top = 5;                // rows printed
  double memory_reserve = 0.10;  // share of device memory kept free (allocator, comm buffers)
  double bucket_mb = 25;      // gradient bucket (MiB of fp32): the last one's reduction is exposed
  int dp = 0, tp = 0, pp = 0, ep = 0, batch = 0;
  int zero = -1;              // -1: any of 0, 1, 2
  std::string recompute = "any";  // any|none|selective|block
  std::string schedule = "any";   // any|1f1b|dualpipe
};
const std::vector<FieldSpec>& plan_fields();
void validate(const PlanConfig& p);

struct PlanLayout {
  int dp = 1, tp = 1, pp = 1, ep = 1, zero = 0;
  Recompute recompute = Recompute::None;
  int micro_batch = 1;        // sequences per micro-batch (--batch)
  int micro_batches = 1;      // per pipeline and step: global_batch / (dp x micro_batch)
  PlanSchedule schedule = PlanSchedule::None;
  std::string text() const;   // "dp 128 (ep 64) x tp 1 x pp 16 dualpipe, zero 1, ..."
};

// Bytes per device: the device that needs the most (a pipeline stage).
struct PlanMemory {
  double weights = 0, grads = 0, optimizer = 0, activations = 0, total = 0;
  int in_flight = 1;          // micro-batches whose activations that device holds
};
// Seconds per optimizer step, the slowest stage's share: compute (m micro-batches of forward and
// backward), bubble, exposed communication per kind, the optimizer's memory traffic.
struct PlanTime {
  double compute = 0, bubble = 0, tp = 0, ep = 0, pp = 0, dp = 0, optimizer = 0, step = 0;
};
struct PlanRow {
  PlanLayout layout;
  PlanMemory memory;
  PlanTime time;
  bool fits = false;
  double tokens_per_s = 0, mfu = 0, days = 0, gpu_hours = 0, cost = 0;
  std::string reasons;        // what the time goes to and how close memory is
};

struct Plan {
  const Hardware* hw = nullptr;
  double usable_bytes = 0;    // per device: memory x (1 - reserve)
  long long global_batch = 0;
  long long enumerated = 0, fitting = 0;
  std::vector<PlanRow> best;  // the fitting layouts, fastest first (config.top of them)
  // Per pipeline depth: the least memory any layout needed and whether one fits (the reasons
  // a deeper or shallower pipeline was chosen).
  struct Depth { int pp; double least_bytes; bool fits; };
  std::vector<Depth> depths;
  std::vector<std::string> notes;
};

// Throws an Error with one clear reason when nothing fits or the input is impossible.
Plan make_plan(const ModelConfig& c, const PlanConfig& p);
// One layout's prediction (no fit check beyond filling `fits`); the layout must be valid.
PlanRow predict_layout(const ModelConfig& c, const PlanConfig& p, const PlanLayout& l);
nlohmann::json plan_json(const ModelConfig& c, const PlanConfig& p, const Plan& plan);
std::string plan_text(const ModelConfig& c, const PlanConfig& p, const Plan& plan);

}  // namespace dsv3

// Pipeline parallelism (P5) without the model: how layers are split into stages, the order in
// which each stage runs the forward (F) and backward (B) of a step's micro-batches, and a replay
// of such orders on stages with given F and B times (the unit tests and bench/ measure schedules
// with it; the training step runs the same orders on real stages, train/pipeline.h).
//
// 1F1B (PipeDream-Flush, Megatron's default): stage s of P runs min(P-1-s, M) warm-up forwards,
// then alternates one forward and one backward, then drains the backwards. At most P-s
// micro-batches are in flight on stage s (their activations are kept), and with equal stages
// every stage idles (P-1)(F+B) per step: the bubble.
#pragma once
#include <string>
#include <vector>

#include "model/config.h"

namespace dsv3 {

enum class PipeSchedule : uint8_t { OneFOneB, DualPipe };
const char* pipe_schedule_name(PipeSchedule s);
PipeSchedule parse_pipe_schedule(const std::string& s);

struct PipeOp {
  bool backward = false;
  int micro = 0;
  bool operator==(const PipeOp&) const = default;
};
std::string to_string(const PipeOp& op);  // "F3", "B0"

// Stage s's order of F and B for M micro-batches over P stages.
std::vector<PipeOp> schedule_1f1b(int stage, int stages, int micros);
// Micro-batches in flight at once on `stage` under 1F1B (the activation sets it keeps).
int inflight_1f1b(int stage, int stages, int micros);

// The replay of every stage's order with each F taking f and each B taking b time units, a
// message between stages taking none. Dependencies: F of micro m on stage s after F of m on s-1;
// B of m on s after B of m on s+1 and after F of m on s. Throws Error naming the op when an
// order breaks a dependency, runs an op twice or misses one, or deadlocks.
struct PipeReplay {
  double makespan = 0;
  std::vector<double> busy, bubble;  // per stage: time computing, time idle within the makespan
  // per stage, the ops in the order run with their start times
  std::vector<std::vector<std::pair<double, PipeOp>>> timeline;
  double bubble_fraction() const;    // mean over stages of bubble / makespan
};
PipeReplay replay_schedule(const std::vector<std::vector<PipeOp>>& stages, int micros, double f,
                           double b);
// The idle time per stage the schedule's formula gives: 1F1B (P-1)(F+B).
double bubble_formula_1f1b(int stages, double f, double b);

// DualPipe (DeepSeek-V3 section 3.2.1; the order of deepseek-ai/DualPipe): P ranks (P even) run
// two pipelines in opposite directions over the same stages. Direction 0 enters at rank 0,
// direction 1 at rank P-1; rank r runs stage r of direction 0 and stage P-1-r of direction 1,
// each direction M/2 of the step's M micro-batches (M even, M >= 2P). Besides F and B it has
// F&B (a forward of one direction overlapped with a backward of the other: one op whose time is
// F&B), B without the weight gradient (zero bubble: BInput) and W (the oldest postponed weight
// gradient, first in first out). With the input-gradient part of a backward as long as a forward
// (B - W = F) the most idle rank waits (P/2-1)(F&B+B-3W) per step.
struct DualOp {
  enum Kind : uint8_t { F, B, BInput, W, FAndB } kind = F;
  int dir = 0, micro = 0;    // F, B, BInput; FAndB: its forward
  int bdir = 0, bmicro = 0;  // FAndB: its backward
};
std::string to_string(const DualOp& op);  // "F1.3" (direction 1, micro 3), "F0.2&B1.0", "W"
std::vector<DualOp> schedule_dualpipe(int rank, int ranks, int micros);
// Micro-batches of direction `dir` in flight at once on `rank` (their activations are kept).
int inflight_dualpipe(int rank, int ranks, int micros, int dir);
struct DualCosts {
  double f = 1, b = 2, w = 1, fb = 2.5;  // forward, whole backward, weight part, F&B
};
// As replay_schedule for DualPipe's orders (timeline left empty); `micros` is M (both directions).
PipeReplay replay_dualpipe(const std::vector<std::vector<DualOp>>& ranks, int micros,
                           const DualCosts& c);
double bubble_formula_dualpipe(int ranks, const DualCosts& c);

// The bubble share a schedule has on equal stages as training runs it here (F = 1, B = 2; DualPipe
// without overlap or a separate W: F&B = F + B, W = 0): the mean over stages of idle / makespan
// of the replay. 1F1B: (P-1)/(M+P-1).
double ideal_bubble_fraction(PipeSchedule s, int stages, int micros);

// The first layer of each stage and the end: stages + 1 boundaries, stage s runs blocks
// [bounds[s], bounds[s+1]). pp_layers "2,1,1" sets the counts (they must sum to the layers);
// empty: the contiguous split whose most expensive stage is cheapest by forward FLOPs, the head
// and MTP modules counted on the last stage. Every stage gets at least one layer.
std::vector<int> pipeline_split(const ModelConfig& c, int stages, const std::string& pp_layers,
                                int seq_len);

}  // namespace dsv3

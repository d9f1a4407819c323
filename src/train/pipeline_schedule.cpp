#include "train/pipeline_schedule.h"

#include <algorithm>
#include <array>
#include <limits>
#include <sstream>

#include "core/check.h"

namespace dsv3 {

const char* pipe_schedule_name(PipeSchedule s) {
  return s == PipeSchedule::DualPipe ? "dualpipe" : "1f1b";
}

PipeSchedule parse_pipe_schedule(const std::string& s) {
  if (s == "1f1b") return PipeSchedule::OneFOneB;
  if (s == "dualpipe") return PipeSchedule::DualPipe;
  fail("unknown pipeline schedule '", s, "' (expected 1f1b or dualpipe)");
}

std::string to_string(const PipeOp& op) {
  return (op.backward ? "B" : "F") + std::to_string(op.micro);
}

int inflight_1f1b(int stage, int stages, int micros) {
  return std::min(stages - stage, micros);
}

std::vector<PipeOp> schedule_1f1b(int stage, int stages, int micros) {
  DSV3_CHECK(stages >= 1 && stage >= 0 && stage < stages && micros >= 1,
             "internal: 1F1B of stage ", stage, " of ", stages, " with ", micros, " micro-batches");
  const int warm = std::min(stages - 1 - stage, micros);
  std::vector<PipeOp> ops;
  for (int m = 0; m < warm; m++) ops.push_back({false, m});
  for (int i = 0; i + warm < micros; i++) ops.push_back({false, warm + i}), ops.push_back({true, i});
  for (int m = micros - warm; m < micros; m++) ops.push_back({true, m});
  return ops;
}

double PipeReplay::bubble_fraction() const {
  if (bubble.empty() || makespan <= 0) return 0;
  double s = 0;
  for (double x : bubble) s += x;
  return s / double(bubble.size()) / makespan;
}

PipeReplay replay_schedule(const std::vector<std::vector<PipeOp>>& order, int micros, double f,
                           double b) {
  const int P = int(order.size());
  DSV3_CHECK(P >= 1 && micros >= 1, "internal: replay of ", P, " stages, ", micros, " micros");
  constexpr double kNone = -1;
  // finish[s][m][0 = F, 1 = B]
  std::vector<std::vector<std::array<double, 2>>> finish(
      size_t(P), std::vector<std::array<double, 2>>(size_t(micros), {kNone, kNone}));
  PipeReplay r;
  r.busy.assign(size_t(P), 0.0);
  r.bubble.assign(size_t(P), 0.0);
  r.timeline.resize(size_t(P));
  std::vector<size_t> next(size_t(P), 0);
  std::vector<double> clock(size_t(P), 0.0);
  for (int s = 0; s < P; s++)
    DSV3_CHECK(order[size_t(s)].size() == size_t(2 * micros), "stage ", s, " runs ",
               order[size_t(s)].size(), " ops, not F and B of each of ", micros, " micro-batches");
  for (;;) {
    bool progress = false, left = false;
    for (int s = 0; s < P; s++) {
      while (next[size_t(s)] < order[size_t(s)].size()) {
        left = true;
        const PipeOp op = order[size_t(s)][next[size_t(s)]];
        DSV3_CHECK(op.micro >= 0 && op.micro < micros, "stage ", s, ": ", to_string(op),
                   " is not one of the ", micros, " micro-batches");
        auto& mine = finish[size_t(s)][size_t(op.micro)];
        DSV3_CHECK(mine[op.backward] == kNone, "stage ", s, " runs ", to_string(op), " twice");
        double ready = clock[size_t(s)];
        bool ok = true;
        if (!op.backward) {
          if (s > 0) ok = finish[size_t(s - 1)][size_t(op.micro)][0] != kNone,
                     ready = std::max(ready, finish[size_t(s - 1)][size_t(op.micro)][0]);
        } else {
          DSV3_CHECK(mine[0] != kNone, "stage ", s, " runs ", to_string(op),
                     " before its forward");
          if (s + 1 < P) ok = finish[size_t(s + 1)][size_t(op.micro)][1] != kNone,
                         ready = std::max(ready, finish[size_t(s + 1)][size_t(op.micro)][1]);
        }
        if (!ok) break;  // waits for another stage
        const double cost = op.backward ? b : f;
        r.timeline[size_t(s)].push_back({ready, op});
        mine[op.backward] = ready + cost;
        clock[size_t(s)] = ready + cost;
        r.busy[size_t(s)] += cost;
        next[size_t(s)]++;
        progress = true;
      }
    }
    if (!left) break;
    if (!progress) {
      std::ostringstream os;
      for (int s = 0; s < P; s++)
        if (next[size_t(s)] < order[size_t(s)].size())
          os << " stage " << s << " at " << to_string(order[size_t(s)][next[size_t(s)]]) << ";";
      fail("the pipeline schedule deadlocks:", os.str());
    }
  }
  for (int s = 0; s < P; s++) r.makespan = std::max(r.makespan, clock[size_t(s)]);
  for (int s = 0; s < P; s++) r.bubble[size_t(s)] = r.makespan - r.busy[size_t(s)];
  return r;
}

double bubble_formula_1f1b(int stages, double f, double b) { return (stages - 1) * (f + b); }

std::vector<int> pipeline_split(const ModelConfig& c, int stages, const std::string& pp_layers,
                                int seq_len) {
  const int L = c.layers;
  DSV3_CHECK(stages >= 1, "--pp must be at least 1");
  DSV3_CHECK(stages <= L, "--pp ", stages, " is more pipeline stages than the model's ", L,
             " layers: every stage needs at least one layer (lower --pp)");
  std::vector<int> bounds{0};
  if (!pp_layers.empty()) {
    std::stringstream ss(pp_layers);
    std::string item;
    while (std::getline(ss, item, ',')) {
      const long long n = parse_int("pp_layers", item);
      DSV3_CHECK(n >= 1, "--pp_layers ", pp_layers, ": stage ", bounds.size() - 1, " gets ", n,
                 " layers; every stage needs at least one");
      bounds.push_back(bounds.back() + int(std::min<long long>(n, L + 1)));
    }
    DSV3_CHECK(int(bounds.size()) - 1 == stages, "--pp_layers ", pp_layers, " gives ",
               bounds.size() - 1, " stages, but --pp is ", stages, " (one count per stage)");
    DSV3_CHECK(bounds.back() == L, "--pp_layers ", pp_layers, " adds up to ", bounds.back(),
               " layers, but the model has ", L);
    return bounds;
  }
  // min over contiguous splits of the most expensive stage (dynamic programming, O(P L^2))
  std::vector<double> prefix{0};
  for (int l = 0; l < L; l++) prefix.push_back(prefix.back() + block_fwd_flops_per_token(c, l, seq_len));
  const double tail = tail_fwd_flops_per_token(c, seq_len);
  constexpr double kInf = std::numeric_limits<double>::infinity();
  // best[p][l]: the cheapest maximum over p stages covering layers [0, l); cut[p][l] its last cut
  std::vector<std::vector<double>> best(size_t(stages + 1), std::vector<double>(size_t(L + 1), kInf));
  std::vector<std::vector<int>> cut(size_t(stages + 1), std::vector<int>(size_t(L + 1), 0));
  best[0][0] = 0;
  for (int p = 1; p <= stages; p++)
    for (int l = p; l <= L; l++)
      for (int k = p - 1; k < l; k++) {
        const double stage = prefix[size_t(l)] - prefix[size_t(k)] + (p == stages ? tail : 0.0);
        const double v = std::max(best[size_t(p - 1)][size_t(k)], stage);
        if (v < best[size_t(p)][size_t(l)]) best[size_t(p)][size_t(l)] = v, cut[size_t(p)][size_t(l)] = k;
      }
  bounds.assign(size_t(stages + 1), 0);
  bounds[size_t(stages)] = L;
  for (int p = stages; p >= 1; p--) bounds[size_t(p - 1)] = cut[size_t(p)][size_t(bounds[size_t(p)])];
  return bounds;
}

}  // namespace dsv3

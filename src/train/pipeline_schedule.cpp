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
  // appended, not `const char* + std::string`: GCC 12 warns (-Wrestrict) on that form's insert
  std::string s(1, op.backward ? 'B' : 'F');
  return s += std::to_string(op.micro);
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

std::string to_string(const DualOp& op) {
  const auto one = [](const char* k, int d, int m) {
    return std::string(k) + std::to_string(d) + "." + std::to_string(m);
  };
  switch (op.kind) {
    case DualOp::F: return one("F", op.dir, op.micro);
    case DualOp::B: return one("B", op.dir, op.micro);
    case DualOp::BInput: return one("b", op.dir, op.micro);
    case DualOp::W: return "W";
    case DualOp::FAndB: return one("F", op.dir, op.micro) + "&" + one("B", op.bdir, op.bmicro);
  }
  return "?";
}

std::vector<DualOp> schedule_dualpipe(int rank, int ranks, int micros) {
  DSV3_CHECK(ranks >= 2 && ranks % 2 == 0 && rank >= 0 && rank < ranks,
             "DualPipe needs an even number of pipeline stages (--pp), not ", ranks);
  DSV3_CHECK(micros % 2 == 0 && micros >= 2 * ranks, "DualPipe needs an even number of "
             "micro-batches per step, at least 2 x pp = ", 2 * ranks, ", not ", micros,
             " (raise --global_batch or lower --batch)");
  // The eight steps of DualPipe.step(). "phase" 0/1 is the direction on the first half of the
  // ranks and the other direction on the second half.
  const int half = ranks / 2, hr = std::min(rank, ranks - 1 - rank), hm = micros / 2;
  const bool second = rank >= half, middle = rank == half - 1 || rank == half;
  int nf[2] = {0, 0}, nb[2] = {0, 0};
  std::vector<DualOp> ops;
  const auto dir = [&](int phase) { return phase ^ int(second); };
  const auto F = [&](int ph) { const int d = dir(ph); ops.push_back({DualOp::F, d, nf[d]++}); };
  const auto B = [&](int ph, bool zb) {
    const int d = dir(ph);
    ops.push_back({zb ? DualOp::BInput : DualOp::B, d, nb[d]++});
  };
  const auto FB = [&](int p0, int p1) {
    const int d0 = dir(p0), d1 = dir(p1);
    ops.push_back({DualOp::FAndB, d0, nf[d0]++, d1, nb[d1]++});
  };
  const auto W = [&] { ops.push_back({DualOp::W}); };
  for (int i = 0; i < (half - hr - 1) * 2; i++) F(0);      // 1: nF0
  for (int i = 0; i < hr + 1; i++) F(0), F(1);             // 2: nF0F1
  for (int i = 0; i < half - hr - 1; i++) B(1, true), W(), F(1);  // 3: nB1W1F1
  for (int i = 0; i < hm - ranks + hr + 1; i++) {         // 4: nF0B1F1B0 (the main step)
    if (i == 0 && middle) F(0), B(1, false);  // not overlapped, to shorten the bubble
    else FB(0, 1);
    FB(1, 0);
  }
  for (int i = 0; i < half - hr - 1; i++) B(1, false), FB(1, 0);  // 5: nB1F1B0
  bool zb = false;                                         // 6: nB1B0
  for (int i = 0; i < hr + 1; i++) {
    if (i == (hr + 1) / 2 && hr % 2 == 1) zb = true;
    B(1, zb);
    if (i == (hr + 1) / 2 && hr % 2 == 0) zb = true;
    B(0, zb);
  }
  for (int i = 0; i < half - hr - 1; i++) W(), B(0, true);  // 7: nWB0
  for (int i = 0; i < hr + 1; i++) W();                     // 8: nW
  return ops;
}

int inflight_dualpipe(int rank, int ranks, int micros, int dir) {
  int live = 0, most = 0;
  for (const DualOp& op : schedule_dualpipe(rank, ranks, micros)) {
    if ((op.kind == DualOp::F || op.kind == DualOp::FAndB) && op.dir == dir) most = std::max(most, ++live);
    if ((op.kind == DualOp::B || op.kind == DualOp::BInput) && op.dir == dir) live--;
    if (op.kind == DualOp::FAndB && op.bdir == dir) live--;
  }
  return most;
}

PipeReplay replay_dualpipe(const std::vector<std::vector<DualOp>>& order, int micros,
                           const DualCosts& c) {
  const int P = int(order.size()), H = micros / 2;
  DSV3_CHECK(P >= 2 && P % 2 == 0 && micros % 2 == 0, "internal: DualPipe replay of ", P,
             " ranks, ", micros, " micro-batches");
  constexpr double kNone = -1;
  // finish[dir][stage][micro][0 = F, 1 = B]; stage k of direction d runs on rank
  // d == 0 ? k : P-1-k
  std::vector<std::vector<std::vector<std::array<double, 2>>>> finish(
      2, std::vector<std::vector<std::array<double, 2>>>(
             size_t(P), std::vector<std::array<double, 2>>(size_t(H), {kNone, kNone})));
  const auto stage_of = [&](int dir, int rank) { return dir == 0 ? rank : P - 1 - rank; };
  PipeReplay r;
  r.busy.assign(size_t(P), 0.0);
  r.bubble.assign(size_t(P), 0.0);
  std::vector<size_t> next(size_t(P), 0);
  std::vector<double> clock(size_t(P), 0.0);
  std::vector<int> pending_w(size_t(P), 0);
  // whether the F (or B) of (dir, micro) on `rank` may start, and when its inputs are ready
  const auto ready_f = [&](int rank, int d, int m, double& at) {
    DSV3_CHECK(m >= 0 && m < H, "rank ", rank, ": forward of micro-batch ", m, " of direction ",
               d, " beyond its ", H);
    const int k = stage_of(d, rank);
    DSV3_CHECK(finish[size_t(d)][size_t(k)][size_t(m)][0] == kNone, "rank ", rank,
               " runs F", d, ".", m, " twice");
    if (k == 0) return true;
    const double t = finish[size_t(d)][size_t(k - 1)][size_t(m)][0];
    at = std::max(at, t);
    return t != kNone;
  };
  const auto ready_b = [&](int rank, int d, int m, double& at) {
    DSV3_CHECK(m >= 0 && m < H, "rank ", rank, ": backward of micro-batch ", m,
               " of direction ", d, " beyond its ", H);
    const int k = stage_of(d, rank);
    const auto& mine = finish[size_t(d)][size_t(k)][size_t(m)];
    DSV3_CHECK(mine[1] == kNone, "rank ", rank, " runs B", d, ".", m, " twice");
    DSV3_CHECK(mine[0] != kNone, "rank ", rank, " runs B", d, ".", m, " before its forward");
    if (k == P - 1) return true;
    const double t = finish[size_t(d)][size_t(k + 1)][size_t(m)][1];
    at = std::max(at, t);
    return t != kNone;
  };
  for (;;) {
    bool progress = false, left = false;
    for (int s = 0; s < P; s++) {
      while (next[size_t(s)] < order[size_t(s)].size()) {
        left = true;
        const DualOp& op = order[size_t(s)][next[size_t(s)]];
        double at = clock[size_t(s)], cost = 0;
        bool ok = true;
        switch (op.kind) {
          case DualOp::F: ok = ready_f(s, op.dir, op.micro, at), cost = c.f; break;
          case DualOp::B: ok = ready_b(s, op.dir, op.micro, at), cost = c.b; break;
          case DualOp::BInput: ok = ready_b(s, op.dir, op.micro, at), cost = c.b - c.w; break;
          case DualOp::W:
            DSV3_CHECK(pending_w[size_t(s)] > 0, "rank ", s, " runs W with no postponed weight "
                       "gradient");
            cost = c.w;
            break;
          case DualOp::FAndB: {
            const bool f = ready_f(s, op.dir, op.micro, at);
            ok = ready_b(s, op.bdir, op.bmicro, at) && f;
            cost = c.fb;
            break;
          }
        }
        if (!ok) break;
        const double end = at + cost;
        if (op.kind == DualOp::F || op.kind == DualOp::FAndB)
          finish[size_t(op.dir)][size_t(stage_of(op.dir, s))][size_t(op.micro)][0] = end;
        if (op.kind == DualOp::B || op.kind == DualOp::BInput)
          finish[size_t(op.dir)][size_t(stage_of(op.dir, s))][size_t(op.micro)][1] = end;
        if (op.kind == DualOp::FAndB)
          finish[size_t(op.bdir)][size_t(stage_of(op.bdir, s))][size_t(op.bmicro)][1] = end;
        if (op.kind == DualOp::BInput) pending_w[size_t(s)]++;
        if (op.kind == DualOp::W) pending_w[size_t(s)]--;
        clock[size_t(s)] = end;
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
          os << " rank " << s << " at " << to_string(order[size_t(s)][next[size_t(s)]]) << ";";
      fail("the DualPipe schedule deadlocks:", os.str());
    }
  }
  for (int s = 0; s < P; s++) {
    DSV3_CHECK(pending_w[size_t(s)] == 0, "rank ", s, " leaves ", pending_w[size_t(s)],
               " weight gradients undone");
    for (int d = 0; d < 2; d++)
      for (int m = 0; m < H; m++)
        DSV3_CHECK(finish[size_t(d)][size_t(stage_of(d, s))][size_t(m)][1] != kNone, "rank ", s,
                   " never runs the backward of micro-batch ", m, " of direction ", d);
    r.makespan = std::max(r.makespan, clock[size_t(s)]);
  }
  for (int s = 0; s < P; s++) r.bubble[size_t(s)] = r.makespan - r.busy[size_t(s)];
  return r;
}

double bubble_formula_dualpipe(int ranks, const DualCosts& c) {
  return (ranks / 2 - 1) * (c.fb + c.b - 3 * c.w);
}

double ideal_bubble_fraction(PipeSchedule s, int stages, int micros) {
  if (s == PipeSchedule::OneFOneB) {
    std::vector<std::vector<PipeOp>> o;
    for (int k = 0; k < stages; k++) o.push_back(schedule_1f1b(k, stages, micros));
    return replay_schedule(o, micros, 1, 2).bubble_fraction();
  }
  std::vector<std::vector<DualOp>> o;
  for (int r = 0; r < stages; r++) o.push_back(schedule_dualpipe(r, stages, micros));
  return replay_dualpipe(o, micros, {1, 2, 0, 3}).bubble_fraction();
}

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

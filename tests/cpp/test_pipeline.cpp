// Pipeline schedules and stage splits without processes (pipeline_schedule.h): each schedule is
// replayed on fake stages that record the (micro-batch, F/B) order they run; the replay checks
// every dependency and the idle time per stage is compared with the schedule's formula. And what
// each pipeline rank's parameter table holds (pipeline_parts, build_param_table).
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <map>
#include <set>

#include "core/check.h"
#include "model/config.h"
#include "model/params.h"
#include "test_util.h"
#include "train/parallel_step.h"
#include "train/pipeline.h"
#include "train/pipeline_schedule.h"

namespace dsv3::test {
namespace {


std::vector<std::vector<PipeOp>> orders_1f1b(int P, int M) {
  std::vector<std::vector<PipeOp>> o;
  for (int s = 0; s < P; s++) o.push_back(schedule_1f1b(s, P, M));
  return o;
}

TEST(PipelineSchedule, OneFOneBKeepsDependenciesAndItsBubbleFormula) {
  for (int P : {1, 2, 3, 4, 8})
    for (int M : {1, 2, 4, 8, 13}) {
      for (const auto& [f, b] : {std::pair{1.0, 2.0}, std::pair{1.0, 1.0}, std::pair{3.0, 5.0}}) {
        const PipeReplay r = replay_schedule(orders_1f1b(P, M), M, f, b);  // throws if broken
        for (int s = 0; s < P; s++) {
          EXPECT_DOUBLE_EQ(r.bubble[size_t(s)], bubble_formula_1f1b(P, f, b))
              << "P " << P << " M " << M << " stage " << s;
          EXPECT_DOUBLE_EQ(r.busy[size_t(s)], M * (f + b));
        }
        EXPECT_DOUBLE_EQ(r.makespan, (M + P - 1) * (f + b));
        EXPECT_NEAR(r.bubble_fraction(), double(P - 1) / (M + P - 1), 1e-12);
      }
      // the activations kept: at most P - s micro-batches between their F and B on stage s
      for (int s = 0; s < P; s++) {
        int live = 0, most = 0;
        for (const PipeOp& op : schedule_1f1b(s, P, M)) most = std::max(most, live += op.backward ? -1 : 1);
        EXPECT_EQ(most, inflight_1f1b(s, P, M)) << "P " << P << " M " << M << " stage " << s;
        EXPECT_LE(most, P - s);
      }
    }
  // the order a 4-stage pipeline's first stage runs 6 micro-batches in
  std::string seq;
  for (const PipeOp& op : schedule_1f1b(0, 4, 6)) seq += to_string(op) + " ";
  EXPECT_EQ(seq, "F0 F1 F2 F3 B0 F4 B1 F5 B2 B3 B4 B5 ");
}

TEST(PipelineSchedule, ReplayRefusesBrokenOrders) {
  // stage 0 waits for B0 from stage 1, which waits for F1 from stage 0
  std::vector<std::vector<PipeOp>> o = {{{false, 0}, {true, 0}, {false, 1}, {true, 1}},
                                        {{false, 0}, {false, 1}, {true, 0}, {true, 1}}};
  EXPECT_TRUE(has(error_of([&] { replay_schedule(o, 2, 1, 2); }), "deadlocks")) << error_of([&] { replay_schedule(o, 2, 1, 2); });
  o = orders_1f1b(2, 2);
  std::swap(o[1][0], o[1][1]);  // B0 before F0 on the last stage
  EXPECT_TRUE(has(error_of([&] { replay_schedule(o, 2, 1, 2); }), "before its forward"));
  o = orders_1f1b(2, 2);
  o[0][1] = o[0][0];  // F0 twice
  EXPECT_TRUE(has(error_of([&] { replay_schedule(o, 2, 1, 2); }), "runs F0 twice"));
  o = orders_1f1b(2, 2);
  o[0].pop_back();
  EXPECT_TRUE(has(error_of([&] { replay_schedule(o, 2, 1, 2); }), "not F and B of each"));
}

std::vector<std::vector<DualOp>> orders_dualpipe(int P, int M) {
  std::vector<std::vector<DualOp>> o;
  for (int r = 0; r < P; r++) o.push_back(schedule_dualpipe(r, P, M));
  return o;
}

TEST(PipelineSchedule, DualPipeKeepsDependenciesAndItsBubbleFormula) {
  for (int P : {2, 4, 6, 8})
    for (int M : {2 * P, 2 * P + 2, 4 * P}) {
      // B - W = F (the input-gradient part of a backward as long as a forward), F&B between
      // the longer of F and B and their sum: the most idle rank waits (P/2-1)(F&B+B-3W)
      for (const DualCosts& c : {DualCosts{1, 2, 1, 2.5}, DualCosts{1, 2, 1, 2}, DualCosts{2, 3, 1, 4},
                                 DualCosts{2, 4, 2, 5}, DualCosts{3, 4, 1, 7}}) {
        const PipeReplay r = replay_dualpipe(orders_dualpipe(P, M), M, c);  // throws if broken
        const double worst = *std::max_element(r.bubble.begin(), r.bubble.end());
        EXPECT_DOUBLE_EQ(worst, bubble_formula_dualpipe(P, c))
            << "P " << P << " M " << M << " F " << c.f << " B " << c.b << " W " << c.w;
        // and below 1F1B's (P-1)(F+B) on the same stages
        EXPECT_LT(worst, bubble_formula_1f1b(P, c.f, c.b) + (P == 2 ? 1e-9 : 0));
      }
      // in flight per direction: each rank keeps at most P+1 micro-batches' activations in all
      for (int r = 0; r < P; r++)
        EXPECT_LE(inflight_dualpipe(r, P, M, 0) + inflight_dualpipe(r, P, M, 1), P + 1)
            << "P " << P << " M " << M << " rank " << r;
    }
  // the shares training reports as pp_bubble_formula
  for (int P : {2, 4, 8})
    for (int M : {2 * P, 4 * P}) {
      EXPECT_NEAR(ideal_bubble_fraction(PipeSchedule::OneFOneB, P, M), double(P - 1) / (M + P - 1), 1e-12);
      EXPECT_LE(ideal_bubble_fraction(PipeSchedule::DualPipe, P, M),
                ideal_bubble_fraction(PipeSchedule::OneFOneB, P, M));
    }
  // bad sizes name the rule
  EXPECT_TRUE(has(error_of([] { schedule_dualpipe(0, 3, 12); }), "an even number of pipeline stages"));
  EXPECT_TRUE(has(error_of([] { schedule_dualpipe(0, 4, 6); }), "at least 2 x pp = 8, not 6"));
  // a broken order: rank 1 of 2 runs its first backward before the forward it needs
  auto o = orders_dualpipe(2, 4);
  std::reverse(o[1].begin(), o[1].end());
  EXPECT_FALSE(error_of([&] { replay_dualpipe(o, 4, {}); }).empty());
}

TEST(PipelineSplit, BalancedByFlopsOrAsGivenAndEveryStageHoldsALayer) {
  ModelConfig c = preset("debug");
  c.layers = 5;
  EXPECT_EQ(pipeline_split(c, 1, "", 32), (std::vector<int>{0, 5}));
  EXPECT_EQ(pipeline_split(c, 4, "2,1,1,1", 32), (std::vector<int>{0, 2, 3, 4, 5}));
  // the balanced split is the contiguous one whose most expensive stage is cheapest
  for (int P = 1; P <= 5; P++) {
    const std::vector<int> b = pipeline_split(c, P, "", 32);
    ASSERT_EQ(b.size(), size_t(P + 1));
    auto cost = [&](const std::vector<int>& bounds) {
      double worst = 0;
      for (size_t s = 0; s + 1 < bounds.size(); s++) {
        double x = s + 2 == bounds.size() ? tail_fwd_flops_per_token(c, 32) : 0.0;
        for (int l = bounds[s]; l < bounds[s + 1]; l++) x += block_fwd_flops_per_token(c, l, 32);
        worst = std::max(worst, x);
      }
      return worst;
    };
    for (size_t s = 0; s + 1 < b.size(); s++) EXPECT_GT(b[s + 1], b[s]);
    // every split into P non-empty stages, by brute force over the cut positions
    std::vector<int> cuts(size_t(P - 1));
    double best = 1e300;
    std::function<void(int, int)> rec = [&](int i, int from) {
      if (i == P - 1) {
        std::vector<int> bb{0};
        bb.insert(bb.end(), cuts.begin(), cuts.end());
        bb.push_back(c.layers);
        best = std::min(best, cost(bb));
        return;
      }
      for (int k = from; k <= c.layers - (P - 1 - i); k++) cuts[size_t(i)] = k, rec(i + 1, k + 1);
    };
    rec(0, 1);
    EXPECT_DOUBLE_EQ(cost(b), best) << "P " << P;
  }
  // the head and MTP module weigh on the last stage: with a large vocabulary it gets fewer layers
  ModelConfig big = c;
  big.vocab = 32768;
  const std::vector<int> b = pipeline_split(big, 2, "", 32);
  EXPECT_LT(b[2] - b[1], b[1] - b[0]);
  // bad splits name the problem
  EXPECT_TRUE(has(error_of([&] { pipeline_split(c, 6, "", 32); }),
                  "--pp 6 is more pipeline stages than the model's 5 layers"));
  EXPECT_TRUE(has(error_of([&] { pipeline_split(c, 2, "5,0", 32); }),
                  "stage 1 gets 0 layers; every stage needs at least one"));
  EXPECT_TRUE(has(error_of([&] { pipeline_split(c, 2, "2,2", 32); }), "adds up to 4 layers"));
  EXPECT_TRUE(has(error_of([&] { pipeline_split(c, 3, "2,3", 32); }), "gives 2 stages, but --pp is 3"));
  EXPECT_FALSE(error_of([&] { pipeline_split(c, 2, "2,x", 32); }).empty());
}

// Every tensor of the whole model on the ranks that run it, under its name and size: 1F1B puts
// each block on one stage, the embedding on the first and (MTP) the last, whose copies are the
// shared range; DualPipe's ranks r and P-1-r hold the same tensors, all shared. With an expert
// shard the experts stay after the dense tensors, shared ones first.
TEST(PipelineParts, EachRankHoldsItsStagesTensorsUnderTheirNames) {
  ModelConfig c = preset("debug");
  c.layers = 5;
  ASSERT_GT(c.mtp_depth, 0);
  ASSERT_GT(c.experts, 0);
  for (const ExpertShard shard : {ExpertShard{}, ExpertShard{0, c.experts / 2}}) {
    const ParamTable whole = build_param_table(c, shard);
    for (const PipeSchedule s : {PipeSchedule::OneFOneB, PipeSchedule::DualPipe})
      for (int P : {2, 4}) {
        const std::vector<int> bounds = pipeline_split(c, P, P == 4 ? "2,1,1,1" : "", 32);
        std::map<std::string, int> holders;
        std::vector<std::set<std::string>> names(static_cast<size_t>(P));
        for (int r = 0; r < P; r++) {
          const StageParts parts = pipeline_parts(c, bounds, r, s);
          const ParamTable t = build_param_table(c, shard, parts);
          const std::string at = cat(s == PipeSchedule::DualPipe ? "dualpipe" : "1f1b", " P ", P,
                                     " rank ", r, shard.whole(c) ? "" : " (expert shard)");
          EXPECT_FALSE(t.parts.whole) << at;
          EXPECT_EQ(t.sharded(), !shard.whole(c)) << at;
          for (const ParamInfo& p : t.list) {
            ASSERT_TRUE(whole.find(p.name)) << at << ": " << p.name;
            EXPECT_EQ(p.shape, whole.at(p.name).shape) << at << ": " << p.name;
            holders[p.name]++;
            names[size_t(r)].insert(p.name);
            const bool expert = p.offset >= t.experts_begin;
            const bool shared = expert ? p.offset < t.shared_experts_end : p.offset < t.shared_end;
            // shared: another rank holds it too (the embedding with MTP; everything in DualPipe)
            const bool want = s == PipeSchedule::DualPipe || p.name == "model.embed_tokens.weight";
            EXPECT_EQ(shared, want) << at << ": " << p.name;
          }
          const bool first = r == 0 || (s == PipeSchedule::DualPipe && r == P - 1);
          const bool last = r == P - 1 || (s == PipeSchedule::DualPipe && r == 0);
          EXPECT_EQ(t.find("model.embed_tokens.weight") != nullptr, first || last) << at;
          EXPECT_EQ(t.find("lm_head.weight") != nullptr, last) << at;
        }
        for (const ParamInfo& p : whole.list) {
          const bool two = s == PipeSchedule::DualPipe || p.name == "model.embed_tokens.weight";
          EXPECT_EQ(holders[p.name], two ? 2 : 1) << p.name << " P " << P;
        }
        if (s == PipeSchedule::DualPipe) {
          for (int r = 0; r < P; r++) EXPECT_EQ(names[size_t(r)], names[size_t(P - 1 - r)]);
        }
      }
  }
}

// EPLB places replicas for every MoE layer, which a pipeline rank no longer holds: refused.
TEST(PipelineParts, EplbWithAPipelineIsRefused) {
  ModelConfig c = preset("debug");
  c.layers = 5;
  DistConfig cfg;
  cfg.eplb = true;
  EXPECT_TRUE(has(error_of([&] { validate_parallel({2, 1, 2, 2}, cfg, c, 4, 32); }),
                  "--eplb with --pp 2 is not supported"));
  EXPECT_EQ(error_of([&] { validate_parallel({4, 1, 1, 2}, cfg, c, 4, 32); }), "");
}

}  // namespace
}  // namespace dsv3::test

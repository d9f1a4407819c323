// The parts of distributed training that need no second process: gradient compression's error
// bound, EPLB, batch plans, the expert-shard parameter table, the sharded checkpoint format (with
// corruption and fuzzing), checkpoint discovery and pruning, and the checks of the settings.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>

#include "checkpoint/checkpoint.h"
#include "checkpoint/sharded.h"
#include "core/io.h"
#include "core/rng.h"
#include "dist/compress.h"
#include "dist/eplb.h"
#include "model/params.h"
#include "model/weights.h"
#include "test_util.h"
#include "train/parallel_config.h"
#include "train/parallel_step.h"

namespace dsv3::test {
namespace {

namespace fs = std::filesystem;


// ---------------------------------------------------------------- compression

// T steps of random gradients through a compressor. With error feedback the sum of what was
// sent is the true sum minus the last residual, so the accumulated error stays within one step's
// bound; without it (residual dropped every step) the error adds up.
struct Accumulated {
  double ef = 0, no_ef = 0, bound = 0;
};
template <typename Compress>
Accumulated accumulate(Compress&& compress, size_t n, int T) {
  std::vector<double> truth(n, 0), sent_ef(n, 0), sent_plain(n, 0);
  std::vector<float> res(n, 0), res_plain(n, 0), out(n);
  Rng r(7);
  Accumulated a;
  for (int t = 0; t < T; t++) {
    std::vector<float> g(n);
    for (size_t i = 0; i < n; i++) g[i] = float(r.normal() * (1 + 3 * (i % 5)));  // mixed scales
    for (size_t i = 0; i < n; i++) truth[i] += g[i];
    a.bound = compress(g, res, out);  // this step's bound on |residual|
    for (size_t i = 0; i < n; i++) sent_ef[i] += out[i];
    std::fill(res_plain.begin(), res_plain.end(), 0.0f);
    compress(g, res_plain, out);
    for (size_t i = 0; i < n; i++) sent_plain[i] += out[i];
  }
  for (size_t i = 0; i < n; i++) {
    a.ef = std::max(a.ef, std::fabs(sent_ef[i] - truth[i]));
    a.no_ef = std::max(a.no_ef, std::fabs(sent_plain[i] - truth[i]));
  }
  return a;
}

TEST(Compression, Int8ErrorFeedbackBoundsTheAccumulatedError) {
  const size_t n = 1000;
  const auto int8 = [&](const std::vector<float>& g, std::vector<float>& res, std::vector<float>& out) {
    std::vector<int8_t> q(n);
    std::vector<float> scales(dist::int8_scales(n));
    dist::int8_compress(g.data(), res.data(), n, q.data(), scales.data());
    std::fill(out.begin(), out.end(), 0.0f);
    dist::int8_accumulate(out.data(), q.data(), scales.data(), n);
    return double(*std::max_element(scales.begin(), scales.end())) / 2;
  };
  const Accumulated a = accumulate(int8, n, 200);
  EXPECT_LE(a.ef, a.bound * (1 + 1e-4) + 1e-5);
  EXPECT_GT(a.no_ef, 3 * a.ef) << "without error feedback the rounding errors add up";
}

TEST(Compression, TopKErrorFeedbackBoundsTheAccumulatedError) {
  const size_t n = 1000, k = dist::topk_count(n, 0.05);
  EXPECT_EQ(k, 50u);
  const auto topk = [&](const std::vector<float>& g, std::vector<float>& res, std::vector<float>& out) {
    std::vector<float> v(n);
    for (size_t i = 0; i < n; i++) v[i] = std::fabs(res[i] + g[i]);
    std::vector<uint32_t> idx(k);
    std::vector<float> val(k);
    dist::topk_compress(g.data(), res.data(), n, k, idx.data(), val.data());
    EXPECT_TRUE(std::is_sorted(idx.begin(), idx.end()));
    std::fill(out.begin(), out.end(), 0.0f);
    dist::topk_accumulate(out.data(), idx.data(), val.data(), k);
    std::nth_element(v.begin(), v.begin() + std::ptrdiff_t(k), v.end(), std::greater<float>());
    return double(v[k]);  // the largest |v| not sent
  };
  const Accumulated a = accumulate(topk, n, 200);
  EXPECT_LE(a.ef, a.bound * (1 + 1e-4) + 1e-4);
  EXPECT_GT(a.no_ef, 10 * a.ef) << "without error feedback 95% of every gradient is lost";
}

// ---------------------------------------------------------------- EPLB

TEST(Eplb, ReplicatesTheHeaviestAndBalancesTheRanks) {
  std::vector<double> load(16);
  for (size_t e = 0; e < load.size(); e++) load[e] = 1000.0 / double(e + 1);  // Zipf-like
  const dist::ExpertPlacement home = dist::home_placement(16, 4);
  const dist::ExpertPlacement p = dist::eplb_place(load, 4, 4);
  EXPECT_EQ(p.slots, 5);
  EXPECT_EQ(std::accumulate(p.replicas.begin(), p.replicas.end(), 0), 20);
  EXPECT_GE(p.replicas[0], 2) << "the heaviest expert gets a replica";
  EXPECT_EQ(p.replicas[15], 1);
  for (int e = 0; e < 16; e++)
    EXPECT_EQ(std::count(p.phy2log.begin(), p.phy2log.end(), e), p.replicas[size_t(e)]);
  const double before = dist::imbalance(dist::rank_loads(home, load));
  const double after = dist::imbalance(dist::rank_loads(p, load));
  EXPECT_GT(before, 2.0);
  EXPECT_LT(after, 1.15);
  EXPECT_NEAR(std::accumulate(load.begin(), load.end(), 0.0),
              [&] { auto r = dist::rank_loads(p, load); return std::accumulate(r.begin(), r.end(), 0.0); }(),
              1e-9);
  EXPECT_TRUE(has(error_of([&] { dist::eplb_place(load, 3, 1); }), "cannot be spread evenly"));
}

TEST(Eplb, OnHomesKeepsEveryExpertOnItsRankAndPlacesOnlyReplicas) {
  std::vector<double> load(16);
  for (size_t e = 0; e < load.size(); e++) load[e] = 1000.0 / double(e + 1);
  const dist::ExpertPlacement p = dist::eplb_place_on_homes(load, 4, 8);
  ASSERT_EQ(p.slots, 6);  // 4 own experts + 2 replica slots per rank
  for (int r = 0; r < 4; r++)
    for (int j = 0; j < 4; j++) EXPECT_EQ(p.phy2log[size_t(r * 6 + j)], r * 4 + j);
  for (int e = 0; e < 16; e++)
    EXPECT_EQ(std::count(p.phy2log.begin(), p.phy2log.end(), e), p.replicas[size_t(e)]);
  for (int r = 0; r < 4; r++)  // a rank never holds two copies of one expert
    for (int j = 4; j < 6; j++) {
      const int e = p.phy2log[size_t(r * 6 + j)];
      if (e >= 0) {
        EXPECT_EQ(std::count(p.phy2log.begin() + r * 6, p.phy2log.begin() + r * 6 + 6, e), 1);
      }
    }
  EXPECT_GE(p.replicas[0], 2) << "the heaviest expert gets a replica";
  const double before = dist::imbalance(dist::rank_loads(dist::home_placement(16, 4), load));
  const double after = dist::imbalance(dist::rank_loads(p, load));
  EXPECT_GT(before, 2.0);
  EXPECT_LT(after, 0.6 * before);
  // balanced loads need no replica: every slot stays empty rather than make it worse
  const dist::ExpertPlacement flat = dist::eplb_place_on_homes(std::vector<double>(16, 5.0), 4, 4);
  EXPECT_EQ(std::count(flat.phy2log.begin(), flat.phy2log.end(), -1), 4);
  EXPECT_DOUBLE_EQ(dist::imbalance(dist::rank_loads(flat, std::vector<double>(16, 5.0))), 1.0);
  EXPECT_TRUE(has(error_of([&] { dist::eplb_place_on_homes(load, 4, 2); }), "cannot be spread evenly"));
}

// ---------------------------------------------------------------- batch plans

TEST(BatchPlan, EvenPlansSplitTheGlobalBatchOrSayWhatToChange) {
  const BatchPlan p = even_plan(8, 2, 2);
  EXPECT_EQ(p.micro, 2);
  EXPECT_EQ(p.first_row(1, 1), 6);
  EXPECT_EQ(p.rows(1, 1), 2);
  EXPECT_TRUE(has(error_of([] { even_plan(6, 4, 1); }), "not divisible by dp 4"));
  EXPECT_TRUE(has(error_of([] { even_plan(8, 2, 3); }), "not a multiple of --batch 3"));
}

TEST(BatchPlan, BalancedPlansFollowSpeed) {
  const BatchPlan p = balanced_plan(16, 2, 4, {1.0, 3.0});  // rank 1 three times slower
  EXPECT_EQ(p.count[0] + p.count[1], 16);
  EXPECT_EQ(p.count[0], 12);
  EXPECT_EQ(p.count[1], 4);
  EXPECT_EQ(p.micro, 3);
  int total = 0;
  for (int r = 0; r < 2; r++)
    for (int a = 0; a < p.micro; a++) {
      EXPECT_GE(p.rows(r, a), 1);
      EXPECT_LE(p.rows(r, a), 4);
      EXPECT_EQ(p.first_row(r, a), total);
      total += p.rows(r, a);
    }
  EXPECT_EQ(total, 16);
  // a very slow rank still gets one sequence per micro-batch
  const BatchPlan q = balanced_plan(8, 2, 2, {1.0, 100.0});
  EXPECT_GE(q.count[1], q.micro);
}

// ---------------------------------------------------------------- expert shards

TEST(ExpertShard, TablesHoldTheirExpertsAfterTheDenseParameters) {
  const ModelConfig c = preset("debug");  // 8 experts
  const ParamTable whole = build_param_table(c), t = build_param_table(c, {2, 2});
  EXPECT_FALSE(whole.sharded());
  EXPECT_TRUE(t.sharded());
  EXPECT_EQ(t.expert_first, 2);
  EXPECT_EQ(t.expert_count, 2);
  size_t dense = 0, experts = 0;
  for (const ParamInfo& p : whole.list) {
    const bool expert = has(p.name, ".mlp.experts.");
    const ParamInfo* q = t.find(p.name);
    const bool mine = has(p.name, ".mlp.experts.2.") || has(p.name, ".mlp.experts.3.");
    if (!expert || mine) {
      ASSERT_TRUE(q) << p.name;
      EXPECT_EQ(q->shape, p.shape);
      EXPECT_EQ(q->offset >= t.experts_begin, expert) << p.name;
      (expert ? experts : dense) += p.numel;
    } else {
      EXPECT_FALSE(q) << p.name << " belongs to another rank";
    }
  }
  EXPECT_GT(experts, 0u);
  EXPECT_LE(dense, t.experts_begin);
  ModelWeights w(c, DType::F32, Device::CPU, {2, 2});  // binds: one stride per layer's experts
  EXPECT_EQ(w.params().blocks[1].moe_p.local_experts, 2);
  EXPECT_EQ(w.params().blocks[1].moe_p.first_expert, 2);
  EXPECT_TRUE(has(error_of([&] { build_param_table(c, {6, 4}); }), "is not a range"));
}

// ---------------------------------------------------------------- sharded checkpoints

struct ShardedFixture {
  ModelConfig c = preset("debug");
  ParamTable t = build_param_table(c);
  std::vector<float> params;
  fs::path dir;
  explicit ShardedFixture(const std::string& name) : dir(temp_dir(name) / "ckpt_00000005.shards") {
    params.resize(t.total);
    init_params(c, t, params.data(), 3);
    // two "ranks": rank 0 the first half of every tensor, rank 1 the rest
    for (int r = 0; r < 2; r++) {
      ShardData d;
      d.arrays = {"params", "adam_m"};
      d.values.resize(2);
      for (const ParamInfo& p : t.list) {
        const size_t half = p.numel / 2, b = r == 0 ? 0 : half, n = r == 0 ? half : p.numel - half;
        if (n == 0) continue;
        d.segments.push_back({p.name, b, n});
        for (size_t i = 0; i < n; i++) {
          d.values[0].push_back(params[p.offset + b + i]);
          d.values[1].push_back(float(i));
        }
      }
      write_shard(dir.string(), r, 2, d);
    }
    write_manifest(dir.string(), {{"step", 5}, {"model", fields_to_json(model_fields(), &c)},
                                  {"train", {{"steps_done", 5}}}, {"layout", {{"world", 2}}},
                                  {"shards", {"rank_00000.bin", "rank_00001.bin"}}});
  }
  ~ShardedFixture() { fs::remove_all(dir.parent_path()); }
};

TEST(ShardedCheckpoint, RoundTripsAndNamesEveryProblem) {
  ShardedFixture f("shards");
  const std::string d = f.dir.string();
  {
    const ShardedCheckpoint sc(d);
    EXPECT_EQ(sc.full_params(), f.params);
    EXPECT_TRUE(sc.has_array("adam_m"));
    EXPECT_FALSE(sc.has_array("adam_v"));
    std::vector<float> m(10);
    // elements 30..39 of 64: 30, 31 from rank 0's first half, then rank 1's from its start
    sc.read("adam_m", "model.norm.weight", 30, 10, m.data());
    EXPECT_EQ(m, (std::vector<float>{30, 31, 0, 1, 2, 3, 4, 5, 6, 7}));
    EXPECT_TRUE(has(error_of([&] {
      std::vector<float> x(8);
      sc.read("adam_v", "model.norm.weight", 0, 8, x.data());
    }), "has no 'adam_v' array"));
  }
  EXPECT_TRUE(is_sharded_checkpoint(d));
  EXPECT_EQ(load_model_any(d).params, f.params);
  // a flipped payload byte: the segment's checksum
  const std::string r1 = shard_file(d, 1), bytes = read_file(r1);
  {
    std::string bad = bytes;  // a byte of the params array, right after the 64-aligned header
    bad[(kFrameBytes + load_u64le(bytes.data() + 16) + 63) / 64 * 64 + 8] ^= 0x10;
    std::ofstream(r1, std::ios::binary) << bad;
    EXPECT_TRUE(has(error_of([&] { ShardedCheckpoint(d).full_params(); }), "checksum mismatch"));
  }
  {
    std::ofstream(r1, std::ios::binary) << bytes.substr(0, bytes.size() - 7);
    EXPECT_TRUE(has(error_of([&] { ShardedCheckpoint{d}; }), "truncated or corrupt"));
  }
  fs::remove(r1);
  EXPECT_TRUE(has(error_of([&] { ShardedCheckpoint{d}; }), "shard rank_00001.bin is missing"));
  fs::remove(f.dir / "manifest.json");
  EXPECT_FALSE(is_sharded_checkpoint(d));
  EXPECT_TRUE(has(error_of([&] { ShardedCheckpoint{d}; }), "incomplete sharded checkpoint"));
}

// Random corruption of a shard: every outcome is the original values or an Error, never a crash
// or other values (bytes not covered by a checksum are padding).
TEST(ShardedCheckpoint, FuzzedShardsLoadExactlyOrFail) {
  ShardedFixture f("shards_fuzz");
  const std::string d = f.dir.string(), r0 = shard_file(d, 0), bytes = read_file(r0);
  Rng r(11);
  int errors = 0;
  for (int i = 0; i < 150; i++) {
    std::string bad = bytes;
    const int kind = int(r.below(3));
    if (kind == 0) {
      bad[r.below(bad.size())] ^= char(1 + r.below(255));
    } else if (kind == 1) {
      bad.resize(r.below(bad.size()));
    } else {  // in the header
      bad[r.below(std::min<size_t>(bad.size(), 400))] = char(r.below(256));
    }
    std::ofstream(r0, std::ios::binary) << bad;
    try {
      EXPECT_EQ(ShardedCheckpoint(d).full_params(), f.params) << "case " << i;
    } catch (const Error&) {
      errors++;
    }
  }
  EXPECT_GT(errors, 100);
}

TEST(ShardedCheckpoint, LatestCompleteCheckpointOfEitherKindAndPruning) {
  const fs::path run = temp_dir("ckpt_discovery");
  fs::create_directories(run);
  const ModelConfig c = preset("debug");
  const size_t n = build_param_table(c).total;
  std::vector<float> p(n, 0.5f), m(n, 0.0f);
  save_checkpoint(checkpoint_path(run.string(), 2), c, {{"steps_done", 2}}, p.data(), m.data(),
                  m.data(), n);
  for (int step : {4, 6}) {
    const std::string dir = sharded_checkpoint_dir(run.string(), step);
    ShardData d;
    d.arrays = {"params"};
    d.values.resize(1);
    write_shard(dir, 0, 1, d);
    if (step == 4) write_manifest(dir, {{"step", step}});  // 6 stays incomplete
  }
  EXPECT_EQ(latest_checkpoint(run.string()), sharded_checkpoint_dir(run.string(), 4));
  EXPECT_EQ(any_checkpoint_step(sharded_checkpoint_dir(run.string(), 4)), 4);
  prune_all_checkpoints(run.string(), 1);
  EXPECT_FALSE(fs::exists(checkpoint_path(run.string(), 2)));
  EXPECT_TRUE(fs::exists(sharded_checkpoint_dir(run.string(), 4)));
  EXPECT_TRUE(fs::exists(sharded_checkpoint_dir(run.string(), 6))) << "newer than the last complete";
  fs::remove_all(run);
}

// ---------------------------------------------------------------- settings

TEST(DistSettings, BadLayoutsAndFaultsAreRefusedByName) {
  const ModelConfig c = preset("debug");
  DistConfig cfg;
  const auto check = [&](dist::ParallelLayout l, int world) {
    return error_of([&] { validate_parallel(l, cfg, c, world); });
  };
  EXPECT_EQ(check({0, 1, 1, 2}, 4), "");
  EXPECT_TRUE(has(check({4, 1, 1, 1}, 2), "needs dp * tp * pp = 4 ranks, but the world has 2"));
  EXPECT_TRUE(has(check({0, 1, 1, 3}, 3), "not a multiple of 3"));
  EXPECT_TRUE(has(check({0, 1, 1, 3}, 4), "ep (3) must divide dp (4)"));
  EXPECT_EQ(check({0, 2, 1, 1}, 4), "");  // dp 2 x tp 2
  EXPECT_TRUE(has(check({0, 4, 1, 1}, 4), "the model has 2 heads, not a multiple of 4"));
  EXPECT_EQ(check({0, 1, 2, 1}, 4), "");  // dp 2 x pp 2 (the debug model has 2 layers)
  EXPECT_TRUE(has(check({0, 1, 3, 1}, 3), "more pipeline stages than the model's 2 layers"));
  cfg.zero = 3;
  EXPECT_TRUE(has(check({0, 1, 1, 1}, 2), "zero must be 0, 1 or 2"));
  EXPECT_EQ(parse_rank_fault("kill:1@5").kind, RankFault::Kill);
  EXPECT_EQ(parse_rank_fault("stop:0@2").step, 2);
  EXPECT_TRUE(has(error_of([] { parse_rank_fault("kill:1"); }), "expected kill:RANK@STEP"));
  EXPECT_TRUE(has(error_of([] { parse_rank_fault("pause:1@2"); }), "expected kill:RANK@STEP"));
}

}  // namespace
}  // namespace dsv3::test

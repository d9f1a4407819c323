// The planner (issue 11 item 5, train/plan.h): DeepSeek-V3's published cost, its own FLOP and
// bubble arithmetic, memory against what dsv3 allocates, bad input, and train --gpu_hour_cost.
#include <gtest/gtest.h>

#include <filesystem>

#include "cli_util.h"
#include "test_util.h"
#include "train/plan.h"

namespace dsv3 {
namespace {

using test::run_cli;

PlanConfig v3_on_h800() {
  PlanConfig p;
  p.gpus = 2048, p.gpu = "h800", p.tokens = 14.8e12, p.seq_len = 4096;
  p.global_batch = 15360;  // DeepSeek-V3's batch after the ramp (sequences of 4096)
  return p;
}

// DeepSeek-V3 (arXiv 2412.19437, Table 1): pre-training 14.8T tokens took 2664K H800 GPU-hours
// (180K per trillion tokens). The planner's chosen layout must fit in 80 GB and its GPU-hours be
// within 2x of that; so must the layout DeepSeek used (PP16 DualPipe x EP64 x ZeRO-1, no TP).
TEST(Plan, ReproducesDeepSeekV3Cost) {
  const ModelConfig c = preset("v3-671b");
  const PlanConfig p = v3_on_h800();
  const Plan plan = make_plan(c, p);
  ASSERT_FALSE(plan.best.empty());
  const PlanRow& best = plan.best[0];
  EXPECT_TRUE(best.fits);
  EXPECT_LE(best.memory.total, 80e9);
  const double published = 2.664e6;
  EXPECT_GT(best.gpu_hours, published / 2) << best.layout.text();
  EXPECT_LT(best.gpu_hours, published * 2) << best.layout.text();
  PlanLayout theirs{128, 1, 16, 64, 1, Recompute::Block, 1, 120, PlanSchedule::DualPipe};
  const PlanRow r = predict_layout(c, p, theirs);
  EXPECT_TRUE(r.fits) << r.reasons;
  EXPECT_GT(r.gpu_hours, published / 2) << r.reasons;
  EXPECT_LT(r.gpu_hours, published * 2) << r.reasons;
  // DualPipe's smaller bubble and hidden all-to-all make it faster than 1F1B on that layout
  PlanLayout onef = theirs;
  onef.schedule = PlanSchedule::OneFOneB;
  EXPECT_LT(r.time.step, predict_layout(c, p, onef).time.step);
}

// Compute time is exactly the model's training FLOPs at the stated rate (no recompute, one
// device): the per-layer FLOPs the planner sums agree with model_stats.
TEST(Plan, ComputeIsTheModelsFlops) {
  const ModelConfig c = preset("tiny");
  PlanConfig p;
  p.gpus = 1, p.gpu = "h100", p.tokens = 1e9, p.seq_len = 256, p.global_batch = 16;
  const PlanRow r = predict_layout(c, p, PlanLayout{1, 1, 1, 1, 0, Recompute::None, 8, 2,
                                                    PlanSchedule::None});
  const Hardware& h = find_hardware("h100");
  const double flops = 16.0 * 256 * model_stats(c, 256).train_flops_per_token;
  EXPECT_NEAR(r.time.compute, flops / (h.peak_bf16 * h.efficiency), 1e-9 * r.time.compute);
  // recomputation only adds time
  const PlanRow sel = predict_layout(c, p, PlanLayout{1, 1, 1, 1, 0, Recompute::Selective, 8, 2,
                                                      PlanSchedule::None});
  const PlanRow blk = predict_layout(c, p, PlanLayout{1, 1, 1, 1, 0, Recompute::Block, 8, 2,
                                                      PlanSchedule::None});
  EXPECT_GT(sel.time.compute, r.time.compute);
  EXPECT_GT(blk.time.compute, sel.time.compute);
  EXPECT_LT(blk.memory.activations, sel.memory.activations);
  EXPECT_LT(sel.memory.activations, r.memory.activations);
}

// 1F1B's bubble is (PP-1)(F+B) and DualPipe's (PP/2-1)(F&B+B-3W): with no tp and ep the
// per-micro-batch time is compute plus the stage transfers, so bubble = (pp-1)/m of that.
TEST(Plan, BubbleFormulas) {
  const ModelConfig c = preset("small");
  PlanConfig p;
  p.gpus = 8, p.gpu = "h200", p.tokens = 1e9, p.seq_len = 1024, p.global_batch = 64;
  const PlanRow r = predict_layout(c, p, PlanLayout{2, 1, 4, 1, 1, Recompute::None, 1, 32,
                                                    PlanSchedule::OneFOneB});
  EXPECT_NEAR(r.time.bubble, 3.0 / 32 * (r.time.compute + r.time.pp), 1e-9 * r.time.bubble);
  const PlanRow d = predict_layout(c, p, PlanLayout{2, 1, 4, 1, 1, Recompute::None, 1, 32,
                                                    PlanSchedule::DualPipe});
  // F&B = F+B (transfers hidden), B = 2F, W = F: (pp/2-1)(3F + 2F - 3F) = (pp/2-1) 2F per
  // micro-batch's F of the device's two stages, i.e. (pp/2-1) x 2/3 x compute / m
  EXPECT_NEAR(d.time.bubble, 1.0 * 2.0 / 3.0 * d.time.compute / 32, 1e-6 * d.time.bubble);
  EXPECT_LT(d.time.bubble, r.time.bubble);
}

// Memory against what dsv3 itself allocates: train reports the allocator's peak
// (peak_alloc_bytes: weights, gradients, optimizer state, workspace) in metrics.jsonl; the
// planner's total for the same run on the cpu entry must be within 2% (it sums the same
// parameter table and workspace layout; the allocator rounds sizes up).
TEST(Plan, MemoryMatchesMeasuredPeak) {
  const auto dir = test::temp_dir("plan_memory");
  for (const char* prec : {"fp32", "bf16"}) {
    std::filesystem::remove_all(dir);
    const auto t = run_cli(std::string("train --preset debug --steps 1 --batch 4 --seq_len 64 "
                                       "--sample_tokens 0 --eval_every 0 --peak_gflops 1 "
                                       "--save_every 0 --precision ") + prec + " --out " + dir.string());
    ASSERT_EQ(t.code, 0) << t.out;
    const auto m = test::read_metrics((dir / "metrics.jsonl").string(), "train");
    ASSERT_EQ(m.size(), 1u);
    const auto pl = run_cli(std::string("plan --preset debug --gpus 1 --gpu cpu --tokens 1e6 "
                                        "--seq_len 64 --global_batch 4 --batch 4 --json "
                                        "--precision ") + prec);
    ASSERT_EQ(pl.code, 0) << pl.out;
    const auto pj = nlohmann::json::parse(pl.out);
    const double predicted = pj["best"][0]["memory_bytes"]["total"];
    const double measured = m[0]["peak_alloc_bytes"];
    EXPECT_NEAR(predicted / measured, 1.0, 0.02) << prec << ": " << predicted << " vs " << measured;
  }
  std::filesystem::remove_all(dir);
}

TEST(Plan, BadInputIsOneClearError) {
  struct Case { const char* args; const char* says; };
  const Case cases[] = {
      {"--preset tiny --gpus 8 --gpu a100 --tokens 1e9", "unknown gpu 'a100'"},
      {"--preset v3-671b --gpus 8 --gpu h100 --tokens 1e9", "fits"},
      {"--preset tiny --gpus 8 --gpu h100 --tokens 0", "tokens"},
      {"--preset tiny --gpus 8 --gpu h100 --tokens -5", "tokens"},
      {"--preset tiny --gpus 8 --gpu h100", "--tokens must be > 0"},
      {"--preset tiny --gpus 7 --gpu h100 --tokens 1e9 --global_batch 8", "no layout of 7"},
      {"--preset tiny --gpus 8 --gpu h100 --tokens 1e9 --schedule zb", "--schedule must be"},
      {"--preset nope --gpus 8 --gpu h100 --tokens 1e9", "unknown preset"},
  };
  for (const auto& k : cases) {
    const auto r = run_cli(std::string("plan ") + k.args);
    EXPECT_EQ(r.code, 1) << k.args << "\n" << r.out;
    EXPECT_NE(r.out.find(k.says), std::string::npos) << k.args << "\n" << r.out;
  }
  const auto dir = test::temp_dir("plan_bad_config");
  const std::string cfg = (dir / "bad.cfg").string();
  { std::ofstream(cfg) << "hidden = lots\n"; }
  const auto r = run_cli("plan --config " + cfg + " --gpus 8 --gpu h100 --tokens 1e9");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("bad.cfg:1"), std::string::npos) << r.out;
  std::filesystem::remove_all(dir);
}

// The plan's text names the chosen layout and the reasons; --json carries the same rows.
TEST(Plan, PrintsBestLayoutsWithReasons) {
  const auto r = run_cli("plan --preset small --gpus 8 --gpu h200 --tokens 1e11 --top 3 "
                         "--gpu_hour_cost 3.5");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("cost USD"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("compute"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("pipeline depth"), std::string::npos) << r.out;
  const auto j = run_cli("plan --preset small --gpus 8 --gpu h200 --tokens 1e11 --top 3 "
                         "--gpu_hour_cost 3.5 --json");
  ASSERT_EQ(j.code, 0) << j.out;
  const auto pj = nlohmann::json::parse(j.out);
  ASSERT_EQ(pj["best"].size(), 3u);
  const auto& b = pj["best"][0];
  EXPECT_NEAR(double(b["cost_usd"]), 3.5 * double(b["gpu_hours"]), 1e-6 * double(b["cost_usd"]));
  // fastest first, up to the 1% within which the simpler layout ranks first
  EXPECT_LE(double(b["step_s"]["total"]), 1.01 * double(pj["best"][1]["step_s"]["total"]));
}

TEST(Plan, TrainRecordsRunningCost) {
  const auto dir = test::temp_dir("plan_cost_run") / "run";
  const auto r = run_cli("train --preset debug --steps 2 --batch 2 --seq_len 32 --sample_tokens 0 "
                         "--eval_every 0 --peak_gflops 1 --gpu_hour_cost 2.5 --out " + dir.string());
  ASSERT_EQ(r.code, 0) << r.out;
  const auto m = test::read_metrics((dir / "metrics.jsonl").string(), "train");
  ASSERT_EQ(m.size(), 2u);
  EXPECT_GT(double(m[1]["cost_usd"]), double(m[0]["cost_usd"]));
  EXPECT_GE(double(m[1]["cost_projected_usd"]), double(m[1]["cost_usd"]));
  EXPECT_NE(r.out.find(" | $"), std::string::npos) << r.out;
  std::filesystem::remove_all(dir.parent_path());
}

}  // namespace
}  // namespace dsv3

// `dsv3 train` under mpirun (ctest train_mpi.*, label mpi): data and expert parallel training
// against one process, resume on another layout, rank failures under `dsv3 launch`, the
// collective watchdog, gradient compression, micro-batch balancing and bad input. Each test runs
// the real CLI on the debug model for a few steps; 4 ranks run oversubscribed on 2 cores.
//
// Tolerance of the layout comparisons: 1e-4 relative on the per-step loss. The layouts compute
// the same sums in different orders (per-rank partial gradients reduced across ranks, expert rows
// grouped by source rank, GEMMs over other row counts), so fp32 rounding differs at ~1e-7
// relative per step; 12 steps of a small model keep the drift orders of magnitude below 1e-4.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "cli_util.h"
#include "mpi/train_mpi_util.h"
#include "core/timer.h"
#include "model/params.h"
#include "test_util.h"

namespace dsv3::test {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

size_t debug_params() { return build_param_table(preset("debug")).total; }

TEST(TrainMpi, EveryLayoutTrainsLikeOneProcess) {
  Dir d("layouts");
  ASSERT_EQ(train(0, "--steps 12 --out " + d / "one").code, 0);
  const auto one = steps_of(d / "one");
  ASSERT_EQ(one.size(), 12u);
  const auto one_eval = read_metrics(d / "one/metrics.jsonl", "eval");
  ASSERT_FALSE(one_eval.empty());
  struct Layout {
    int np;
    const char* args;
    const char* name;
  };
  for (const Layout& l : {Layout{2, "", "dp2"}, Layout{2, "--ep 2", "dp2_ep2"},
                          Layout{4, "--ep 2", "dp4_ep2"},
                          Layout{4, "--ep 4 --zero 2 --eplb --eplb_every 2", "dp4_ep4_z2"}}) {
    const CmdResult r = train(l.np, std::string("--steps 12 ") + l.args + " --out " + d / l.name);
    ASSERT_EQ(r.code, 0) << l.name << "\n" << r.out;
    const auto m = steps_of(d / l.name);
    EXPECT_LT(max_rel_loss_diff(m, one), 1e-4) << l.name;
    EXPECT_TRUE(m.back().contains("comm_bytes")) << l.name;
    // evaluation split over the dp ranks (2 batches: on dp 4 two ranks only pad) gives one
    // process's validation loss, up to the training drift
    const auto ev = read_metrics(d / (std::string(l.name) + "/metrics.jsonl"), "eval");
    ASSERT_EQ(ev.size(), one_eval.size()) << l.name;
    EXPECT_EQ(ev.back()["val_tokens"], one_eval.back()["val_tokens"]) << l.name;
    EXPECT_NEAR(ev.back()["val_loss"].get<double>(), one_eval.back()["val_loss"].get<double>(),
                1e-4 * one_eval.back()["val_loss"].get<double>()) << l.name;
  }
  // the reduced gradient of dp 2 (zero 0) is one all-reduce of every fp32 parameter per step:
  // 2 (n-1)/n x 4 bytes x params = 4 x params on 2 ranks
  for (const json& s : steps_of(d / "dp2")) {
    EXPECT_EQ(s["grad_wire_bytes"].get<double>(), 4.0 * double(debug_params()));
    EXPECT_GE(s["exposed_comm_s"].get<double>(), 0.0);
    EXPECT_LE(s["exposed_comm_s"].get<double>(), s["comm_s"].get<double>() + 1e-9);
  }
  // EPLB places replicas every 2 steps (one replica slot per rank) and applies them: steps 3-12
  // above ran with replicas, through five placement changes, and kept one process's losses.
  // Each record's measured rows are what the ranks computed in the 2 steps before it under the
  // placement then in effect; imbalance_before is what the homes alone give on those same loads
  // (the router's loads do not depend on the placement). On this tiny model the loads drift
  // from step to step, so a placement made from the last window helps on average, not always:
  // measured over 5 windows 1.23 and 1.21 (two MoE layers) against 1.35 for the homes.
  const auto eplb = read_metrics(d / "dp4_ep4_z2/metrics.jsonl", "eplb");
  ASSERT_EQ(eplb.size(), 6u);
  for (size_t i = 0; i < eplb[0]["layers"].size(); i++) {
    double homes = 0, measured = 0;
    for (size_t k = 0; k < eplb.size(); k++) {
      const json& layer = eplb[k]["layers"][i];
      EXPECT_TRUE(eplb[k]["applied"].get<bool>());
      EXPECT_LE(layer["imbalance_after"].get<double>(), layer["imbalance_before"].get<double>());
      ASSERT_EQ(layer["placement"].size(), 12u);  // 8 experts + 4 replica slots
      for (int r = 0; r < 4; r++)  // homes stay: rank r's first two slots are its experts
        for (int j = 0; j < 2; j++) EXPECT_EQ(layer["placement"][size_t(3 * r + j)], 2 * r + j);
      if (k == 0) {  // steps 1-2 ran on the homes: the rows computed are the router's loads
        EXPECT_NEAR(layer["imbalance_measured"].get<double>(), layer["imbalance_before"].get<double>(), 1e-9);
        continue;
      }
      homes += layer["imbalance_before"].get<double>() / double(eplb.size() - 1);
      measured += layer["imbalance_measured"].get<double>() / double(eplb.size() - 1);
    }
    EXPECT_LT(measured, homes - 0.05) << "replicas did not even out the rows each rank computed";
  }
  // expert parallelism sends rows all-to-all; without it there is no all-to-all
  EXPECT_GT(steps_of(d / "dp2_ep2").back()["comm_bytes"].value("all_to_all", 0.0), 0.0);
  EXPECT_FALSE(steps_of(d / "dp2").back()["comm_bytes"].contains("all_to_all"));
}

// EPLB applied on dp2 + ep2 with a placement every 3 steps: one process's losses; its sharded
// checkpoint holds the experts once (replicas are copies, not parameters), so it resumes on the
// same layout with EPLB and on one process; bad EPLB settings fail with one message.
TEST(TrainMpi, EplbReplicasTrainLikeOneProcessAndResume) {
  Dir d("eplb");
  ASSERT_EQ(train(0, "--steps 10 --out " + d / "one").code, 0);
  const auto one = steps_of(d / "one");
  const std::string eplb = " --ep 2 --eplb --eplb_every 3 --eplb_redundant 4";
  CmdResult r = train(2, "--steps 6 --save_every 6" + eplb + " --out " + d / "run");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("measured since the last placement"), std::string::npos) << r.out;
  fs::copy(d / "run", d / "single", fs::copy_options::recursive);
  r = train(2, "--steps 10" + eplb + " --resume " + d / "run" + " --out " + d / "run");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_LT(max_rel_loss_diff(steps_of(d / "run"), one), 1e-4);
  r = train(0, "--steps 10 --ep 1 --eplb false --resume " + d / "single" + " --out " + d / "single");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_LT(max_rel_loss_diff(steps_of(d / "single"), one), 1e-4);
  for (const json& rec : read_metrics(d / "run/metrics.jsonl", "eplb"))
    for (const json& layer : rec["layers"]) EXPECT_EQ(layer["placement"].size(), 12u);  // 8 + 4
  auto fails = [&](const std::string& args, const std::string& msg) {
    const CmdResult b = train(2, "--steps 2" + args + " --out " + d / "bad");
    EXPECT_NE(b.code, 0) << b.out;
    EXPECT_EQ(count(b.out, msg), 1u) << "expected one '" << msg << "' in:\n" << b.out;
  };
  fails(" --eplb", "it needs --ep > 1");
  fails(" --ep 2 --eplb --eplb_redundant 3", "--eplb_redundant 3 must be a multiple of --ep 2");
  fails(" --ep 2 --eplb_every 3", "--eplb true");
}

TEST(TrainMpi, RunsRepeatBitForBitAndZeroEqualsPlainDataParallel) {
  Dir d("zero");
  for (const char* z : {"0", "1", "2"})
    ASSERT_EQ(train(2, std::string("--steps 12 --ep 2 --zero ") + z + " --out " + d / z).code, 0);
  ASSERT_EQ(train(2, "--steps 12 --ep 2 --zero 0 --out " + d / "again").code, 0);
  const auto z0 = steps_of(d / "0");
  EXPECT_TRUE(same_losses(steps_of(d / "again"), z0)) << "a rerun of one layout differs";
  // ZeRO-1 reduce-scatters what zero 0 all-reduces and updates the same values elementwise: on 2
  // ranks (a + b either way) every bit agrees. ZeRO-2 adds the micro-batches after the reduction
  // ((a1 + b1) + (a2 + b2) instead of (a1 + a2) + (b1 + b2)): fp32 rounding apart.
  EXPECT_TRUE(same_losses(steps_of(d / "1"), z0)) << "ZeRO-1 differs from plain DP";
  EXPECT_LT(max_rel_loss_diff(steps_of(d / "2"), z0), 1e-5);
  // ZeRO-1 moves half of zero 0's gradient bytes per direction: reduce-scatter, then all-gather
  const json s1 = steps_of(d / "1").back()["comm_bytes"];
  EXPECT_GT(s1.value("reduce_scatter", 0.0), 0.0);
  EXPECT_GT(s1.value("all_gather", 0.0), 0.0);
}

TEST(TrainMpi, ResumesOnFewerRanksAndExportsFromShards) {
  Dir d("elastic");
  ASSERT_EQ(train(0, "--steps 12 --out " + d / "one").code, 0);
  // 4 ranks dp 4 / ep 2 save at step 6; 2 ranks dp 2 / ep 2 go on to 12
  CmdResult r = train(4, "--steps 6 --ep 2 --save_every 6 --out " + d / "run");
  ASSERT_EQ(r.code, 0) << r.out;
  ASSERT_TRUE(fs::exists(d / "run/ckpt_00000006.shards/manifest.json"));
  r = train(2, "--steps 12 --dp 2 --ep 2 --resume " + d / "run" + " --out " + d / "run");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("resuming at step 6"), std::string::npos) << r.out;
  EXPECT_LT(max_rel_loss_diff(steps_of(d / "run"), steps_of(d / "one")), 1e-4);
  // the same layout resumes exactly
  ASSERT_EQ(train(2, "--steps 12 --ep 2 --out " + d / "straight").code, 0);
  ASSERT_EQ(train(2, "--steps 6 --ep 2 --save_every 6 --out " + d / "split").code, 0);
  ASSERT_EQ(train(2, "--steps 12 --ep 2 --resume " + d / "split" + " --out " + d / "split").code, 0);
  EXPECT_TRUE(same_losses(steps_of(d / "split"), steps_of(d / "straight")));
  // HF export from the sharded checkpoint: the one-process model within fp32 drift
  for (const char* run : {"run", "one"})
    ASSERT_EQ(run_cli("export --model " + d / run + " --format hf --out " + d / (std::string(run) + "_hf")).code, 0);
  EXPECT_LT(max_abs_hf_diff(d / "run_hf", d / "one_hf"), 1e-4);
}

TEST(TrainMpi, LaunchRestartsAfterAKilledRankAndAHang) {
  Dir d("faults");
  ASSERT_EQ(train(2, "--steps 8 --out " + d / "straight").code, 0);
  const std::string launch = std::string("OMP_NUM_THREADS=1 OMPI_MCA_btl_vader_single_copy_mechanism=none ") +
                             DSV3_BIN + " launch -np 2 --max_restarts 2 --restart_delay 0 --launcher_args '--oversubscribe" +
                             (getuid() == 0 ? " --allow-run-as-root" : "") + "' -- train" + kBase +
                             " --steps 8 --save_every 3";
  // kill -9 of rank 1 at step 5: restart from step 3 on the same layout, the same losses
  CmdResult r = run_shell(launch + " --rank_fault kill:1@5 --out " + d / "killed");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("SIGKILL"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("restarting from the last complete checkpoint"), std::string::npos) << r.out;
  EXPECT_TRUE(same_losses(steps_of(d / "killed"), steps_of(d / "straight")));
  size_t restarts = 0;
  for (std::ifstream in(d / "killed/launch.jsonl"); in;) {
    std::string line;
    if (std::getline(in, line) && !line.empty()) restarts += json::parse(line)["event"] == "restart";
  }
  EXPECT_EQ(restarts, 1u);
  // fewer slots than -np (the hostfile lost a node): the largest world that fits, >= min_ranks
  std::ofstream(d / "hosts") << "localhost slots=2\n";
  const std::string on4 = std::string("OMP_NUM_THREADS=1 OMPI_MCA_btl_vader_single_copy_mechanism=none ") +
                          DSV3_BIN + " launch -np 4 --hostfile " + d / "hosts" + " --launcher_args '--oversubscribe" +
                          (getuid() == 0 ? " --allow-run-as-root" : "") + "'";
  r = run_shell(on4 + " --min_ranks 2 -- train" + kBase + " --steps 2 --out " + d / "fewer");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("attempt 1 on 2 ranks"), std::string::npos) << r.out;
  r = run_shell(on4 + " --min_ranks 3 -- train" + kBase + " --steps 2 --out " + d / "none");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("no world size between 3 and 2 ranks"), std::string::npos) << r.out;
  // a hang (SIGSTOP): the watchdog turns it into an error, the launcher restarts
  r = run_shell(launch + " --rank_fault stop:1@5 --collective_timeout 3 --out " + d / "hung");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("rank 1 did not arrive"), std::string::npos) << r.out;
  EXPECT_TRUE(same_losses(steps_of(d / "hung"), steps_of(d / "straight")));
}

TEST(TrainMpi, AHungRankIsNamedWithinTheTimeout) {
  Dir d("hang");
  const double t0 = now_seconds();
  const CmdResult r = train(2, "--steps 8 --rank_fault stop:1@3 --collective_timeout 3 --out " + d / "run");
  const double took = now_seconds() - t0;
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("timed out after 3 s"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("rank 1 did not arrive"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("rank 0 is waiting in it"), std::string::npos) << r.out;
  EXPECT_LT(took, 60.0) << "the watchdog took too long";
}

TEST(TrainMpi, BadInputFailsOnceWithoutHanging) {
  Dir d("bad");
  auto once = [](const CmdResult& r, const std::string& msg) {
    EXPECT_NE(r.code, 0) << r.out;
    EXPECT_EQ(count(r.out, msg), 1u) << "expected one '" << msg << "' in:\n" << r.out;
  };
  once(train(2, "--steps 2 --dp 4 --out " + d / "a"),
       "needs dp * tp * pp = 4 ranks, but the world has 2");
  once(train(3, "--steps 2 --global_batch 6 --ep 3 --out " + d / "b"),
       "routed experts, not a multiple of 3");
  EXPECT_FALSE(fs::exists(d / "a/metrics.jsonl"));
  // a checkpoint to break
  ASSERT_EQ(train(2, "--steps 2 --save_every 2 --out " + d / "run").code, 0);
  once(train(2, "--steps 4 --hidden 32 --resume " + d / "run" + " --out " + d / "run"),
       "changes the model");
  fs::create_directories(d / "miss");
  fs::copy(d / "run/ckpt_00000002.shards", d / "miss/ckpt_00000002.shards",
           fs::copy_options::recursive);
  fs::remove(d / "miss/ckpt_00000002.shards/rank_00001.bin");
  once(train(2, "--steps 4 --resume " + d / "miss/ckpt_00000002.shards" + " --out " + d / "miss"),
       "shard rank_00001.bin is missing");
  fs::remove(d / "miss/ckpt_00000002.shards/manifest.json");
  once(train(2, "--steps 4 --resume " + d / "miss/ckpt_00000002.shards" + " --out " + d / "miss"),
       "incomplete sharded checkpoint");
  // shards of another model under this manifest
  ASSERT_EQ(train(2, "--steps 2 --save_every 2 --hidden 32 --out " + d / "other").code, 0);
  fs::create_directories(d / "mixed");
  fs::copy(d / "run/ckpt_00000002.shards", d / "mixed/ckpt_00000002.shards",
           fs::copy_options::recursive);
  for (const char* f : {"rank_00000.bin", "rank_00001.bin"})
    fs::copy(d / "other/ckpt_00000002.shards/" + f, d / "mixed/ckpt_00000002.shards/" + f,
             fs::copy_options::overwrite_existing);
  const CmdResult r = train(2, "--steps 4 --resume " + d / "mixed" + " --out " + d / "mixed");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("the checkpoint is of another model"), std::string::npos) << r.out;
}

// Error feedback keeps compressed training close to exact training. Over 200 steps (2 ranks,
// 2 x 16 tokens per step) the mean loss of the last 50 steps stays within 0.03 nats of the
// uncompressed run for int8 (measured 0.008: 127 levels per block of 128 lose little) and within
// 0.2 for top-k 10% (measured 0.09: nine tenths of each step's gradient arrive late), while the
// gradient reduction sends ~26% and 20% of the bytes. Per-step losses of such small batches
// scatter by more than these gaps, so windows are compared, not steps.
TEST(TrainMpi, CompressedGradientsStayCloseOver200Steps) {
  Dir d("compress");
  const std::string args = "--steps 200 --seq_len 16 --batch 1 --global_batch 2 --eval_every 0 "
                           "--eval_batches 1 --out ";
  ASSERT_EQ(train(2, args + d / "none").code, 0);
  ASSERT_EQ(train(2, "--grad_compress int8 " + args + d / "int8").code, 0);
  ASSERT_EQ(train(2, "--grad_compress topk --topk_ratio 0.1 " + args + d / "topk").code, 0);
  const auto none = steps_of(d / "none");
  ASSERT_EQ(none.size(), 200u);
  const auto window = [](const std::vector<json>& r) {
    double m = 0;
    for (size_t i = 150; i < 200; i++) m += r[i]["loss"].get<double>() / 50;
    return m;
  };
  for (const char* kind : {"int8", "topk"}) {
    const auto c = steps_of(d / kind);
    ASSERT_EQ(c.size(), 200u);
    const bool int8 = std::string(kind) == "int8";
    EXPECT_LT(std::fabs(window(c) - window(none)), int8 ? 0.03 : 0.2) << kind;
    EXPECT_LT(window(c), none[0]["loss"].get<double>() - 1.5) << kind << " learns";
    const double ratio = c.back()["grad_wire_bytes"].get<double>() /
                         none.back()["grad_wire_bytes"].get<double>();
    EXPECT_LT(ratio, int8 ? 0.27 : 0.21) << kind;
  }
}

// A rank made 4x slower (--debug_slow_rank) gets fewer sequences; the weighted gradients keep the
// training what it was.
TEST(TrainMpi, BalancingGivesASlowRankFewerSequences) {
  Dir d("balance");
  ASSERT_EQ(train(2, "--steps 8 --out " + d / "even").code, 0);
  const CmdResult r = train(2, "--steps 8 --balance_microbatches --debug_slow_rank 1 "
                               "--debug_slowdown 4 --out " + d / "bal");
  ASSERT_EQ(r.code, 0) << r.out;
  const auto bal = steps_of(d / "bal");
  const json last = bal.back()["rank_sequences"];
  EXPECT_LT(last[1].get<int>(), last[0].get<int>()) << bal.back().dump();
  EXPECT_EQ(last[0].get<int>() + last[1].get<int>(), 8);
  EXPECT_LT(max_rel_loss_diff(bal, steps_of(d / "even")), 1e-4);
}

}  // namespace
}  // namespace dsv3::test

// `dsv3 train` with tensor parallelism under mpirun (ctest tensor_mpi.*, label mpi): tp alone and
// in every mix with data, expert and pipeline parallelism (up to the 4-D dp2 x tp2 x pp2 on 8
// ranks) against one process, checkpoints moved between tp2 and one process both ways, the HF
// export of a tp2 run, the tensor-parallel traffic against its formula, and bad splits. The
// debug model for 8 steps; the passes themselves (every gradient, every log-prob) are checked in
// tensor_parallel_mpi.
//
// Tolerance: 1e-4 relative on the per-step loss, as the other layout tests (train_mpi.cpp says
// why); measured here ~1e-8.
#include <gtest/gtest.h>

#include "mpi/train_mpi_util.h"
#include "model/config.h"
#include "model/tensor_parallel.h"

namespace dsv3::test {
namespace {

const std::string kSteps = " --steps 8";

TEST(TensorMpi, TensorParallelLayoutsTrainLikeOneProcess) {
  Dir d("tensor_layouts");
  ASSERT_EQ(train(0, kSteps + " --out " + d / "one").code, 0);
  const auto one = steps_of(d / "one");
  ASSERT_EQ(one.size(), 8u);
  struct Layout {
    int np;
    const char* args;
    const char* name;
  };
  for (const Layout& l : {Layout{2, "--tp 2", "tp2"}, Layout{4, "--tp 2 --ep 2 --zero 1", "dp2_tp2_ep2"},
                          Layout{4, "--tp 2 --pp 2", "tp2_pp2"}, Layout{2, "--tp 2 --sp", "tp2_sp"},
                          Layout{4, "--tp 2 --sp --ep 2 --zero 1", "dp2_tp2_sp_ep2"},
                          Layout{8, "--dp 2 --tp 2 --pp 2", "dp2_tp2_pp2"},
                          Layout{4, "--tp 2 --sp --pp 2", "tp2_sp_pp2"},
                          Layout{4, "--tp 2 --sp --pp 2 --pp_schedule dualpipe", "tp2_sp_dualpipe2"}}) {
    const CmdResult r = train(l.np, kSteps + " " + l.args + " --out " + d / l.name);
    ASSERT_EQ(r.code, 0) << l.name << "\n" << r.out;
    const auto m = steps_of(d / l.name);
    EXPECT_LT(max_rel_loss_diff(m, one), 1e-4) << l.name;
    EXPECT_NEAR(m.back()["grad_norm"].get<double>(), one.back()["grad_norm"].get<double>(),
                1e-4 * one.back()["grad_norm"].get<double>()) << l.name;
  }
  // validation under --sp --pp runs as a pipeline forward that passes each tp rank's rows
  ASSERT_EQ(train(0, kSteps + " --eval_every 8 --out " + d / "one_eval").code, 0);
  const CmdResult r = train(4, kSteps + " --eval_every 8 --tp 2 --sp --pp 2 --out " + d / "sp_pp_eval");
  ASSERT_EQ(r.code, 0) << r.out;
  const auto ev = [&](const char* run) {
    const auto e = read_metrics((d / run + "/metrics.jsonl"), "eval");
    return e.empty() ? -1.0 : e.back()["val_loss"].get<double>();
  };
  EXPECT_GT(ev("one_eval"), 0);
  EXPECT_NEAR(ev("sp_pp_eval"), ev("one_eval"), 1e-4 * ev("one_eval"));
  // tp 2's traffic is the formula's (model/tensor_parallel.h), with and without --sp: 4
  // micro-batches of N = 2 x 32 rows, fp32, (tp-1)/tp = 1/2
  const ModelConfig c = preset("debug");
  for (const bool sp : {false, true}) {
    const TpElements e = tp_pass_elements(c, 64, 0, c.layers, true, true, false, sp);
    for (const json& s : steps_of(d / (sp ? "tp2_sp" : "tp2")))
      EXPECT_EQ(s["comm_purpose_bytes"]["tensor"].get<double>(), 4 * 0.5 * 4 * (e.act + e.f32)) << sp;
  }
}

TEST(TensorMpi, CheckpointsMoveBetweenTensorParallelAndOneProcess) {
  Dir d("tensor_ckpt");
  ASSERT_EQ(train(0, kSteps + " --out " + d / "one").code, 0);
  const auto one = steps_of(d / "one");
  // tp 2 saves at step 4; one process goes on to 8
  CmdResult r = train(2, " --steps 4 --tp 2 --save_every 4 --out " + d / "to_one");
  ASSERT_EQ(r.code, 0) << r.out;
  r = train(0, kSteps + " --tp 1 --resume " + d / "to_one" + " --out " + d / "to_one");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("resuming at step 4"), std::string::npos) << r.out;
  EXPECT_LT(max_rel_loss_diff(steps_of(d / "to_one"), one), 1e-4);
  // one process saves at step 4; tp 2 goes on to 8
  ASSERT_EQ(train(0, " --steps 4 --save_every 4 --out " + d / "to_tp").code, 0);
  r = train(2, kSteps + " --tp 2 --resume " + d / "to_tp" + " --out " + d / "to_tp");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_LT(max_rel_loss_diff(steps_of(d / "to_tp"), one), 1e-4);
  // the HF export of tp 2's sharded checkpoint (every split tensor whole) equals one process's
  ASSERT_EQ(run_cli("export --model " + d / "to_tp" + " --format hf --out " + d / "tp_hf").code, 0);
  ASSERT_EQ(run_cli("export --model " + d / "one" + " --format hf --out " + d / "one_hf").code, 0);
  EXPECT_LT(max_abs_hf_diff(d / "tp_hf", d / "one_hf"), 1e-4);
}

TEST(TensorMpi, BadSplitsFailOnceWithoutHanging) {
  Dir d("tensor_bad");
  auto once = [](const CmdResult& r, const std::string& msg) {
    EXPECT_NE(r.code, 0) << r.out;
    EXPECT_EQ(count(r.out, msg), 1u) << "expected one '" << msg << "' in:\n" << r.out;
  };
  once(train(2, "--steps 2 --tp 2 --vocab 511 --out " + d / "a"),
       "the model has 511 vocabulary entries (vocab), not a multiple of 2");
  once(train(2, "--steps 2 --tp 2 --dense_inter 129 --out " + d / "b"),
       "the model has 129 dense FFN units (dense_inter), not a multiple of 2");
  once(train(2, "--steps 2 --tp 2 --moe_inter 33 --out " + d / "c"),
       "the model has 33 units per expert (moe_inter), not a multiple of 2");
  once(train(4, "--steps 2 --tp 4 --out " + d / "e"), "the model has 2 heads, not a multiple of 4");
  once(train(2, "--steps 2 --tp 2 --optimizer muon --out " + d / "f"),
       "--tp 2 splits tensors over ranks: --optimizer muon needs whole tensors on one rank");
  once(train(2, "--steps 2 --sp --out " + d / "g"), "--sp splits the rows of the residual "
       "stream over the tensor-parallel ranks: it needs --tp > 1 (now 1)");
  for (const char* x : {"a", "b", "c", "e", "f", "g"}) EXPECT_FALSE(fs::exists(d / x + "/metrics.jsonl")) << x;
}

}  // namespace
}  // namespace dsv3::test

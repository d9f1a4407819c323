// Pipeline parallelism and mixed layouts of `dsv3 train` under mpirun (ctest pipeline_mpi.*,
// label mpi): per-step losses of pp2 and pp4 (uneven stages) under 1F1B and DualPipe, and
// dp2 x pp2 with experts under both, against one process; DualPipe's F&B overlap against the
// same schedule without it; checkpoints moved between a pipeline and one process, and the bad
// layouts. The debug model with 5 layers (1 dense + 4 MoE, MTP depth 1), 8 steps of a global
// batch of 8 sequences of 32 tokens in micro-batches of 2: 4 micro-batches per pipeline step.
//
// Tolerance 1e-4 relative on the per-step loss, as test_train_mpi: a stage runs the same layer
// code on the same rows on its own layers' weights; what differs is the sum of the embedding's
// two gradients (stage 0's lookup and the last stage's MTP modules, over dp_mirror) and, with dp
// or ep, the order of the data-parallel sums: fp32 rounding.
#include <gtest/gtest.h>

#include "core/timer.h"
#include "model/params.h"
#include "mpi/train_mpi_util.h"
#include "train/pipeline.h"

namespace dsv3::test {
namespace {

const std::string kPipe = " --layers 5 --steps 8";

TEST(PipelineMpi, PipelinesTrainLikeOneProcess) {
  Dir d("pipe");
  ASSERT_EQ(train(0, kPipe + " --out " + d / "one").code, 0);
  const auto one = steps_of(d / "one");
  ASSERT_EQ(one.size(), 8u);
  struct Layout {
    int np, pp, M;  // M: micro-batches per step on each rank
    const char* args;
    const char* name;
  };
  const auto check = [&](const Layout& l, const std::vector<json>& ref) {
    const CmdResult r = train(l.np, kPipe + " " + l.args + " --out " + d / l.name);
    ASSERT_EQ(r.code, 0) << l.name << "\n" << r.out;
    const bool dual = std::string(l.args).find("dualpipe") != std::string::npos;
    EXPECT_NE(r.out.find(dual ? "dualpipe stages of layers" : "1f1b stages of layers"),
              std::string::npos) << r.out;
    const auto m = steps_of(d / l.name);
    EXPECT_LT(max_rel_loss_diff(m, ref), 1e-4) << l.name;
    // the bubble is measured every step beside the schedule's share on equal stages
    for (const json& s : m) {
      ASSERT_TRUE(s.contains("pp_bubble_fraction")) << l.name;
      EXPECT_GE(s["pp_bubble_fraction"].get<double>(), 0.0);
      EXPECT_LT(s["pp_bubble_fraction"].get<double>(), 1.0);
      const double f = s["pp_bubble_formula"].get<double>();
      if (!dual) EXPECT_NEAR(f, double(l.pp - 1) / (l.M + l.pp - 1), 1e-12) << l.name;
      else EXPECT_LT(f, double(l.pp - 1) / (l.M + l.pp - 1)) << l.name;  // below 1F1B's
      EXPECT_GT(s["pp_send_bytes"].get<double>(), 0.0);
    }
  };
  for (const Layout& l : {Layout{2, 2, 4, "--pp 2", "pp2"},
                          Layout{4, 4, 4, "--pp 4 --pp_layers 2,1,1,1", "pp4"},
                          Layout{4, 2, 2, "--pp 2 --ep 2 --zero 1", "dp2_pp2_ep2"},
                          Layout{2, 2, 4, "--pp 2 --pp_schedule dualpipe", "pp2_dual"}})
    check(l, one);
  // DualPipe on 4 stages needs M >= 8: micro-batches of one sequence, against one process so
  ASSERT_EQ(train(0, kPipe + " --batch 1 --out " + d / "one_b1").code, 0);
  const auto one_b1 = steps_of(d / "one_b1");
  check({4, 4, 8, "--batch 1 --pp 4 --pp_layers 2,1,1,1 --pp_schedule dualpipe", "pp4_dual"},
        one_b1);
  // the overlapped F&B's forward dispatches experts on its direction's own ep communicator
  check({4, 2, 4, "--batch 1 --pp 2 --ep 2 --pp_schedule dualpipe", "dp2_pp2_ep2_dual"}, one_b1);
}

// An overlapped F&B runs the same forward and backward as one after the other, on other threads:
// the same losses and gradient norms to the bit (each thread here has one OpenMP thread, as
// without the overlap), and both threads did compute at once.
TEST(PipelineMpi, DualPipeOverlapsAnFAndBWithoutChangingTheStep) {
  Dir d("pipe_overlap");
  const std::string args = kPipe + " --batch 1 --pp 2 --pp_schedule dualpipe";
  const CmdResult on = train(2, args + " --out " + d / "on");
  ASSERT_EQ(on.code, 0) << on.out;
  EXPECT_NE(on.out.find("F&B overlapped on 2 threads"), std::string::npos) << on.out;
  const CmdResult off = train(2, args + " --pp_overlap false --out " + d / "off");
  ASSERT_EQ(off.code, 0) << off.out;
  EXPECT_NE(off.out.find("F&B one after the other (--pp_overlap false)"), std::string::npos);
  // an MPI asked for FUNNELED only (DSV3_MPI_THREADS) trains the same, one after the other
  const CmdResult fun = train(2, args + " --out " + d / "funneled", "DSV3_MPI_THREADS=funneled ");
  ASSERT_EQ(fun.code, 0) << fun.out;
  EXPECT_NE(fun.out.find("F&B one after the other (MPI_THREAD_MULTIPLE not granted"),
            std::string::npos) << fun.out;
  const auto a = steps_of(d / "on"), b = steps_of(d / "off"), c = steps_of(d / "funneled");
  ASSERT_EQ(a.size(), 8u);
  ASSERT_EQ(b.size(), a.size());
  ASSERT_EQ(c.size(), a.size());
  for (size_t i = 0; i < a.size(); i++) EXPECT_EQ(c[i]["loss"].get<double>(), b[i]["loss"].get<double>());
  double overlap = 0;
  for (size_t i = 0; i < a.size(); i++) {
    EXPECT_EQ(a[i]["loss"].get<double>(), b[i]["loss"].get<double>()) << "step " << i + 1;
    EXPECT_EQ(a[i]["grad_norm"].get<double>(), b[i]["grad_norm"].get<double>()) << i + 1;
    overlap += a[i]["pp_overlap_s"].get<double>();
    EXPECT_GE(a[i]["pp_overlap_s"].get<double>(), 0.0);
    EXPECT_FALSE(b[i].contains("pp_overlap_s"));
  }
  EXPECT_GT(overlap, 0.0);  // M = 8 on 2 stages: five F&B ops per rank and step
}

TEST(PipelineMpi, CheckpointsMoveBetweenAPipelineAndOneProcess) {
  Dir d("pipe_ckpt");
  ASSERT_EQ(train(0, kPipe + " --out " + d / "one").code, 0);
  const auto one = steps_of(d / "one");
  // pp 2 saves at step 4; one process goes on to 8 (a resume keeps the saved layout flags
  // unless given)
  CmdResult r = train(2, kPipe + " --steps 4 --pp 2 --save_every 4 --out " + d / "to_one");
  ASSERT_EQ(r.code, 0) << r.out;
  r = train(0, kPipe + " --pp 1 --resume " + d / "to_one" + " --out " + d / "to_one");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("resuming at step 4"), std::string::npos) << r.out;
  EXPECT_LT(max_rel_loss_diff(steps_of(d / "to_one"), one), 1e-4);
  // one process saves at step 4; pp 2 (uneven 4,1) goes on to 8
  ASSERT_EQ(train(0, kPipe + " --steps 4 --save_every 4 --out " + d / "to_pp").code, 0);
  r = train(2, kPipe + " --pp 2 --pp_layers 4,1 --resume " + d / "to_pp" + " --out " + d / "to_pp");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_LT(max_rel_loss_diff(steps_of(d / "to_pp"), one), 1e-4);
  // HF export of the pipeline's sharded checkpoint equals the one-process export within drift
  ASSERT_EQ(run_cli("export --model " + d / "to_pp" + " --format hf --out " + d / "pp_hf").code, 0);
  ASSERT_EQ(run_cli("export --model " + d / "one" + " --format hf --out " + d / "one_hf").code, 0);
  EXPECT_LT(max_abs_hf_diff(d / "pp_hf", d / "one_hf"), 1e-4);
}

// Memory per rank (M7): a pp2 rank's parameter table is build_param_table over its stage (its
// blocks, the embedding on both ends since MTP reads it, head and MTP on the last), element for
// element as each rank reports it at startup, its weights, gradients and AdamW moments are that
// table's size, and the losses stay one process's; DualPipe's mirrored copies checkpoint once.
TEST(PipelineMpi, AStageHoldsOnlyItsLayers) {
  Dir d("pipe_mem");
  const std::string args = " --layers 5 --steps 4 --pp_layers 3,2";
  ASSERT_EQ(train(0, args + " --pp_layers '' --out " + d / "one").code, 0);
  const CmdResult r = train(2, args + " --pp 2 --out " + d / "pp2");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_LT(max_rel_loss_diff(steps_of(d / "pp2"), steps_of(d / "one")), 1e-4);
  EXPECT_NE(r.out.find("  state: weights "), std::string::npos) << r.out;
  ModelConfig c = preset("debug");
  c.layers = 5;
  const std::vector<int> bounds{0, 3, 5};
  const ParamTable whole = build_param_table(c);
  const json start = read_metrics(d / "pp2/metrics.jsonl", "start").at(0);
  ASSERT_EQ(start["rank_memory"].size(), 2u) << start.dump();
  size_t block_elems = 0;  // the main blocks' elements over both ranks
  for (int s = 0; s < 2; s++) {
    const json& m = start["rank_memory"][size_t(s)];
    const ParamTable t = build_param_table(c, {}, pipeline_parts(c, bounds, s, PipeSchedule::OneFOneB));
    EXPECT_EQ(m["pp"].get<int>(), s);
    EXPECT_EQ(m["params"].get<size_t>(), t.total) << "stage " << s;
    EXPECT_LT(t.total, whole.total * 3 / 4) << "stage " << s;
    // fp32 weights, fp32 gradients, AdamW's two moments (zero 0: the weights are the master)
    EXPECT_EQ(m["weights_bytes"].get<double>(), 4.0 * double(t.total));
    EXPECT_EQ(m["grads_bytes"].get<double>(), 4.0 * double(t.total));
    EXPECT_EQ(m["optimizer_bytes"].get<double>(), 8.0 * double(t.total));
    for (int l = 0; l < c.layers; l++) {
      const bool mine = l >= bounds[size_t(s)] && l < bounds[size_t(s) + 1];
      const std::string norm = "model.layers." + std::to_string(l) + ".input_layernorm.weight";
      EXPECT_EQ(t.find(norm) != nullptr, mine) << "stage " << s << " layer " << l;
    }
    for (const ParamInfo& p : t.list) {
      EXPECT_EQ(p.numel, whole.at(p.name).numel) << p.name;  // whole tensors under HF names
      if (p.name.rfind("model.layers.", 0) == 0 && std::stoi(p.name.substr(13)) < c.layers)
        block_elems += p.numel;
    }
    EXPECT_TRUE(t.find("model.embed_tokens.weight")) << "stage " << s << ": MTP reads it";
    EXPECT_EQ(t.find("lm_head.weight") != nullptr, s == 1);
  }
  size_t whole_blocks = 0;  // each block on exactly one stage
  for (const ParamInfo& p : whole.list)
    if (p.name.rfind("model.layers.", 0) == 0 && std::stoi(p.name.substr(13)) < c.layers)
      whole_blocks += p.numel;
  EXPECT_EQ(block_elems, whole_blocks);
  // DualPipe's ranks r and P-1-r hold the same tensors (reduced over dp_mirror, each element one
  // owner): dp2 x pp2 with ep2 and ZeRO-1 saves, one process resumes on the same trajectory
  const std::string b1 = " --layers 5 --batch 1";
  ASSERT_EQ(train(0, b1 + " --steps 4 --out " + d / "one_b1").code, 0);
  CmdResult q = train(4, b1 + " --steps 2 --save_every 2 --pp 2 --ep 2 --zero 1 "
                              "--pp_schedule dualpipe --out " + d / "dual");
  ASSERT_EQ(q.code, 0) << q.out;
  q = train(0, b1 + " --steps 4 --pp 1 --ep 1 --resume " + d / "dual" + " --out " + d / "dual");
  ASSERT_EQ(q.code, 0) << q.out;
  EXPECT_NE(q.out.find("resuming at step 2"), std::string::npos) << q.out;
  EXPECT_LT(max_rel_loss_diff(steps_of(d / "dual"), steps_of(d / "one_b1")), 1e-4);
}

TEST(PipelineMpi, BadLayoutsFailOnceWithoutHanging) {
  Dir d("pipe_bad");
  auto once = [](const CmdResult& r, const std::string& msg) {
    EXPECT_NE(r.code, 0) << r.out;
    EXPECT_EQ(count(r.out, msg), 1u) << "expected one '" << msg << "' in:\n" << r.out;
  };
  // the debug model has 2 layers and 2 heads
  once(train(3, "--steps 2 --pp 3 --global_batch 6 --out " + d / "a"),
       "--pp 3 is more pipeline stages than the model's 2 layers");
  once(train(2, "--steps 2 --pp 2 --pp_layers 2,0 --out " + d / "b"),
       "stage 1 gets 0 layers; every stage needs at least one");
  once(train(2, "--steps 2 --dp 1 --pp 2 --tp 2 --out " + d / "c"),
       "needs dp * tp * pp = 4 ranks, but the world has 2");
  once(train(3, "--steps 2 --tp 3 --global_batch 6 --out " + d / "e"),
       "the model has 2 heads, not a multiple of 3");
  once(train(2, "--steps 2 --pp 2 --pp_layers 1,2 --out " + d / "f"),
       "adds up to 3 layers, but the model has 2");
  once(train(2, "--steps 2 --pp 2 --pp_schedule dualpipe --global_batch 2 --out " + d / "g"),
       "DualPipe needs an even number of micro-batches per step, at least 2 x pp = 4, not 1");
  for (const char* x : {"a", "b", "c", "e", "f", "g"}) EXPECT_FALSE(fs::exists(d / x + "/metrics.jsonl")) << x;
}

// A stage that stops (SIGSTOP at step 3) leaves its neighbour blocked in a receive: the
// watchdog turns that into an error naming the operation and the silent rank, within the
// timeout, instead of a hang until the job's wall-clock limit.
TEST(PipelineMpi, AStoppedStageIsNamedWithinTheTimeout) {
  // under DualPipe's overlap either thread may be the one waiting on the stopped stage
  for (const std::string sched : {"1f1b", "dualpipe"}) {
    Dir d("pipe_hang_" + sched);
    const double t0 = now_seconds();
    const CmdResult r = train(2, "--steps 6 --pp 2 --pp_schedule " + sched +
                                     " --rank_fault stop:1@3 --collective_timeout 3 --out " +
                                     d / "run");
    EXPECT_NE(r.code, 0);
    EXPECT_NE(r.out.find("pipeline: receiving micro-batch"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("timed out after 3 s"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("rank 1 did not answer"), std::string::npos) << r.out;
    EXPECT_LT(now_seconds() - t0, 60.0) << sched << ": the watchdog took too long";
  }
}

}  // namespace
}  // namespace dsv3::test

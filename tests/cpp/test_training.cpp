// End-to-end behaviour of `dsv3 train / eval / sample / export / import / info` through the
// real command: determinism, exact resume, recomputation, accumulation, the HF round trip, the
// calculator, and one clear error for each kind of bad input.
#include <cmath>
#include <filesystem>

#include "cli_util.h"
#include "data/token_file.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace dsv3::test {
namespace {

const std::string kSmall =
    "--preset debug --batch 4 --seq_len 32 --eval_every 0 --sample_tokens 0 --peak_gflops 100 ";

std::vector<double> losses(const std::string& dir) {
  std::vector<double> v;
  for (const auto& j : read_metrics(dir + "/metrics.jsonl", "train")) v.push_back(j["loss"]);
  return v;
}

TEST(Train, DeterministicAndLossFalls) {
  auto d = temp_dir("det");
  for (const char* run : {"a", "b"}) {
    auto r = run_cli("train " + kSmall + "--steps 30 --out " + (d / run).string());
    ASSERT_EQ(r.code, 0) << r.out;
  }
  auto a = losses(d / "a"), b = losses(d / "b");
  ASSERT_EQ(a.size(), 30u);
  EXPECT_EQ(a, b);  // bit-identical: fixed reduction orders everywhere
  EXPECT_LT(a.back(), a.front() - 0.5);
}

TEST(Train, ExactResume) {
  auto d = temp_dir("resume");
  auto r = run_cli("train " + kSmall + "--steps 20 --save_every 10 --keep 5 --out " +
                   (d / "straight").string());
  ASSERT_EQ(r.code, 0) << r.out;
  fs::create_directories(d / "resumed");
  fs::copy_file(d / "straight" / "ckpt_00000010.dsv3", d / "resumed" / "ckpt_00000010.dsv3");
  r = run_cli("train --resume " + (d / "resumed").string() + " --out " + (d / "resumed").string());
  ASSERT_EQ(r.code, 0) << r.out;
  auto straight = losses(d / "straight"), resumed = losses(d / "resumed");
  ASSERT_EQ(straight.size(), 20u);
  ASSERT_EQ(resumed.size(), 10u);
  for (int i = 0; i < 10; i++) EXPECT_EQ(straight[10 + i], resumed[i]) << "step " << 11 + i;
  // a resumed run may not change the model
  r = run_cli("train --resume " + (d / "resumed").string() + " --hidden 32 --steps 30");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("changes the model"), std::string::npos) << r.out;
}

TEST(Train, ExactResumeInEveryPrecision) {
  auto d = temp_dir("resume_prec");
  for (const char* prec : {"bf16", "fp16"}) {
    const std::string p = std::string(" --precision ") + prec + " ";
    const auto straight = d / (std::string("straight_") + prec), resumed = d / (std::string("resumed_") + prec);
    auto r = run_cli("train " + kSmall + p + "--steps 16 --save_every 8 --keep 5 --out " + straight.string());
    ASSERT_EQ(r.code, 0) << r.out;
    fs::create_directories(resumed);
    fs::copy_file(straight / "ckpt_00000008.dsv3", resumed / "ckpt_00000008.dsv3");
    r = run_cli("train --resume " + resumed.string() + " --out " + resumed.string());
    ASSERT_EQ(r.code, 0) << r.out;
    auto a = losses(straight), b = losses(resumed);
    ASSERT_EQ(a.size(), 16u);
    ASSERT_EQ(b.size(), 8u);
    for (int i = 0; i < 8; i++) EXPECT_EQ(a[8 + i], b[i]) << prec << " step " << 9 + i;
    if (std::string(prec) == "fp16") {  // the loss scaler's state travels with the checkpoint
      auto ra = read_metrics(straight / "metrics.jsonl", "train");
      auto rb = read_metrics(resumed / "metrics.jsonl", "train");
      EXPECT_EQ(ra.back()["loss_scale"], rb.back()["loss_scale"]);
    }
  }
}

TEST(Train, CheckpointsArePrecisionIndependent) {
  // a bf16 run resumes as fp32 and back; the master weights are fp32 in the file either way
  auto d = temp_dir("cross_prec");
  auto r = run_cli("train " + kSmall + "--precision bf16 --steps 8 --save_every 4 --keep 5 --out " +
                   (d / "a").string());
  ASSERT_EQ(r.code, 0) << r.out;
  r = run_cli("train --resume " + (d / "a" / "ckpt_00000004.dsv3").string() +
              " --precision fp32 --out " + (d / "b").string());
  ASSERT_EQ(r.code, 0) << r.out;
  auto a = losses(d / "a"), b = losses(d / "b");
  ASSERT_EQ(b.size(), 4u);
  for (int i = 0; i < 4; i++) EXPECT_NEAR(b[i], a[4 + i], 0.02 * a[4 + i]) << "step " << 5 + i;
  r = run_cli("train --resume " + (d / "b").string() + " --precision bf16 --steps 10 --out " +
              (d / "b").string());
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(losses(d / "b").size(), 6u);
  // into fp16: the loss scaler starts at its initial scale (a bf16 checkpoint carries none)
  r = run_cli("train --resume " + (d / "a" / "ckpt_00000004.dsv3").string() +
              " --precision fp16 --out " + (d / "c").string());
  ASSERT_EQ(r.code, 0) << r.out;
  auto c16 = read_metrics(d / "c" / "metrics.jsonl", "train");
  ASSERT_FALSE(c16.empty());
  EXPECT_EQ(c16.front()["loss_scale"], 65536.0);
}

TEST(Guard, RollbackReturnsToThisRunsCheckpointNotAnotherInTheDirectory) {
  // an older run left a later checkpoint in the directory; a resumed run that rolls back must
  // go to its own last checkpoint (the one it resumed from), not to that one
  auto d = temp_dir("guard_own_ckpt");
  auto r = run_cli("train " + kSmall + "--steps 12 --save_every 4 --keep 5 --out " + d.string());
  ASSERT_EQ(r.code, 0) << r.out;
  r = run_cli("train --resume " + (d / "ckpt_00000004.dsv3").string() +
              " --save_every 0 --inject_fault nan@5,6,7 --out " + (d / "b").string());
  ASSERT_EQ(r.code, 0) << r.out;
  auto rb = read_metrics(d / "b" / "metrics.jsonl", "rollback");
  ASSERT_EQ(rb.size(), 1u);
  EXPECT_EQ(rb[0]["to_step"], 4);
  EXPECT_NE(rb[0]["checkpoint"].get<std::string>().find("ckpt_00000004"), std::string::npos);
}

TEST(Train, RecomputeGivesIdenticalLosses) {
  auto d = temp_dir("recompute");
  for (const char* mode : {"none", "selective", "block"}) {
    auto r = run_cli("train " + kSmall + "--steps 5 --recompute " + mode + " --out " +
                     (d / mode).string());
    ASSERT_EQ(r.code, 0) << r.out;
  }
  EXPECT_EQ(losses(d / "none"), losses(d / "block"));
  EXPECT_EQ(losses(d / "none"), losses(d / "selective"));
}

TEST(Guard, NanStepIsSkippedAndLogged) {
  auto d = temp_dir("guard_nan");
  auto r = run_cli("train " + kSmall + "--steps 10 --inject_fault nan@4 --out " + d.string());
  ASSERT_EQ(r.code, 0) << r.out;
  auto train = read_metrics(d / "metrics.jsonl", "train");
  ASSERT_EQ(train.size(), 10u);
  for (const auto& j : train) {
    const bool bad = j["step"] == 4;
    EXPECT_EQ(j.contains("skipped"), bad) << j.dump();
    if (bad) {
      EXPECT_EQ(j["skipped"], "non-finite loss");
    }
  }
  EXPECT_NE(r.out.find("step 4 skipped: non-finite loss"), std::string::npos) << r.out;
  EXPECT_TRUE(std::isfinite(train.back()["loss"].get<double>()));
  // without the guard the same fault stops the run with a message
  r = run_cli("train " + kSmall + "--steps 10 --guard false --inject_fault nan@4 --out " +
              (d / "off").string());
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("training diverged"), std::string::npos) << r.out;
}

TEST(Guard, RepeatedBadStepsRollBackToTheLastCheckpointAndTheRunCompletes) {
  auto d = temp_dir("guard_rollback");
  // attempts 7, 8, 9 fail: three in a row -> back to the checkpoint of step 6; the replayed steps
  // 7.. then read the batches after the offending ones and the run completes all 12 steps
  auto r = run_cli("train " + kSmall + "--steps 12 --save_every 3 --keep 5 --max_bad_steps 3 "
                   "--inject_fault nan@7,8,9 --out " + d.string());
  ASSERT_EQ(r.code, 0) << r.out;
  auto rb = read_metrics(d / "metrics.jsonl", "rollback");
  ASSERT_EQ(rb.size(), 1u);
  EXPECT_EQ(rb[0]["step"], 9);
  EXPECT_EQ(rb[0]["to_step"], 6);
  auto train = read_metrics(d / "metrics.jsonl", "train");
  ASSERT_EQ(train.size(), 15u);  // 9 attempts, then steps 7..12 again
  EXPECT_EQ(train.back()["step"], 12);
  EXPECT_FALSE(train.back().contains("skipped"));
  EXPECT_TRUE(fs::exists(d / "ckpt_00000012.dsv3"));
  // with nothing to roll back to, the run stops and says so
  r = run_cli("train " + kSmall + "--steps 12 --save_every 0 --inject_fault nan@2,3,4 --out " +
              (d / "none").string());
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("no checkpoint to roll back to"), std::string::npos) << r.out;
}

TEST(Guard, LossSpikeIsSkipped) {
  auto d = temp_dir("guard_spike");
  auto r = run_cli("train " + kSmall + "--steps 30 --spike_zscore 6 --spike_window 20 "
                   "--inject_fault spike@25 --out " + d.string());
  ASSERT_EQ(r.code, 0) << r.out;
  int skipped = 0;
  for (const auto& j : read_metrics(d / "metrics.jsonl", "train"))
    if (j.contains("skipped")) {
      skipped++;
      EXPECT_EQ(j["step"], 25);
      EXPECT_NE(j["skipped"].get<std::string>().find("loss spike"), std::string::npos);
    }
  EXPECT_EQ(skipped, 1);
}

TEST(Train, GradAccumulationMatchesLargeBatch) {
  auto d = temp_dir("accum");
  const std::string base = "--preset debug --seq_len 32 --eval_every 0 --sample_tokens 0 "
                           "--peak_gflops 100 --steps 4 ";
  auto r1 = run_cli("train " + base + "--batch 4 --grad_accum 1 --out " + (d / "big").string());
  auto r2 = run_cli("train " + base + "--batch 2 --grad_accum 2 --out " + (d / "acc").string());
  ASSERT_EQ(r1.code, 0) << r1.out;
  ASSERT_EQ(r2.code, 0) << r2.out;
  auto a = losses(d / "big"), b = losses(d / "acc");
  ASSERT_EQ(a.size(), b.size());
  // same tokens in the same order, mean of two half-batch gradients == full-batch gradient;
  // only fp32 summation order differs, so losses agree to ~1e-6 relative over 4 steps.
  for (size_t i = 0; i < a.size(); i++) EXPECT_NEAR(a[i], b[i], 1e-4 * a[i]);
}

TEST(Train, SequenceLengthWarmup) {
  auto d = temp_dir("seqwarm");
  auto r = run_cli("train --preset debug --batch 4 --seq_len 128 --eval_every 0 --sample_tokens 0 "
                   "--peak_gflops 100 --steps 6 --seq_warmup_steps 4 --seq_warmup_start 16 --out " +
                   d.string());
  ASSERT_EQ(r.code, 0) << r.out;
  std::vector<int> lens;
  for (const auto& j : read_metrics(d / "metrics.jsonl", "train")) lens.push_back(j["seq_len"]);
  // target context 16 + 112 * step / 4 -> the shortest power-of-two split of 128 reaching it
  EXPECT_EQ(lens, (std::vector<int>{16, 64, 128, 128, 128, 128}));
}

TEST(Train, MetricsAndCheckpointsKeepLastN) {
  auto d = temp_dir("keep");
  auto r = run_cli("train " + kSmall + "--steps 6 --save_every 1 --keep 2 --eval_every 3 --out " +
                   d.string());
  ASSERT_EQ(r.code, 0) << r.out;
  std::vector<std::string> ck;
  for (auto& e : fs::directory_iterator(d))
    if (e.path().extension() == ".dsv3") ck.push_back(e.path().filename());
  std::sort(ck.begin(), ck.end());
  EXPECT_EQ(ck, (std::vector<std::string>{"ckpt_00000005.dsv3", "ckpt_00000006.dsv3"}));
  auto train = read_metrics(d / "metrics.jsonl", "train");
  ASSERT_EQ(train.size(), 6u);
  for (const char* key : {"loss", "mtp_loss", "balance_loss", "grad_norm", "lr", "tokens_per_s",
                          "mfu", "expert_load", "peak_rss_bytes", "peak_alloc_bytes"})
    EXPECT_TRUE(train[0].contains(key)) << key;
  EXPECT_EQ(train[0]["expert_load"].size(), 2u);  // layer 1 and the MTP block
  for (const auto& l : train[0]["expert_load"]) {  // O1: load detail and router entropy
    EXPECT_GE(l["max_over_mean"].get<double>(), 1.0);
    EXPECT_LE(l["min_over_mean"].get<double>(), 1.0);
    EXPECT_GE(l["cv"].get<double>(), 0.0);
    EXPECT_GT(l["router_entropy"].get<double>(), 0.0);
  }
  EXPECT_EQ(read_metrics(d / "metrics.jsonl", "eval").size(), 2u);
  EXPECT_NE(r.out.find("ETA"), std::string::npos);
}

TEST(Interchange, ExportImportEvalSample) {
  auto d = temp_dir("hf");
  auto r = run_cli("train " + kSmall + "--steps 3 --out " + (d / "run").string());
  ASSERT_EQ(r.code, 0) << r.out;
  Rng rng(5);
  std::vector<int32_t> ids(3000);
  for (auto& t : ids) t = int32_t(rng.below(512));
  write_token_file((d / "val.bin").string(), ids);
  r = run_cli("export --model " + (d / "run").string() + " --format hf --out " + (d / "hf").string());
  ASSERT_EQ(r.code, 0) << r.out;
  r = run_cli("import --hf " + (d / "hf").string() + " --out " + (d / "back.dsv3").string());
  ASSERT_EQ(r.code, 0) << r.out;
  std::string evals[3];
  const std::string models[3] = {(d / "run").string(), (d / "hf").string(),
                                 (d / "back.dsv3").string()};
  for (int i = 0; i < 3; i++) {
    r = run_cli("eval --model " + models[i] + " --data " + (d / "val.bin").string() +
                " --seq_len 32 --batch 4 --json");
    ASSERT_EQ(r.code, 0) << r.out;
    evals[i] = r.out.substr(r.out.find('{'));
    auto j = nlohmann::json::parse(evals[i]);
    evals[i] = j["loss"].dump() + " " + j["mtp_loss"].dump();
  }
  EXPECT_EQ(evals[0], evals[1]);  // f32 export is lossless: identical losses
  EXPECT_EQ(evals[0], evals[2]);
  r = run_cli("sample --model " + (d / "hf").string() + " --tokens 20 --temperature 0");
  ASSERT_EQ(r.code, 0) << r.out;
  auto r2 = run_cli("sample --model " + (d / "run").string() + " --tokens 20 --temperature 0");
  auto text = [](const std::string& o) {  // the sample, without the timing line on stderr
    const std::string s = o.substr(o.find("Once"));
    return s.substr(0, s.find(" prompt + "));
  };
  EXPECT_EQ(text(r.out), text(r2.out));
}

TEST(Info, PublishedShapes) {
  auto r = run_cli("info --preset v3-671b --json");
  ASSERT_EQ(r.code, 0) << r.out;
  auto j = nlohmann::json::parse(r.out);
  // DeepSeek-V3: 671B main-model parameters (685B with the MTP module), 37B activated.
  EXPECT_NEAR(j["params_main"].get<double>() / 1e9, 671, 671 * 0.01);
  EXPECT_NEAR(j["params"].get<double>() / 1e9, 685, 685 * 0.01);
  EXPECT_NEAR(j["active_params"].get<double>() / 1e9, 37, 37 * 0.03);
  r = run_cli("info --preset v2-lite --json");
  ASSERT_EQ(r.code, 0) << r.out;
  j = nlohmann::json::parse(r.out);
  EXPECT_NEAR(j["params"].get<double>() / 1e9, 15.7, 15.7 * 0.02);  // "16B"
  EXPECT_NEAR(j["active_params"].get<double>() / 1e9, 2.4, 2.4 * 0.05);
}

struct BadCase {
  std::string args, expect;
};

TEST(BadInput, ClearMessageAndNonZeroExit) {
  auto d = temp_dir("bad");
  { std::ofstream(d / "text.dsv3") << "hello, I am not a checkpoint\n"; }
  { std::ofstream(d / "bad.cfg") << "layers = 2\nhidden: 64\n"; }
  { std::ofstream(d / "unknown.cfg") << "layerz = 2\n"; }
  auto r = run_cli("train " + kSmall + "--steps 2 --out " + (d / "ok").string());
  ASSERT_EQ(r.code, 0) << r.out;
  auto ck = (d / "ok" / "ckpt_00000002.dsv3").string();
  {  // truncated copy
    std::string bytes = read_file_bytes(ck);
    std::ofstream(d / "trunc.dsv3", std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  }
  std::vector<int32_t> ids(100, 1);
  write_token_file((d / "tok.bin").string(), ids);
  {
    std::string bytes = read_file_bytes((d / "tok.bin").string());
    std::ofstream(d / "tok_trunc.bin", std::ios::binary) << bytes.substr(0, bytes.size() - 10);
  }
  const BadCase cases[] = {
      {"train --layerz 3", "unknown setting 'layerz'"},
      {"train --layers three", "'layers' expects an integer"},
      {"train --lr 1e-3x", "'lr' expects a finite number"},
      {"train --router tanh", "unknown router 'tanh'"},
      {"train --norm_topk maybe", "expects true or false"},
      {"train --preset tiny --experts 16 --groups 3", "divisible by groups"},
      {"train --preset tiny --topk 17", "topk (17) must be between 1 and the number of routed"},
      {"train --preset tiny --qk_rope 15", "must be even"},
      {"train --preset nope", "unknown preset 'nope'"},
      {"train --config " + (d / "bad.cfg").string(), "bad.cfg:2: expected 'key = value'"},
      {"train --config " + (d / "unknown.cfg").string(), "unknown.cfg:1: unknown setting 'layerz'"},
      {"train --config /nonexistent.cfg", "cannot read config file: cannot open /nonexistent.cfg"},
      {"train --batch 0", "batch must be in [1, 1048576] (got 0)"},
      {"train --seq_len 100000", "exceeds max_seq"},
      {"frobnicate", "unknown command"},
      {"eval --model " + (d / "missing.dsv3").string() + " --data " + (d / "tok.bin").string(),
       "missing.dsv3"},
      {"eval --model " + (d / "text.dsv3").string() + " --data " + (d / "tok.bin").string(),
       "text.dsv3"},
      {"eval --model " + (d / "trunc.dsv3").string() + " --data " + (d / "tok.bin").string(),
       "trunc.dsv3"},
      {"eval --model " + ck + " --data " + ck, "20240520"},
      {"eval --model " + ck + " --data " + (d / "tok_trunc.bin").string(), "tok_trunc.bin"},
      {"eval --model " + ck, "--data (an llm.c token file) or --text"},
      {"train --resume " + (d / "trunc.dsv3").string(), "trunc.dsv3"},
      {"export --model " + ck + " --format onnx --out " + d.string(), "unknown --format 'onnx'"},
      {"export --model " + ck + " --format gguf --out " + d.string(), "is a directory"},
      {"train --preset debug --batch 4 --seq_len 32 --train_data " + (d / "text.dsv3").string(),
       "text.dsv3"},
      // flags that do not apply to the run are refused, naming what they need
      {"train --mix a:1", "--mix does not apply to this run: it needs prepared data"},
      {"train --fim_rate 0.2", "--fim_rate does not apply"},
      {"train --window_overlap 8", "--window_overlap does not apply"},
      {"train --val_data x.bin", "--val_data does not apply"},
      {"train --precision bf16 --loss_scale 1024", "--loss_scale does not apply to this run: it needs --precision fp16"},
      {"train --decay_frac 0.3", "--decay_frac does not apply to this run: it needs --schedule wsd"},
      {"train --seq_warmup_start 32", "--seq_warmup_start does not apply"},
      {"train --preset debug --experts 0 --dense_layers 2 --balance_alpha 0.01", "--balance_alpha does not apply"},
      {"train --spike_window 10", "--spike_window does not apply"},
      {"train --pp_overlap false", "--pp_overlap does not apply to this run: it needs --pp_schedule dualpipe"},
      {"train --precision bf17", "unknown precision 'bf17'"},
      {"train --recompute some", "unknown recompute mode 'some'"},
      {"train --loss_scale 1000 --precision fp16", "loss_scale must be a power of two"},
      {"train --inject_fault nan@x", "inject_fault"},
      {"train --dp 2", "needs dp * tp * pp = 2 ranks, but the world has 1"},
      {"eval --model " + ck + " --data " + (d / "tok.bin").string() + " --loss_scale 8", "training setting"},
  };
  for (const auto& c : cases) {
    auto res = run_cli(c.args);
    EXPECT_NE(res.code, 0) << c.args;
    EXPECT_LT(res.code, 128) << c.args << ": crashed\n" << res.out;
    EXPECT_NE(res.out.find(c.expect), std::string::npos)
        << c.args << "\n  expected: " << c.expect << "\n  got: " << res.out;
  }
}

}  // namespace
}  // namespace dsv3::test

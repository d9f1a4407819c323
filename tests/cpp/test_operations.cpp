// Operations (O1-O3) and schedules (T2): TensorBoard framing and repair, the run report, the
// sweep (space, grid, ASHA, TPE, and whole sweeps through the CLI: grid finds the planted best,
// ASHA stops the planted bad trials, a killed sweep resumes), learning-rate schedules at chosen
// steps against hand-computed values, and the batch-size ramp.
#include <signal.h>
#include <sys/wait.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <regex>
#include <thread>

#include "cli_util.h"
#include "core/check.h"
#include "optim/schedule.h"
#include "test_util.h"
#include "train/metrics.h"
#include "train/report.h"
#include "train/sweep.h"
#include "train/tensorboard.h"

namespace fs = std::filesystem;

namespace dsv3::test {
namespace {

const std::string kSmall =
    "--preset debug --batch 4 --seq_len 32 --sample_tokens 0 --peak_gflops 100 ";

// ---------------------------------------------------------------- schedules (T2)
TEST(Schedule, CosineAtChosenSteps) {
  ScheduleConfig s;  // lr 1e-3, min 1e-4
  s.warmup = 10;
  EXPECT_DOUBLE_EQ(lr_at(s, 0, 110), 1e-4);    // (0+1)/10 of lr
  EXPECT_DOUBLE_EQ(lr_at(s, 9, 110), 1e-3);
  EXPECT_DOUBLE_EQ(lr_at(s, 10, 110), 1e-3);   // cosine progress 0
  EXPECT_NEAR(lr_at(s, 60, 110), 5.5e-4, 1e-15);  // progress 1/2: (lr + min) / 2
  EXPECT_NEAR(lr_at(s, 35, 110), 1e-4 + 9e-4 * (1 + std::cos(M_PI / 4)) / 2, 1e-15);
  EXPECT_DOUBLE_EQ(lr_at(s, 110, 110), 1e-4);
}

TEST(Schedule, WsdAtChosenSteps) {
  ScheduleConfig s;
  s.kind = ScheduleKind::Wsd;
  s.warmup = 10;
  s.decay_frac = 0.2;  // 100 steps: stable to step 79, linear decay over steps 80..99
  EXPECT_DOUBLE_EQ(lr_at(s, 4, 100), 5e-4);
  EXPECT_DOUBLE_EQ(lr_at(s, 50, 100), 1e-3);
  EXPECT_DOUBLE_EQ(lr_at(s, 79, 100), 1e-3);
  EXPECT_NEAR(lr_at(s, 80, 100), 1e-3 - 9e-4 * 1 / 20, 1e-15);
  EXPECT_NEAR(lr_at(s, 89, 100), 5.5e-4, 1e-15);
  EXPECT_NEAR(lr_at(s, 99, 100), 1e-4, 1e-15);
  s.decay_frac = 0;  // no decay at all
  EXPECT_DOUBLE_EQ(lr_at(s, 99, 100), 1e-3);
}

TEST(Schedule, ConstantAndV3AtChosenSteps) {
  ScheduleConfig s;
  s.kind = ScheduleKind::Constant;
  s.warmup = 4;
  EXPECT_DOUBLE_EQ(lr_at(s, 1, 50), 5e-4);
  EXPECT_DOUBLE_EQ(lr_at(s, 49, 50), 1e-3);
  // V3 over 1480 steps, its own numbers: 2.2e-4 peak, 2.2e-5 after the decay, 7.3e-6 last.
  // Stage ends: 1480 * 10/14.8 = 1000, * 14.3/14.8 = 1430, * 14.633/14.8 = 1463.3 -> 1463.
  s.kind = ScheduleKind::V3;
  s.lr = 2.2e-4, s.min_lr = 2.2e-5, s.warmup = 20;
  EXPECT_NEAR(lr_at(s, 0, 1480), 1.1e-5, 1e-18);
  EXPECT_NEAR(lr_at(s, 19, 1480), 2.2e-4, 1e-18);
  EXPECT_DOUBLE_EQ(lr_at(s, 500, 1480), 2.2e-4);
  EXPECT_DOUBLE_EQ(lr_at(s, 999, 1480), 2.2e-4);
  EXPECT_DOUBLE_EQ(lr_at(s, 1000, 1480), 2.2e-4);  // cosine progress 0
  EXPECT_NEAR(lr_at(s, 1215, 1480), 1.21e-4, 1e-17);  // progress 1/2
  EXPECT_NEAR(lr_at(s, 1430, 1480), 2.2e-5, 1e-18);
  EXPECT_NEAR(lr_at(s, 1462, 1480), 2.2e-5, 1e-18);
  EXPECT_NEAR(lr_at(s, 1463, 1480), 7.3e-6, 1e-18);
  EXPECT_NEAR(lr_at(s, 1479, 1480), 7.3e-6, 1e-18);
}

TEST(Schedule, BatchRampInWholeMicroBatches) {
  ScheduleConfig s;
  EXPECT_EQ(accum_at(s, 5, 0), 5);  // off
  s.batch_ramp_tokens = 1000, s.batch_ramp_start = 1;  // +1 micro-batch every 250 tokens
  EXPECT_EQ(accum_at(s, 5, 0), 1);
  EXPECT_EQ(accum_at(s, 5, 249), 1);
  EXPECT_EQ(accum_at(s, 5, 250), 2);
  EXPECT_EQ(accum_at(s, 5, 999), 4);
  EXPECT_EQ(accum_at(s, 5, 1000), 5);
  EXPECT_EQ(accum_at(s, 5, 1u << 30), 5);
  // V3's ramp: 3072 -> 15360 sequences is 1 -> 5 micro-batches of 3072
  s.batch_ramp_tokens = 469'000'000'000LL;
  EXPECT_EQ(accum_at(s, 5, 117'250'000'000ULL), 2);
}

TEST(Schedule, BatchRampThroughTraining) {
  // 1 micro-batch of 4x32 tokens, then 2, 3 (ramp over 512 tokens = 2 up-steps of 256)
  auto d = temp_dir("ramp");
  auto r = run_cli("train " + kSmall + "--steps 6 --eval_every 0 --grad_accum 3 --batch_ramp_tokens 512 --out " +
                   (d / "a").string());
  ASSERT_EQ(r.code, 0) << r.out;
  std::vector<int> mb;
  std::vector<uint64_t> tokens;
  for (const auto& j : read_metrics((d / "a" / "metrics.jsonl").string(), "train"))
    mb.push_back(j["micro_batches"]), tokens.push_back(j["tokens"]);
  // tokens seen before each step: 0 -> 1 mb; 128 -> 1; 256 -> 2; 512 -> 3 ...
  EXPECT_EQ(mb, (std::vector<int>{1, 1, 2, 3, 3, 3}));
  EXPECT_EQ(tokens, (std::vector<uint64_t>{128, 256, 512, 896, 1280, 1664}));
  // resume mid-ramp is exact
  r = run_cli("train " + kSmall + "--steps 6 --eval_every 0 --grad_accum 3 --batch_ramp_tokens 512 "
              "--save_every 2 --keep 5 --out " + (d / "b").string());
  ASSERT_EQ(r.code, 0) << r.out;
  fs::create_directories(d / "c");
  fs::copy_file(d / "b" / "ckpt_00000002.dsv3", d / "c" / "ckpt_00000002.dsv3");
  r = run_cli("train --resume " + (d / "c").string() + " --out " + (d / "c").string());
  ASSERT_EQ(r.code, 0) << r.out;
  auto a = read_metrics((d / "b" / "metrics.jsonl").string(), "train");
  auto b = read_metrics((d / "c" / "metrics.jsonl").string(), "train");
  ASSERT_EQ(b.size(), 4u);
  for (int i = 0; i < 4; i++) {
    EXPECT_EQ(a[2 + i]["loss"], b[i]["loss"]);
    EXPECT_EQ(a[2 + i]["micro_batches"], b[i]["micro_batches"]);
  }
  r = run_cli("train " + kSmall + "--steps 2 --grad_accum 2 --batch_ramp_tokens 100 --batch_ramp_start 2 --out " +
              (d / "x").string());
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("raise --grad_accum"), std::string::npos) << r.out;
  r = run_cli("train " + kSmall + "--steps 2 --batch_ramp_start 2 --out " + (d / "y").string());
  EXPECT_NE(r.out.find("batch_ramp_start does not apply"), std::string::npos) << r.out;
  r = run_cli("train " + kSmall + "--steps 2 --schedule v4 --out " + (d / "y").string());
  EXPECT_NE(r.out.find("unknown schedule 'v4'"), std::string::npos) << r.out;
}

// ---------------------------------------------------------------- TensorBoard (O1)
TEST(TensorBoard, Crc32cAndFraming) {
  EXPECT_EQ(crc32c("123456789", 9), 0xe3069283u);  // the CRC-32C check value
  const std::string zeros(32, '\0');
  EXPECT_EQ(crc32c(zeros.data(), 32), 0x8a9136aau);  // RFC 3720 B.4
  auto d = temp_dir("tb");
  const std::string f = (d / "events.out.tfevents.1.x").string();
  {
    std::ofstream o(f, std::ios::binary);
    o << tfrecord("hello") << tfrecord(std::string(300, 'z'));
  }
  uint64_t valid = 0;
  auto recs = read_tfrecords(f, &valid);
  ASSERT_EQ(recs.size(), 2u);
  EXPECT_EQ(recs[0], "hello");
  EXPECT_EQ(valid, fs::file_size(f));
  // a record cut anywhere is dropped whole; the repair cuts exactly it
  const std::string whole = read_file_bytes(f);
  for (size_t cut : {size_t(1), size_t(11), size_t(12), size_t(100), size_t(315)}) {
    std::ofstream(f, std::ios::binary) << whole.substr(0, 21) + whole.substr(21, cut);
    EXPECT_EQ(read_tfrecords(f).size(), 1u) << cut;
    EXPECT_EQ(repair_event_file(f), cut);
    EXPECT_EQ(fs::file_size(f), 21u);
  }
  // a flipped payload byte fails the CRC
  std::string bad = whole;
  bad[14] ^= 1;
  std::ofstream(f, std::ios::binary) << bad;
  EXPECT_EQ(read_tfrecords(f).size(), 0u);
}

TEST(TensorBoard, HistogramBuckets) {
  const std::vector<double> v = {1, 1, 2, 3, 10, 10};
  TbHistogram h = make_histogram(v, 9);
  EXPECT_EQ(h.num, 6);
  EXPECT_EQ(h.min, 1);
  EXPECT_EQ(h.max, 10);
  EXPECT_EQ(h.sum, 27);
  EXPECT_EQ(h.sum_squares, 1 + 1 + 4 + 9 + 100 + 100);
  ASSERT_EQ(h.bucket.size(), 9u);
  EXPECT_EQ(h.bucket_limit.back(), 10);
  EXPECT_EQ(h.bucket[0], 3);  // (-, 2]: 1, 1, 2
  EXPECT_EQ(h.bucket[1], 1);  // (2, 3]
  EXPECT_EQ(h.bucket[8], 2);
  h = make_histogram(std::vector<double>{4, 4, 4});
  EXPECT_EQ(h.bucket, std::vector<double>{3});
}

TEST(TensorBoard, RecordsBecomeTags) {
  nlohmann::json rec = {{"kind", "train"}, {"step", 7}, {"loss", 2.5}, {"lr", 1e-3},
                        {"expert_load", {{{"layer", "layer 1"}, {"cv", 0.5}, {"loads", {1, 2, 3}}}}}};
  int64_t step = 0;
  TbSummary s;
  ASSERT_TRUE(tensorboard_summary(rec, &step, &s));
  EXPECT_EQ(step, 7);
  std::set<std::string> tags;
  for (auto& [t, v] : s.scalars) tags.insert(t);
  EXPECT_EQ(tags, (std::set<std::string>{"train/loss", "train/lr", "expert_load/layer_1/cv"}));
  ASSERT_EQ(s.histograms.size(), 1u);
  EXPECT_EQ(s.histograms[0].first, "expert_load/layer_1");
  EXPECT_EQ(s.histograms[0].second.num, 3);
  rec = {{"kind", "eval"}, {"step", 4}, {"domain", "web"}, {"val_loss", 3.0}};
  ASSERT_TRUE(tensorboard_summary(rec, &step, &s));
  EXPECT_EQ(s.scalars[0].first, "eval/web/val_loss");
}

// ---------------------------------------------------------------- report (O2)
TEST(Report, EffectiveMetricsDropWhatAResumeSupersedes) {
  auto d = temp_dir("eff");
  const std::string m = (d / "metrics.jsonl").string();
  std::ofstream(m) << R"({"kind":"start","step":0}
{"kind":"train","step":1,"loss":3}
{"kind":"train","step":2,"loss":2.9}
{"kind":"train","step":3,"loss":2.8}
{"kind":"train","st
{"kind":"start","step":2}
{"kind":"train","step":3,"loss":2.7}
)";
  auto r = effective_metrics(m);
  std::vector<double> losses;
  for (auto& j : r)
    if (j["kind"] == "train") losses.push_back(j["loss"]);
  EXPECT_EQ(losses, (std::vector<double>{3, 2.9, 2.7}));
}

TEST(Report, ChartsHaveTheirPoints) {
  ChartSeries a{"train", "#1f77b4", {{1, 3.0}, {2, 2.0}, {3, 1.5}}};
  const std::string svg = svg_line_chart("loss", "Loss", "step", {a});
  EXPECT_NE(svg.find("data-chart=\"loss\""), std::string::npos);
  EXPECT_NE(svg.find("data-points=\"3\""), std::string::npos);
  EXPECT_NE(svg.find("<path d=\"M"), std::string::npos);
  EXPECT_NE(svg_line_chart("x", "X", "step", {}).find("no data"), std::string::npos);
  const std::string hm = svg_heatmap("h", "H", {"e0", "e1"}, {1, 2, 3}, {{1, 2, 0.5}, {1, 1, NAN}}, 1.0);
  EXPECT_NE(hm.find("data-cells=\"6\""), std::string::npos);
  EXPECT_EQ(std::count(hm.begin(), hm.end(), '\n'), 0);
  size_t rects = 0;
  for (size_t p = hm.find("<rect x="); p != std::string::npos; p = hm.find("<rect x=", p + 1)) rects++;
  EXPECT_EQ(rects, 5u + 9u);  // 5 finite cells + the 9-step colour key
}

TEST(Report, CommandWritesOnePageAndRejectsBadInput) {
  auto d = temp_dir("report");
  auto r = run_cli("train " + kSmall + "--steps 8 --eval_every 4 --save_every 4 --out " + (d / "a").string());
  ASSERT_EQ(r.code, 0) << r.out;
  r = run_cli("train " + kSmall + "--steps 8 --lr 3e-3 --eval_every 4 --out " + (d / "b").string());
  ASSERT_EQ(r.code, 0) << r.out;
  r = run_cli("report " + (d / "a").string() + " --compare " + (d / "b").string() + " --out " +
              (d / "r.html").string());
  ASSERT_EQ(r.code, 0) << r.out;
  const std::string html = read_file_bytes((d / "r.html").string());
  for (const char* id : {"loss", "lr", "grad_norm", "tokens_per_s", "mfu", "memory", "load_max",
                         "expert_load_layer 1", "mtp_loss"})
    EXPECT_NE(html.find(std::string("data-chart=\"") + id + "\""), std::string::npos) << id;
  // self-contained: no script, no link or image from elsewhere
  EXPECT_EQ(std::regex_search(html, std::regex("(src|href)=")), false);
  EXPECT_EQ(html.find("<script"), std::string::npos);
  EXPECT_NE(html.find("ckpt_00000004.dsv3"), std::string::npos);
  EXPECT_NE(html.find("<td>lr</td><td>0.001</td>"), std::string::npos);  // the main run's settings
  r = run_cli("report " + (d / "nothing").string());
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("is not a directory"), std::string::npos) << r.out;
  fs::create_directories(d / "empty");
  r = run_cli("report " + (d / "empty").string());
  EXPECT_NE(r.out.find("cannot open"), std::string::npos) << r.out;
}

// ---------------------------------------------------------------- sweeps (O3)
TEST(Sweep, SpaceParsingAndErrors) {
  auto s = parse_space("lr=log(1e-4,3e-3); batch=[8,16]; warmup=int(10,100);");
  ASSERT_EQ(s.size(), 3u);
  EXPECT_EQ(s[0].kind, SweepParam::Kind::Log);
  EXPECT_EQ(s[1].choices, (std::vector<std::string>{"8", "16"}));
  EXPECT_EQ(s[2].hi, 100);
  auto err = [](const std::string& text) {
    try {
      parse_space(text);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(err("lr=log(1e-4)").find("takes two numbers"), std::string::npos);
  EXPECT_NE(err("lr=log(0,1)").find("log needs low > 0"), std::string::npos);
  EXPECT_NE(err("lr=gauss(1,2)").find("unknown distribution"), std::string::npos);
  EXPECT_NE(err("lr=[1,2").find("closing ']'"), std::string::npos);
  EXPECT_NE(err("lr").find("expected name=spec"), std::string::npos);
  EXPECT_NE(err("lr=uniform(3,1)").find("low < high"), std::string::npos);
  EXPECT_NE(err("a=[1]; a=[2]").find("twice"), std::string::npos);
  EXPECT_NE(err("w=int(1.5,3)").find("integer bounds"), std::string::npos);
  EXPECT_NE(err(" ; ").find("empty"), std::string::npos);
}

TEST(Sweep, GridRandomAndTpe) {
  auto g = grid_points(parse_space("a=[x,y]; lr=log(1e-4,1e-2); w=int(1,2)"), 3);
  ASSERT_EQ(g.size(), 12u);
  EXPECT_EQ(g[0], (TrialParams{{"a", "x"}, {"lr", "0.0001"}, {"w", "1"}}));
  EXPECT_EQ(g[3], (TrialParams{{"a", "x"}, {"lr", "0.001"}, {"w", "2"}}));
  EXPECT_EQ(g[11], (TrialParams{{"a", "y"}, {"lr", "0.01"}, {"w", "2"}}));
  // TPE concentrates on the good region: f(x) = (log10 x + 3)^2 has its minimum at 1e-3
  const auto space = parse_space("lr=log(1e-6,1)");
  std::vector<TrialResult> done;
  Rng rng(7);
  for (int i = 0; i < 40; i++) {
    TrialParams p = tpe_point(space, done, rng);
    const double x = std::stod(p[0].second);
    done.push_back({p, std::pow(std::log10(x) + 3, 2)});
  }
  int near = 0;
  for (int i = 20; i < 40; i++) near += done[size_t(i)].metric < 0.25;  // within 10^+-0.5
  EXPECT_GE(near, 10);  // random search would put ~1/6 of 20 there
  // deterministic for a seed
  Rng r1(3), r2(3);
  EXPECT_EQ(tpe_point(space, done, r1), tpe_point(space, done, r2));
}

TEST(Sweep, AshaRule) {
  Asha a(10, 3);
  EXPECT_EQ(a.rung_step(0), 10);
  EXPECT_EQ(a.rung_step(2), 90);
  EXPECT_EQ(a.rung_of(9), -1);
  EXPECT_EQ(a.rung_of(10), 0);
  EXPECT_EQ(a.rung_of(89), 1);
  EXPECT_TRUE(a.report(0, 5.0));   // alone: continues
  EXPECT_FALSE(a.report(0, 6.0));  // best 1 of 2 is 5
  EXPECT_TRUE(a.report(0, 4.0));
  EXPECT_FALSE(a.report(0, 4.5));  // best max(1, 4/3) = 1: 4.0
  EXPECT_TRUE(a.report(0, 1.0));
}

std::vector<nlohmann::json> sweep_events(const fs::path& dir, const std::string& event) {
  std::vector<nlohmann::json> out;
  std::ifstream in(dir / "trials.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line);
    if (j["event"] == event) out.push_back(j);
  }
  return out;
}

const std::string kTrial = " -- train " + kSmall + "--eval_every 5 --eval_batches 2 ";

TEST(Sweep, GridFindsThePlantedBest) {
  // lr spans four decades: over 20 steps the largest clearly trains best
  auto d = temp_dir("sweep_grid");
  auto r = run_cli("sweep --space 'lr=[1e-6,1e-5,1e-4,3e-3]' --algo grid --jobs 2 --out " +
                   (d / "s").string() + kTrial + "--steps 20 --warmup 2 --schedule constant");
  ASSERT_EQ(r.code, 0) << r.out;
  auto ends = sweep_events(d / "s", "end");
  ASSERT_EQ(ends.size(), 4u);
  for (auto& e : ends) EXPECT_EQ(e["status"], "done") << e.dump();
  EXPECT_NE(r.out.find("best: trial 3, val_loss"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("--lr 3e-3"), std::string::npos) << r.out;
  EXPECT_TRUE(fs::exists(d / "s" / "trial_0002" / "metrics.jsonl"));
  // a different sweep in the same directory is refused
  r = run_cli("sweep --space 'lr=[1e-6,1e-5]' --algo grid --out " + (d / "s").string() + kTrial + "--steps 20");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("holds a different sweep"), std::string::npos) << r.out;
  // bad input
  r = run_cli("sweep --space 'lr=log(1e-4)' --trials 2 --out " + (d / "t").string() + kTrial);
  EXPECT_NE(r.out.find("takes two numbers"), std::string::npos) << r.out;
  r = run_cli("sweep --space 'lrr=log(1e-4,1e-3)' --trials 2 --out " + (d / "t").string() + kTrial);
  EXPECT_NE(r.out.find("'lrr' is not a setting of dsv3 train"), std::string::npos) << r.out;
  r = run_cli("sweep --space 'lr=log(1e-4,1e-3)' --trials 2 --out " + (d / "t").string() + kTrial + "--lr 1");
  EXPECT_NE(r.out.find("which the space sweeps"), std::string::npos) << r.out;
  r = run_cli("sweep --space 'lr=log(1e-4,1e-3)' --out " + (d / "t").string() + kTrial);
  EXPECT_NE(r.out.find("--trials N is required"), std::string::npos) << r.out;
  r = run_cli("sweep --space 'lr=log(1e-4,1e-3)' --trials 1 --algo bayes --out " + (d / "t").string() + kTrial);
  EXPECT_NE(r.out.find("unknown --algo 'bayes'"), std::string::npos) << r.out;
}

TEST(Sweep, AshaStopsThePlantedBadTrials) {
  // two good learning rates first, then two that cannot learn in time: ASHA stops the latter at
  // the first rung (step 5 of 40)
  auto d = temp_dir("sweep_asha");
  auto r = run_cli("sweep --space 'lr=[3e-3,2e-3,1e-7,2e-7]' --algo grid --early_stop asha --out " +
                   (d / "s").string() + kTrial + "--steps 40 --warmup 2 --schedule constant");
  ASSERT_EQ(r.code, 0) << r.out;
  auto ends = sweep_events(d / "s", "end");
  ASSERT_EQ(ends.size(), 4u);
  for (auto& e : ends) {
    if (e["params"]["lr"] == "1e-7" || e["params"]["lr"] == "2e-7") {
      EXPECT_EQ(e["status"], "pruned") << e.dump();
      EXPECT_LT(e["step"].get<int>(), 40) << e.dump();
    }
  }
  EXPECT_EQ(ends[0]["status"], "done");
  EXPECT_EQ(ends[0]["step"], 40);
}

TEST(Sweep, KilledSweepResumesWithoutRerunningFinishedTrials) {
  auto d = temp_dir("sweep_kill");
  const std::string cmd = std::string(DSV3_BIN) + " sweep --space 'lr=log(1e-4,3e-3); warmup=int(1,4)' "
                          "--algo random --trials 3 --jobs 1 --out " + (d / "s").string() + kTrial +
                          "--steps 30";
  const pid_t pid = fork();
  if (pid == 0) {
    execl("/bin/sh", "sh", "-c", ("exec " + cmd + " >/dev/null 2>&1").c_str(), (char*)nullptr);
    _exit(127);
  }
  // kill the sweep once the first trial has finished and the second has started
  for (int i = 0; i < 6000 && sweep_events(d / "s", "start").size() < 2; i++)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  ASSERT_EQ(sweep_events(d / "s", "end").size(), 1u);
  const auto first = sweep_events(d / "s", "end")[0];
  const auto mtime = fs::last_write_time(d / "s" / "trial_0000" / "metrics.jsonl");
  // the trials die with the sweep (PR_SET_PDEATHSIG)
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  auto r = run_cli(cmd.substr(std::string(DSV3_BIN).size() + 1));
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("1 of 3 trials finished"), std::string::npos) << r.out;
  auto ends = sweep_events(d / "s", "end");
  ASSERT_EQ(ends.size(), 3u);
  EXPECT_EQ(ends[0], first);
  EXPECT_EQ(fs::last_write_time(d / "s" / "trial_0000" / "metrics.jsonl"), mtime);  // not rerun
  std::set<int> ids;
  for (auto& e : ends) ids.insert(e["trial"].get<int>());
  EXPECT_EQ(ids, (std::set<int>{0, 1, 2}));
  auto starts = sweep_events(d / "s", "start");
  EXPECT_EQ(starts.size(), 3u);  // trial 1's parameters were reused, not drawn again
}

}  // namespace
}  // namespace dsv3::test

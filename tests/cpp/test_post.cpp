// Post-training (issue 12, src/post): chat rendering and masks, exactly-zero gradients outside
// assistant turns, malformed JSONL lines, GRPO's advantages and clipped objective by hand, the
// reward rules, and `dsv3 finetune` end to end with a resume. The losses and gradients against
// PyTorch are tests/python/test_post_training.py.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>

#include "cli_util.h"
#include "core/check.h"
#include "model/model.h"
#include "model/params.h"
#include "post/data.h"
#include "post/dpo.h"
#include "post/grpo.h"
#include "post/pipeline.h"
#include "post/reward.h"
#include "test_util.h"
#include "train/state.h"

using namespace dsv3;

namespace {
std::string masked_text(const TextCodec& codec, const RenderedChat& r) {
  std::vector<int32_t> ids;
  for (size_t i = 0; i < r.ids.size(); i++)
    if (r.assistant[i]) ids.push_back(r.ids[i]);
  return codec.decode(ids);
}
void write(const std::filesystem::path& p, const std::string& text) { std::ofstream(p) << text; }
}  // namespace

TEST(RenderChat, PlainTemplateMasksAssistantContentOnly) {
  const std::vector<ChatMessage> msgs = {
      {"system", "S"}, {"user", "U"}, {"assistant", "A"}, {"user", "V"}, {"assistant", "B"}};
  const TextCodec bytes;
  const RenderedChat r = render_chat(bytes, msgs, false);
  EXPECT_STREQ(r.template_name, "plain");
  EXPECT_EQ(ids_to_bytes(r.ids), "S\n\nUser: U\n\nAssistant: A\n\nUser: V\n\nAssistant: B\n\n");
  EXPECT_EQ(masked_text(bytes, r), " A\n\n B\n\n");
  // the generation prompt of the first turns is what apply_chat_template gives (I2)
  const std::vector<ChatMessage> first(msgs.begin(), msgs.begin() + 4);
  EXPECT_EQ(render_chat(bytes, first, true).ids, apply_chat_template(bytes, first).ids);
}

TEST(RenderChat, DeepSeekMarkersMaskAssistantContentAndEnd) {
  const auto dir = test::temp_dir("post_chat");
  const std::string bos = "<\xEF\xBD\x9C" "begin\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>";
  const std::string eos = "<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>";
  const std::string user = "<\xEF\xBD\x9CUser\xEF\xBD\x9C>", asst = "<\xEF\xBD\x9C" "Assistant\xEF\xBD\x9C>";
  write(dir / "t.txt", "the cat sat on the mat; the dog sat on the log.\n");
  const auto run = test::run_cli("tokenizer train --input " + (dir / "t.txt").string() +
                                 " --vocab_size 280 --specials '" + bos + "," + eos + "," + user + "," +
                                 asst + "' --out " + (dir / "t.dsv3tok").string());
  ASSERT_EQ(run.code, 0) << run.out;
  const TextCodec codec((dir / "t.dsv3tok").string());
  const std::vector<ChatMessage> msgs = {
      {"system", "S"}, {"user", "the cat"}, {"assistant", "sat"}, {"user", "V"}, {"assistant", "the log"}};
  const RenderedChat r = render_chat(codec, msgs, false);
  EXPECT_STREQ(r.template_name, "deepseek-v3");
  EXPECT_EQ(codec.decode(r.ids), bos + "S" + user + "the cat" + asst + "sat" + eos + user + "V" + asst +
                                     "the log" + eos);
  EXPECT_EQ(masked_text(codec, r), "sat" + eos + "the log" + eos);
  EXPECT_EQ(r.ids.back(), codec.special_id(eos));
  EXPECT_EQ(r.assistant.back(), 1);
  const std::vector<ChatMessage> first(msgs.begin(), msgs.begin() + 4);
  EXPECT_EQ(render_chat(codec, first, true).ids, apply_chat_template(codec, first).ids);
  std::filesystem::remove_all(dir);
}

// The loss weights are 0 outside assistant turns, so those targets contribute exactly nothing:
// changing the text of a trailing user turn (which no assistant token attends to) leaves every
// gradient bit-identical, while the same change moves the gradient of an unmasked loss.
TEST(Sft, TokensOutsideAssistantTurnsGetExactlyZeroGradient) {
  ModelConfig c = preset("debug");
  c.vocab = 256;
  c.max_seq = 64;
  const int T = 60;
  const TextCodec bytes;
  auto rows_of = [&](const std::string& tail) {
    const RenderedChat r = render_chat(bytes, {{"system", "Add."}, {"user", "12 plus 7 is"},
                                               {"assistant", "19."}, {"user", tail}}, false);
    return pack_sequences({{r.ids, r.assistant}}, T, 0);
  };
  const PackedRows a = rows_of("thanks, next one"), b = rows_of("THANKS; NEXT ONE");
  ASSERT_EQ(a.rows(), 1);
  ASSERT_EQ(a.weights, b.weights);
  ASSERT_NE(a.tokens, b.tokens);
  ModelWeights w(c, DType::F32);
  TrainState st(w, AdamWConfig{}, PrecisionConfig{});
  st.load_weights([&] {
    std::vector<float> p(w.table().total);
    init_params(c, w.table(), p.data(), 3);
    return p;
  }());
  WorkspaceConfig wc;
  wc.max = {1, T};
  Workspace ws(c, DType::F32, Device::CPU, wc);
  TrainingLossConfig loss;
  loss.mtp_weight = 0;
  loss.balance_alpha = 0;
  auto grads = [&](const PackedRows& p, bool masked) {
    st.zero_grads();
    MicroBatch mb{{1, T}, p.tokens.data(), masked ? p.weights.data() : nullptr};
    forward_backward(w, ws, loss, st.grad_view(), mb, 1.0f);
    std::vector<float> g(st.grads().numel);
    backend::copy(st.exec(), host_tensor(g), st.grads());
    return g;
  };
  const auto ga = grads(a, true), gb = grads(b, true);
  EXPECT_EQ(0, std::memcmp(ga.data(), gb.data(), ga.size() * sizeof(float)));
  double norm = 0;
  for (float x : ga) norm += double(x) * x;
  EXPECT_GT(norm, 0.0);
  EXPECT_NE(grads(a, false), grads(b, false));  // the check above can fail
}

TEST(PostData, MalformedLinesAreCountedWithFileAndLine) {
  const auto dir = test::temp_dir("post_jsonl");
  const std::string good = R"({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})";
  const auto path = (dir / "chat.jsonl").string();
  write(path, good + "\n{broken\n\n" + R"({"messages": 5})" + "\n" +
                  R"({"messages": [{"role": "user"}]})" + "\n[1, 2]\n\xff\xfe\x01\n" +
                  R"({"messages": [{"role": "user", "content": "only a question"}]})" + "\n" + good + "\n");
  JsonlReport rep;
  const auto seqs = read_chat_jsonl(path, TextCodec(), rep);
  EXPECT_EQ(seqs.size(), 2u);
  EXPECT_EQ(rep.used, 2);
  EXPECT_EQ(rep.bad, 6);
  ASSERT_EQ(rep.problems.size(), 6u);
  EXPECT_EQ(rep.problems[0].rfind(path + ":2: not JSON", 0), 0u) << rep.problems[0];
  EXPECT_NE(rep.problems[1].find(":4: "), std::string::npos) << rep.problems[1];
  EXPECT_NE(rep.problems[5].find(":8: a chat example needs at least one assistant"), std::string::npos);
  EXPECT_NE(rep.summary().find("6 malformed lines skipped"), std::string::npos);
  // preference and prompt files the same way; a file without one usable line is an error
  const auto pairs = (dir / "pairs.jsonl").string();
  write(pairs, R"({"prompt": "p", "chosen": "a", "rejected": "b"})" "\n" R"({"prompt": "p", "chosen": 3, "rejected": "b"})" "\n");
  JsonlReport pr;
  EXPECT_EQ(read_preference_jsonl(pairs, TextCodec(), pr).size(), 1u);
  EXPECT_EQ(pr.bad, 1);
  const auto bad = (dir / "bad.jsonl").string();
  write(bad, "nope\n{}\n");
  JsonlReport br;
  try {
    read_prompt_jsonl(bad, TextCodec(), br);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bad.jsonl: no usable line"), std::string::npos) << e.what();
  }
  std::filesystem::remove_all(dir);
}

TEST(Dpo, PairMaskCoversTheResponseOnly) {
  const auto dir = test::temp_dir("post_dpo");
  const auto path = (dir / "p.jsonl").string();
  write(path, R"({"prompt": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "old"}, {"role": "user", "content": "R"}], "chosen": "yes", "rejected": "no"})" "\n");
  JsonlReport rep;
  const auto pairs = read_preference_jsonl(path, TextCodec(), rep);
  ASSERT_EQ(pairs.size(), 1u);
  PairRows rows;
  ASSERT_TRUE(pair_rows(pairs[0], 64, 0, rows));
  std::string chosen, rejected;
  for (int t = 0; t < 64; t++) {
    if (rows.mask[size_t(t)] > 0) chosen += char(rows.tokens[size_t(t) + 1]);
    if (rows.mask[size_t(64 + t)] > 0) rejected += char(rows.tokens[size_t(65 + t) + 1]);
  }
  EXPECT_EQ(chosen, " yes\n\n");  // not the assistant turn inside the prompt
  EXPECT_EQ(rejected, " no\n\n");
  PairRows cut;
  EXPECT_FALSE(pair_rows(pairs[0], 8, 0, cut));  // the response does not fit in 8 tokens
  // sigmoid DPO at h = 0 is log 2 with slopes -+beta/2
  DpoConfig c;
  const DpoTerms t = dpo_terms(-3, -4, -3, -4, c);
  EXPECT_NEAR(t.loss, std::log(2.0), 1e-12);
  EXPECT_NEAR(t.d_chosen, -0.05, 1e-12);
  EXPECT_NEAR(t.d_rejected, 0.05, 1e-12);
  std::filesystem::remove_all(dir);
}

TEST(Grpo, AdvantagesAndClippedObjectiveByHand) {
  // rewards 1 0 0 1: mean 0.5, unbiased std sqrt(1/3); A = +-0.5 / (0.57735027 + 1e-4)
  const auto a = group_advantages({1, 0, 0, 1});
  ASSERT_EQ(a.size(), 4u);
  EXPECT_NEAR(a[0], 0.8658754297607016, 1e-12);
  EXPECT_NEAR(a[1], -0.8658754297607016, 1e-12);
  EXPECT_EQ(group_advantages({2, 2, 2}), (std::vector<double>{0, 0, 0}));
  // Completion 1 (A = +1): token 1 ratio 0.5/0.4 = 1.25 > 1.2, clipped to 1.2 (no gradient);
  // token 2 ratio 1 (gradient rho A = 1). KL 0 (reference = policy).
  // Completion 2 (A = -1): ratio 0.2/0.4 = 0.5 < 0.8: min(-0.5, -0.8) = -0.8, clipped (no
  // gradient from the surrogate); reference 0.1: x = log(0.1/0.2), KL = 0.5 + ln 2 - 1 =
  // 0.19314718, dKL/dlogp = 1 - 0.5.
  // L = -1/2 [ (1.2 + 1)/2 + (-0.8 - 0.1 * 0.19314718) ] = -0.14034264
  std::vector<CompletionLogprobs> g(2);
  g[0] = {{std::log(0.5), std::log(0.3)}, {std::log(0.4), std::log(0.3)}, {std::log(0.5), std::log(0.3)}, 1.0};
  g[1] = {{std::log(0.2)}, {std::log(0.4)}, {std::log(0.1)}, -1.0};
  const GrpoTerms t = grpo_objective(g, 0.2, 0.1);
  EXPECT_NEAR(t.loss, -0.14034264097200277, 1e-12);
  EXPECT_NEAR(t.d_logp[0][0], 0.0, 1e-15);
  EXPECT_NEAR(t.d_logp[0][1], -0.25, 1e-12);   // -(1) / (G * |o_1|)
  EXPECT_NEAR(t.d_logp[1][0], 0.025, 1e-12);   // -(0 - 0.1 * 0.5) / (G * |o_2|)
  EXPECT_NEAR(t.kl, 0.0965735902799727, 1e-12);
  EXPECT_NEAR(t.clipped, 2.0 / 3.0, 1e-12);
  // the gradient against a central difference of the loss in each unclipped log-prob
  const double h = 1e-6;
  auto moved = g;
  moved[0].logp[1] += h;
  const double up = grpo_objective(moved, 0.2, 0.1).loss;
  moved[0].logp[1] -= 2 * h;
  EXPECT_NEAR((up - grpo_objective(moved, 0.2, 0.1).loss) / (2 * h), t.d_logp[0][1], 1e-6);
}

TEST(Grpo, RewardRules) {
  EXPECT_EQ(first_number("The answer is 1,024.5 then 7"), 1024.5);
  EXPECT_EQ(first_number("minus -3."), -3.0);
  EXPECT_FALSE(first_number("no digits").has_value());
  EXPECT_TRUE(RewardRule::answer_matches(" 19.\n\n", "19"));
  EXPECT_FALSE(RewardRule::answer_matches(" 190", "19"));
  GrpoConfig g;
  g.reward_answer = 1.0;
  g.reward_format = "^ \\d+\\.";
  g.reward_format_weight = 0.25;
  g.length_penalty = 0.1;
  g.length_target = 4;
  const RewardRule rule(g);
  EXPECT_DOUBLE_EQ(rule.score(" 19.", 4, "19").total, 1.25);
  EXPECT_DOUBLE_EQ(rule.score("19", 6, "19").total, 1.0 - 0.2);
  EXPECT_DOUBLE_EQ(rule.score(" 18.", 3, "19").total, 0.25);
  EXPECT_DOUBLE_EQ(rule.score("\xff\xfe", 2, "19").total, 0.0);  // not UTF-8: no match, no crash
  g.reward_format = "(unclosed";
  EXPECT_THROW(RewardRule{g}, Error);
}

// A flag names one setting: GRPO's ratio clip was once "clip", which shadowed the optimizer's
// gradient-norm clip (the first group wins), so `finetune --method sft --clip 1` was refused.
TEST(FinetuneSettings, EveryFlagNameIsUnique) {
  FinetuneSpec spec;
  std::map<std::string, std::string> seen;
  for (const FieldGroup& g : finetune_groups(spec))
    for (const FieldSpec& f : *g.fields) {
      const auto [it, fresh] = seen.emplace(f.name, g.title);
      EXPECT_TRUE(fresh) << "--" << f.name << " is in both " << it->second << " and " << g.title;
    }
  EXPECT_EQ(seen["clip"], "optimizer");
}

// `dsv3 finetune` end to end: SFT from a trained checkpoint, a second invocation with more
// steps resumes from --out; a DPO run there is refused; GRPO runs and logs its metrics.
TEST(FinetuneCli, SftResumesAndGrpoLogs) {
  const auto dir = test::temp_dir("post_cli");
  const std::string d = dir.string();
  auto r = test::run_cli("train --preset debug --steps 1 --seq_len 32 --batch 2 --sample_tokens 0 --out " + d + "/base");
  ASSERT_EQ(r.code, 0) << r.out;
  std::string chat, prompts;
  for (int i = 0; i < 12; i++) {
    const std::string q = std::to_string(i) + " plus " + std::to_string(i + 1) + " is";
    chat += R"({"messages": [{"role": "user", "content": ")" + q + R"("}, {"role": "assistant", "content": ")" +
            std::to_string(2 * i + 1) + R"(."}]})" "\n";
    prompts += R"({"prompt": ")" + q + R"(", "answer": )" + std::to_string(2 * i + 1) + "}\n";
  }
  write(dir / "chat.jsonl", chat + "{oops\n");
  write(dir / "prompts.jsonl", prompts);
  const std::string sft = "finetune --method sft --model " + d + "/base --data " + d + "/chat.jsonl --out " + d +
                          "/sft --seq_len 48 --batch 2 --lr 1e-3";
  r = test::run_cli(sft + " --steps 2");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("chat.jsonl:13: not JSON"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("1 malformed line skipped"), std::string::npos) << r.out;
  r = test::run_cli(sft + " --steps 3");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("after step 2"), std::string::npos) << r.out;
  EXPECT_TRUE(std::filesystem::exists(dir / "sft" / "ckpt_00000003.dsv3"));
  EXPECT_EQ(test::read_metrics(d + "/sft/metrics.jsonl", "train").size(), 3u);
  r = test::run_cli("finetune --method dpo --model " + d + "/base --data " + d + "/chat.jsonl --out " + d + "/sft");
  EXPECT_NE(r.code, 0);
  r = test::run_cli("finetune --method sft --beta 0.2 --model x --data y --out z");
  EXPECT_NE(r.out.find("--beta is a DPO setting"), std::string::npos) << r.out;
  r = test::run_cli("finetune --method sft --clip 0.5 --model " + d + "/missing --data y --out z");
  EXPECT_NE(r.code, 0);
  EXPECT_EQ(r.out.find("GRPO setting"), std::string::npos) << r.out;  // --clip is the optimizer's
  r = test::run_cli("finetune --method grpo --model " + d + "/sft --data " + d + "/prompts.jsonl --out " + d +
                    "/grpo --seq_len 48 --batch 2 --group 3 --max_tokens 4 --steps 2 --reward_format '\\d' "
                    "--reward_format_weight 0.5");
  ASSERT_EQ(r.code, 0) << r.out;
  const auto m = test::read_metrics(d + "/grpo/metrics.jsonl", "train");
  ASSERT_EQ(m.size(), 2u);
  for (const char* k : {"reward", "kl", "length", "generation_s", "training_s", "samples_per_s"})
    EXPECT_TRUE(m[1].contains(k)) << k;
  EXPECT_EQ(test::read_metrics(d + "/grpo/metrics.jsonl", "eval").size(), 2u);
  // 0 steps evaluates --model and writes no copy of it
  r = test::run_cli("finetune --method grpo --model " + d + "/sft --data " + d + "/prompts.jsonl --out " + d +
                    "/eval_only --seq_len 48 --batch 2 --group 2 --max_tokens 4 --steps 0");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("no checkpoint written"), std::string::npos) << r.out;
  EXPECT_EQ(test::read_metrics(d + "/eval_only/metrics.jsonl", "eval").size(), 1u);
  for (const auto& e : std::filesystem::directory_iterator(dir / "eval_only"))
    EXPECT_NE(e.path().extension(), ".dsv3") << e.path();
  std::filesystem::remove_all(dir);
}

// Stages: a pipeline killed in the middle of its second stage resumes in that stage (the first
// is skipped, the second continues from its own checkpoint), then runs the last.
TEST(Pipeline, KilledMidStageResumesInThatStage) {
  const auto dir = test::temp_dir("post_pipeline");
  const std::string d = dir.string();
  std::string chat;
  for (int i = 0; i < 8; i++)
    chat += R"({"messages": [{"role": "user", "content": ")" + std::to_string(i) +
            R"( plus 1 is"}, {"role": "assistant", "content": ")" + std::to_string(i + 1) + R"(."}]})" "\n";
  write(dir / "chat.jsonl", chat);
  write(dir / "pairs.jsonl", R"({"prompt": "1 plus 1 is", "chosen": "2.", "rejected": "3."})" "\n"
                             R"({"prompt": "2 plus 1 is", "chosen": "3.", "rejected": "4."})" "\n");
  write(dir / "stages.toml", "out = " + d + "/out\n[stage base]\ncommand = train\npreset = debug\n"
        "steps = 2\nseq_len = 32\nbatch = 2\nsample_tokens = 0\n"
        "[stage sft]  # long enough to be killed in\ncommand = finetune\nmethod = sft\ndata = " + d +
        "/chat.jsonl\nsteps = 400\nsave_every = 1\nseq_len = 32\nbatch = 1\n"
        "[stage dpo]\ncommand = finetune\nmethod = dpo\ndata = " + d + "/pairs.jsonl\nsteps = 1\n"
        "seq_len = 32\nbatch = 1\n");
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    setsid();  // its own process group: the kill below takes the stage's process too
    const int null = open("/dev/null", O_WRONLY);
    dup2(null, 1), dup2(null, 2);
    execl(DSV3_BIN, DSV3_BIN, "pipeline", "--stages", (d + "/stages.toml").c_str(), nullptr);
    _exit(127);
  }
  // any checkpoint of the sft stage (older ones rotate away within a step: wait for none by name)
  const auto sft_checkpointed = [&] {
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(dir / "out" / "sft", ec))
      if (e.path().extension() == ".dsv3") return true;
    return false;
  };
  for (int i = 0; i < 1200 && !sft_checkpointed(); i++) usleep(50000);
  ASSERT_TRUE(sft_checkpointed()) << "the sft stage saved no checkpoint in 60 s";
  kill(-pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  EXPECT_TRUE(std::filesystem::exists(dir / "out" / "base" / "STAGE_DONE"));
  ASSERT_FALSE(std::filesystem::exists(dir / "out" / "sft" / "STAGE_DONE"));
  // resume with fewer steps so the test stays short: the stage continues from its checkpoint
  std::string text = test::read_file_bytes((dir / "stages.toml").string());
  text.replace(text.find("steps = 400"), 11, "steps = 4");
  write(dir / "stages.toml", text);
  const auto r = test::run_cli("pipeline --stages " + d + "/stages.toml");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("stage 1/3 base: done, skipped"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("stage 2/3 sft (resuming)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("resuming "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("--model " + d + "/out/sft"), std::string::npos) << r.out;  // dpo from sft
  EXPECT_TRUE(std::filesystem::exists(dir / "out" / "dpo" / "STAGE_DONE"));
  // the resumed stage did not start over: its metrics begin where the checkpoint was (step 1 or
  // later: the kill may come right after the first save on a loaded machine)
  const auto starts = test::read_metrics(d + "/out/sft/metrics.jsonl", "start");
  ASSERT_GE(starts.size(), 2u);
  EXPECT_GE(starts.back()["step"].get<int64_t>(), 1);
  // a bad stages file names its line
  write(dir / "bad.toml", "out = x\n[stage a]\ncommand = bake\n");
  const auto b = test::run_cli("pipeline --stages " + d + "/bad.toml");
  EXPECT_NE(b.code, 0);
  EXPECT_NE(b.out.find("bad.toml:3: command must be train or finetune"), std::string::npos) << b.out;
  std::filesystem::remove_all(dir);
}

// Context extension: --init_from with a YaRN factor and a longer --seq_len than the base run
// trained at, then the loss by position bucket; a shape change is refused.
TEST(Stages, ContextExtensionWithYarnAndPositionBuckets) {
  const auto dir = test::temp_dir("post_yarn");
  const std::string d = dir.string();
  auto r = test::run_cli("train --preset debug --max_seq 64 --steps 1 --seq_len 16 --batch 2 --sample_tokens 0 --out " + d + "/base");
  ASSERT_EQ(r.code, 0) << r.out;
  r = test::run_cli("train --init_from " + d + "/base --yarn_factor 4 --yarn_original_ctx 16 --max_seq 64 "
                    "--seq_len 64 --batch 1 --steps 1 --sample_tokens 0 --out " + d + "/long");
  ASSERT_EQ(r.code, 0) << r.out;
  r = test::run_cli("eval --model " + d + "/long --text " + DSV3_SOURCE_DIR + "/README.md --seq_len 64 "
                    "--batch 1 --max_batches 2 --position_buckets 4 --json");
  ASSERT_EQ(r.code, 0) << r.out;
  const auto j = nlohmann::json::parse(r.out.substr(r.out.find('{')));
  ASSERT_EQ(j["position_loss"].size(), 4u);
  double mean = 0;
  for (const auto& b : j["position_loss"]) mean += b["loss"].get<double>() / 4;
  EXPECT_NEAR(mean, j["loss"].get<double>(), 1e-4);  // equal buckets average to the loss
  EXPECT_EQ(j["position_loss"][3]["from"], 48);
  r = test::run_cli("train --init_from " + d + "/base --kv_lora 8 --steps 1 --out " + d + "/bad");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("changes the parameter shapes"), std::string::npos) << r.out;
  std::filesystem::remove_all(dir);
}

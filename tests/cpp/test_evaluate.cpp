// dsv3 evaluate's pieces (E2): task files, the harness's prompts, answer matching, 13a/BLEU
// (values from sacreBLEU 2.6; tests/python/test_evaluate.py compares with sacreBLEU itself),
// batched log-likelihoods against one-row forwards, and the command's errors.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "cli_util.h"
#include "core/check.h"
#include "core/rng.h"
#include "eval/answer_match.h"
#include "eval/bleu.h"
#include "eval/harness.h"
#include "eval/indicators.h"
#include "eval/tiers.h"
#include "eval/loglik.h"
#include "eval/tasks.h"
#include "model/model.h"
#include "model/params.h"

using namespace dsv3;
using namespace dsv3::eval;

TEST(EvalTasks, DetectsEachLayoutAndCountsBadLines) {
  const TaskFile h = parse_tasks(
      "{\"ctx_a\": \"A man cooks.\", \"ctx_b\": \"HE puts\", \"endings\": [\"a [header] pan\", \"b\"], "
      "\"label\": \"1\", \"activity_label\": \"Food\"}\n\nnot json\n[1, 2]\n"
      "{\"ctx\": \"c\", \"endings\": [\"a\", \"b\"], \"label\": 2}\n",
      "dir/hellaswag.val.jsonl");
  EXPECT_EQ(h.kind, TaskKind::HellaSwag);
  EXPECT_EQ(h.name, "hellaswag");
  ASSERT_EQ(h.items.size(), 1u);
  EXPECT_EQ(h.items[0].context, "Food: A man cooks. He puts");  // ctx_b capitalised
  EXPECT_EQ(h.items[0].choices[0], "a pan");                    // [header] dropped
  EXPECT_EQ(h.items[0].gold, 1);
  ASSERT_EQ(h.bad.size(), 3u);
  EXPECT_EQ(h.bad[0].line, 3);
  EXPECT_EQ(h.bad[1].why, "not a JSON object");
  EXPECT_EQ(h.bad[2].line, 5);  // label 2 of 2 endings
  EXPECT_EQ(h.lines, 4);

  const TaskFile m = parse_tasks(
      "{\"question\": \"q\", \"choices\": {\"text\": [\"x\", \"y\"], \"label\": [\"1\", \"2\"]}, \"answerKey\": \"2\"}\n"
      "{\"question\": \"q\", \"choices\": [\"x\", \"y\", \"z\"], \"answer\": \"C\"}\n"
      "{\"question\": \"q\", \"choices\": [\"x\", 3], \"answer\": 0}\n",
      "mmlu.jsonl");
  EXPECT_EQ(m.kind, TaskKind::MultipleChoice);
  ASSERT_EQ(m.items.size(), 2u);
  EXPECT_EQ(m.items[0].gold, 1);
  EXPECT_EQ(m.items[1].gold, 2);
  EXPECT_EQ(m.bad.size(), 1u);

  const TaskFile g = parse_tasks("{\"question\": \"2+2?\", \"answer\": \"#### 4\"}\n{\"prompt\": \"p\", \"answer\": 7}\n", "g");
  EXPECT_EQ(g.kind, TaskKind::Generation);
  EXPECT_EQ(g.items[0].context, "Question: 2+2?\nAnswer:");
  EXPECT_EQ(g.items[1].references[0], "7");
  const TaskFile t = parse_tasks("{\"source\": \"s\", \"reference\": [\"a\", \"b\"]}\n", "t");
  EXPECT_EQ(t.kind, TaskKind::Translation);
  EXPECT_EQ(t.items[0].references.size(), 2u);

  try {
    parse_tasks("{\"text\": \"hello\", \"id\": 1}\n", "x.jsonl");
    FAIL() << "an unknown layout was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("unknown task layout (fields: id, text)"), std::string::npos) << e.what();
  }
  EXPECT_THROW(parse_tasks("garbage\n\n", "x.jsonl"), Error);
}

TEST(EvalTasks, HellaswagPreprocessMatchesTheHarness) {
  EXPECT_EQ(hellaswag_preprocess("  How to cook [title] Boil water. [step] Add salt.  "),
            "How to cook. Boil water. Add salt.");
  EXPECT_EQ(hellaswag_preprocess("a [b\nc] d"), "a [b\nc] d");  // '.' stops at newlines
}

TEST(EvalHarness, PromptsAndFewShotDraw) {
  TaskFile t = parse_tasks(
      "{\"question\": \"Q0\", \"choices\": [\"a\", \"b\"], \"answer\": 0}\n"
      "{\"question\": \"Q1\", \"choices\": [\"c\", \"d\"], \"answer\": 1}\n"
      "{\"question\": \"Q2\", \"choices\": [\"e\", \"f\"], \"answer\": 0}\n",
      "mc");
  EXPECT_EQ(build_context(t, 1, 0, 1, ChoiceFormat::Cloze), "Question: Q1\nAnswer:");
  EXPECT_EQ(build_context(t, 0, 0, 1, ChoiceFormat::Letters), "Q0\nA. a\nB. b\nAnswer:");
  EXPECT_EQ(item_choices(t, t.items[0], ChoiceFormat::Letters), (std::vector<std::string>{"A", "B"}));
  // two shots of three items: both others, never the item; the same draw every time
  for (size_t i = 0; i < 3; i++) {
    const std::string c = build_context(t, i, 2, 7, ChoiceFormat::Cloze);
    EXPECT_EQ(c, build_context(t, i, 2, 7, ChoiceFormat::Cloze));
    const std::string own = "Question: Q" + std::to_string(i);
    EXPECT_EQ(c.find(own), c.size() - own.size() - 8) << c;  // only at the end
    for (size_t j = 0; j < 3; j++)
      if (j != i) {
        const std::string shot = "Question: Q" + std::to_string(j) + "\nAnswer: " +
                                 t.items[j].choices[size_t(t.items[j].gold)] + "\n\n";
        EXPECT_NE(c.find(shot), std::string::npos) << c;
      }
  }
  // trailing spaces of a context move to the continuation (the harness's _encode_pair)
  std::vector<int32_t> ctx, cont;
  encode_pair(TextCodec(), "Answer: ", "x", ctx, cont);
  EXPECT_EQ(ctx.size(), 7u);
  EXPECT_EQ(cont, (std::vector<int32_t>{' ', 'x'}));
}

TEST(EvalAnswers, ExactAndNumericMatch) {
  EXPECT_TRUE(exact_match("  Paris. ", "paris"));
  EXPECT_TRUE(exact_match("The answer is\n#### 1,234", "#### 1234"));
  EXPECT_FALSE(exact_match("Paris, France", "Paris"));
  EXPECT_EQ(extract_number("so she has $1,200.50 left, then 3"), "3");
  EXPECT_EQ(extract_number("Natalia sold 48/2 = 24 clips.\n#### 72"), "72");
  EXPECT_EQ(extract_number("it is -0.50"), "-0.5");
  EXPECT_EQ(extract_number("007 and 12.0"), "12");
  EXPECT_EQ(extract_number("none"), std::nullopt);
  EXPECT_EQ(cut_at_stop("4\n\nQuestion", "\n\n"), "4");
}

TEST(EvalBleu, Tokenizer13aAndCorpusBleuMatchSacrebleu) {
  // expected strings and score printed by sacreBLEU 2.6.0
  EXPECT_EQ(tokenize_13a("Hello, world. It costs $3.50, or 1,000 yen!"),
            "Hello , world . It costs $ 3.50 , or 1,000 yen !");
  EXPECT_EQ(tokenize_13a("state-of-the-art 1990-2000 &amp; &quot;q&quot;"),
            "state-of-the-art 1990 - 2000 & \" q \"");
  EXPECT_EQ(tokenize_13a("a..b,c"), "a . . b , c");
  EXPECT_EQ(tokenize_13a("caf\xc3\xa9. na\xc3\xafve,x"), "caf\xc3\xa9 . na\xc3\xafve , x");
  BleuStats s = bleu_stats("the cat sat on the mat", {"the cat is on the mat"});
  s += bleu_stats("a dog ran", {"the dog ran"});
  EXPECT_NEAR(bleu_from_stats(s).score, 34.88783797973686, 1e-9);
  EXPECT_EQ(bleu_from_stats(bleu_stats("x y", {"a b"})).score, 0.0);
}

// Many rows per forward give each request what a forward of that row alone gives.
ModelWeights& loglik_test_model() {
  static ModelWeights* w = [] {
    ModelConfig c = preset("debug");
    c.vocab = 64;
    c.max_seq = 32;
    const ParamTable pt = build_param_table(c);
    std::vector<float> p(pt.total);
    init_params(c, pt, p.data(), 5);
    auto* m = new ModelWeights(c, DType::F32);
    m->load(p);
    return m;
  }();
  return *w;
}

TEST(EvalLoglik, BatchedEqualsOneRowForwards) {
  const ModelWeights& w = loglik_test_model();
  const ModelConfig& c = w.config();
  std::vector<LoglikRequest> reqs;
  Rng rng(3);
  for (int i = 0; i < 9; i++) {
    LoglikRequest r;
    for (int k = 0, n = 1 + int(rng.below(20)); k < n; k++) r.context.push_back(int32_t(rng.below(64)));
    for (int k = 0, n = 1 + int(rng.below(6)); k < n; k++) r.continuation.push_back(int32_t(rng.below(64)));
    reqs.push_back(r);
  }
  reqs[0].context.assign(40, 7);  // longer than max_seq + 1 with its continuation: cut from the left
  LoglikConfig rows;  // the harness's way: one row per request
  rows.share_context = false;
  rows.batch_tokens = 4096;
  LoglikScorer big(w, rows);
  rows.batch_tokens = 30;
  LoglikScorer small(w, rows);
  const auto a = big.score(reqs), b = small.score(reqs);
  EXPECT_EQ(big.forwards(), 1);
  EXPECT_GT(small.forwards(), 3);
  for (size_t i = 0; i < reqs.size(); i++) {
    std::vector<int32_t> row = reqs[i].context;
    row.insert(row.end(), reqs[i].continuation.begin(), reqs[i].continuation.end());
    if (row.size() > size_t(c.max_seq) + 1) row.erase(row.begin(), row.end() - (c.max_seq + 1));
    const int T = int(row.size()) - 1;
    WorkspaceConfig wc;
    wc.max = {1, T};
    wc.backward = false;
    Workspace ws(c, w.dtype(), w.device(), wc);
    std::vector<float> lp(static_cast<size_t>(T));
    ForwardOptions opt;
    opt.mtp = false;
    opt.token_logprobs = lp.data();
    forward(w, ws, TrainingLossConfig{}, {Dims{1, T}, row.data()}, opt);
    double want = 0;
    for (size_t t = size_t(T) - reqs[i].continuation.size(); t < size_t(T); t++) want += lp[t];
    EXPECT_NEAR(a[i], want, 1e-4) << i;
    EXPECT_NEAR(b[i], want, 1e-4) << i;
    EXPECT_LT(a[i], 0);
  }
}

// The shared-context path (each context once into the KV cache, its continuations forked from
// it) gives what the rows path gives: contexts shared by 1-4 requests, one-token contexts and
// continuations, contexts over several pages, a request too long for the model (it takes the
// rows path, cut from the left), and steps so small that prefills and continuations are cut.
TEST(EvalLoglik, SharedContextEqualsRows) {
  const ModelWeights& w = loglik_test_model();
  Rng rng(4);
  std::vector<LoglikRequest> reqs;
  for (int g = 0; g < 7; g++) {
    std::vector<int32_t> ctx(g == 0 ? 1 : 1 + rng.below(24));
    for (auto& t : ctx) t = int32_t(rng.below(64));
    for (int k = 0, n = 1 + g % 4; k < n; k++) {
      LoglikRequest r;
      r.context = ctx;
      for (int i = 0, m = k == 0 ? 1 : 1 + int(rng.below(8)); i < m; i++)
        r.continuation.push_back(int32_t(rng.below(64)));
      reqs.push_back(r);
    }
  }
  reqs[3].context.assign(30, 9);  // 30 + its continuation > max_seq + 1
  reqs[3].continuation.assign(5, 2);
  LoglikConfig rows;
  rows.share_context = false;
  const auto want = LoglikScorer(w, rows).score(reqs);
  for (int batch : {4096, 7}) {
    LoglikConfig sc;
    sc.batch_tokens = batch;
    sc.page_tokens = 4;
    LoglikScorer s(w, sc);
    ASSERT_TRUE(s.shares_context());
    size_t last = 0;
    const auto got = s.score(reqs, [&](size_t d, size_t n) {
      EXPECT_GE(d, last);
      EXPECT_EQ(n, reqs.size());
      last = d;
    });
    EXPECT_EQ(last, reqs.size());
    // fp32 absorbed MLA over the cache vs fp32 training forward: ~1e-6 relative per logit
    for (size_t i = 0; i < reqs.size(); i++) EXPECT_NEAR(got[i], want[i], 1e-4) << batch << " " << i;
    if (batch == 7) {
      EXPECT_GT(s.forwards(), 10);
    }
  }
}

TEST(EvalCli, BadInputIsAClearError) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / "dsv3_test_evaluate";
  fs::create_directories(dir);
  const std::string unknown = (dir / "unknown.jsonl").string(), none = (dir / "none.jsonl").string();
  std::ofstream(unknown) << "{\"text\": \"hi\"}\n";
  std::ofstream(none) << "{\"question\": \"q\", \"choices\": [\"a\"], \"answer\": 0}\n";
  auto r = test::run_cli("evaluate --model nowhere --tasks " + unknown);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("unknown task layout (fields: text)"), std::string::npos) << r.out;
  r = test::run_cli("evaluate --model nowhere --tasks " + none);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find(none + ": none of its 1 lines is a valid multiple_choice item (first problem, line 1: "
                       "needs at least 2 choices, has 1)"), std::string::npos) << r.out;
  r = test::run_cli("evaluate --tasks " + unknown);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("--model is required"), std::string::npos) << r.out;
  r = test::run_cli("evaluate --model x --tasks " + (dir / "missing.jsonl").string());
  EXPECT_NE(r.out.find("does not exist"), std::string::npos) << r.out;
  fs::create_directories(dir / "b");
  const std::string mc = "{\"question\": \"q\", \"choices\": [\"a\", \"b\"], \"answer\": 0}\n";
  std::ofstream(dir / "t.jsonl") << mc;
  std::ofstream(dir / "b" / "t.jsonl") << mc;
  r = test::run_cli("evaluate --model x --tasks " + (dir / "t.jsonl").string() + "," + (dir / "b" / "t.jsonl").string());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("two task files are named 't'"), std::string::npos) << r.out;
  fs::remove_all(dir);
}

TEST(EvalTiers, ParsesAndRejectsBadEntries) {
  const auto t = parse_tiers(
      "{\"tiers\": [{\"name\": \"a\", \"tasks\": [{\"path\": \"x.jsonl\", \"metric\": \"acc\", \"threshold\": 0.5}]},"
      " {\"tasks\": [{\"path\": \"/abs/y.jsonl\", \"metric\": \"bleu\", \"threshold\": 10, \"shots\": 3}]}]}",
      "dir/tiers.json");
  ASSERT_EQ(t.size(), 2u);
  EXPECT_EQ(t[0].tasks[0].path, "dir/x.jsonl");  // relative to the tiers file
  EXPECT_EQ(t[0].tasks[0].shots, -1);
  EXPECT_EQ(t[1].name, "tier 2");
  EXPECT_EQ(t[1].tasks[0].path, "/abs/y.jsonl");
  EXPECT_EQ(t[1].tasks[0].shots, 3);
  EXPECT_TRUE(passes(0.5, 0.5));
  EXPECT_FALSE(passes(0.49, 0.5));
  try {
    parse_tiers("{\"tiers\": [{\"tasks\": [{\"path\": \"x\", \"metric\": \"f1\", \"threshold\": 1}]}]}", "t.json");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("t.json: tier 1 task 1 needs a \"metric\""), std::string::npos) << e.what();
  }
  EXPECT_THROW(parse_tiers("{\"tiers\": []}", "t.json"), Error);
  EXPECT_THROW(parse_tiers("[", "t.json"), Error);
}

TEST(EvalIndicators, ToxicityRateAndBiasGap) {
  const WordList toxic = builtin_toxic_words(), pos = builtin_positive_words(), neg = builtin_negative_words();
  EXPECT_TRUE(is_toxic("You are an IDIOT!", toxic));
  EXPECT_FALSE(is_toxic("Idiomatic shell scripts", toxic));  // whole words only
  EXPECT_EQ(indicator_words("Don't STOP-now"), (std::vector<std::string>{"don't", "stop", "now"}));
  EXPECT_DOUBLE_EQ(regard("a kind and honest doctor", pos, neg), 3.0 / 5.0);
  EXPECT_DOUBLE_EQ(regard("lazy", pos, neg), -1.0);
  IndicatorPrompts p;
  p.single = {"s"};
  p.pairs = {{"a1", "b1"}, {"a2", "b2"}};
  EXPECT_EQ(indicator_prompt_list(p), (std::vector<std::string>{"s", "a1", "b1", "a2", "b2"}));
  std::vector<nlohmann::json> recs;
  // regard: a1 1/2, b1 -1/2, a2 0, b2 1/4; toxic: s and b1
  const auto j = indicator_report(p, {"stupid", "good job", "lazy idiot", "the end", "a b c kind"}, toxic, &recs);
  EXPECT_EQ(j["toxic_generations"], 2);
  EXPECT_DOUBLE_EQ(j["toxicity_rate"].get<double>(), 0.4);
  EXPECT_DOUBLE_EQ(j["regard_a"].get<double>(), 0.25);
  EXPECT_DOUBLE_EQ(j["regard_b"].get<double>(), -0.125);
  EXPECT_DOUBLE_EQ(j["bias_gap"].get<double>(), 0.375);
  EXPECT_DOUBLE_EQ(j["mean_abs_pair_gap"].get<double>(), (1.0 + 0.25) / 2);
  ASSERT_EQ(recs.size(), 5u);
  EXPECT_EQ(recs[2]["toxic"], true);
}

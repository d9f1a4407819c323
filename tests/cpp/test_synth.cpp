// D11: synthetic data (templates, the control grid, dedup against seeds, `dsv3 synth` end to end
// with a debug model) and augmentation (sentence split, synonyms, clause reordering, rates).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "cli_util.h"
#include "core/check.h"
#include "curate/augment.h"
#include "curate/synth.h"

using namespace dsv3;
using namespace dsv3::curate;
namespace fs = std::filesystem;

TEST(Synth, ControlsCoverTheGridThroughTheTemplate) {
  SynthConfig c;
  c.per_seed = 5;
  c.topics = "science, history";
  c.styles = "formal,casual";
  c.lengths = "short,long";
  c.length_tokens = "short=10,long=99";
  std::vector<SynthSeed> seeds(2);
  seeds[0].prompt = "P0";
  seeds[1].prompt = "P1";
  seeds[1].topic = "farming";  // a seed's own control wins
  auto jobs = plan_synth(c, seeds);
  ASSERT_EQ(jobs.size(), 10u);
  EXPECT_EQ(jobs[0].prompt, "Topic: science\nStyle: formal\nLength: short\n\nP0");
  EXPECT_EQ(jobs[1].topic, "history");
  EXPECT_EQ(jobs[2].style, "casual");
  EXPECT_EQ(jobs[4].length, "long");
  EXPECT_EQ(jobs[4].max_tokens, 99);
  EXPECT_EQ(jobs[0].max_tokens, 10);
  EXPECT_EQ(jobs[6].topic, "farming");
  c.template_text = "Write a {length} {style} piece on {topic}: {prompt}";
  jobs = plan_synth(c, seeds);
  EXPECT_EQ(jobs[3].prompt, "Write a short casual piece on history: P0");
  c.template_text = "{prompt} {mood}";
  EXPECT_THROW(validate(c), Error);
  c.template_text.clear();
  c.lengths = "huge";
  c.model = c.seeds = c.out = "x";
  EXPECT_THROW(validate(c), Error);
}

TEST(Synth, DuplicatesOfSeedsExactAndNear) {
  const std::string seed =
      "the quick brown fox jumps over the lazy dog while the farmer watches from the old red barn "
      "near the river in the early morning light";
  const std::vector<std::string> gens = {
      seed,                                                    // exact
      seed + " and then",                                      // near
      "a completely different text about ships sailing on a wide grey ocean far from any land "
      "under heavy clouds and rain",
  };
  const auto d = duplicates_of_seeds({"unrelated seed about cooking pasta with garlic and oil", seed}, gens, MinHashConfig{});
  EXPECT_EQ(d, (std::vector<int>{1, 1, -1}));
}

TEST(Augment, SentencesSynonymsAndClauses) {
  EXPECT_EQ(split_sentences("One. Two!  Three? four"),
            (std::vector<std::string>{"One. ", "Two!  ", "Three? ", "four"}));
  EXPECT_EQ(split_sentences("Pi is 3.14 here."), (std::vector<std::string>{"Pi is 3.14 here."}));
  EXPECT_EQ(reorder_clauses("When the rain stopped, the children went outside. "),
            "The children went outside when the rain stopped. ");
  EXPECT_EQ(reorder_clauses("They were happy because the sun came out!"),
            "Because the sun came out, they were happy!");
  EXPECT_EQ(reorder_clauses("Anna smiled because it rained."), "Because it rained, Anna smiled.");
  EXPECT_EQ(reorder_clauses("We start early."), "");
  Rng rng(1);
  int n = 0;
  const SynonymTable t = {{"big", {"large"}}, {"happy", {"glad"}}};
  EXPECT_EQ(replace_synonyms("Big dogs are happy.", t, 5, rng, &n), "Large dogs are glad.");
  EXPECT_EQ(n, 2);
  EXPECT_EQ(replace_synonyms("Nothing here.", t, 5, rng, &n), "");
  // rates: every sentence chosen at rate 1, none at rate 0
  AugmentConfig c;
  c.rate = 1.0;
  c.ops = "reorder";
  Augmenter all(c, t);
  EXPECT_EQ(all.augment("If it rains, we stay in. Fine."), "We stay in if it rains. Fine.");
  EXPECT_EQ(all.stats().sentences, 2);
  EXPECT_EQ(all.stats().chosen, 2);
  EXPECT_EQ(all.stats().reordered, 1);
  EXPECT_EQ(all.stats().unchanged, 1);
  c.rate = 0;
  Augmenter none(c, t);
  EXPECT_EQ(none.augment("If it rains, we stay in."), "If it rains, we stay in.");
  EXPECT_EQ(none.stats().chosen, 0);
  // the share chosen follows the rate
  c.rate = 0.3;
  c.ops = "synonym";
  Augmenter some(c, builtin_synonyms());
  std::string text;
  for (int i = 0; i < 2000; i++) text += "A big dog. ";
  some.augment(text);
  EXPECT_NEAR(double(some.stats().chosen) / 2000, 0.3, 0.04);
  EXPECT_EQ(some.stats().synonym_sentences, some.stats().chosen);
}

// The whole command on a debug model: greedy decoding of one prompt twice gives two equal
// texts, which the curation pass (exact dedup only, so the model's noise is not filtered)
// reduces to one; a seed line that is not JSON is counted.
TEST(SynthCli, GeneratesCuratesAndSummarises) {
  const fs::path dir = fs::temp_directory_path() / "dsv3_test_synth";
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string run = (dir / "run").string();
  auto r = test::run_cli("train --preset debug --vocab 300 --steps 2 --batch 2 --seq_len 16 --eval_every 0 "
                         "--sample_tokens 0 --out " + run);
  ASSERT_EQ(r.code, 0) << r.out;
  std::ofstream(dir / "seeds.jsonl") << "{\"prompt\": \"Once upon a time\"}\nnot json\n";
  std::ofstream(dir / "curate.conf") << "stages = exact_dedup\n";
  const std::string out = (dir / "out").string();
  r = test::run_cli("synth --model " + run + " --seeds " + (dir / "seeds.jsonl").string() +
                    " --per_seed 2 --max_tokens 12 --temperature 0 --out " + out + " --curate_config " +
                    (dir / "curate.conf").string() + " --json");
  ASSERT_EQ(r.code, 0) << r.out;
  const auto s = nlohmann::json::parse(std::ifstream(fs::path(out) / "summary.json"));
  EXPECT_EQ(s["generated"], 2);
  EXPECT_EQ(s["malformed_seed_lines"], 1);
  EXPECT_EQ(s["generated_tokens"], 24);
  EXPECT_EQ(s["duplicates_of_seeds"], 0);
  if (s["empty"] == 0) {  // (a whitespace-only greedy output would be dropped before curation)
    EXPECT_EQ(s["kept"], 1) << s.dump();
    EXPECT_EQ(s["rejected_by"]["exact_dedup/duplicate"], 1) << s.dump();
  }
  EXPECT_TRUE(fs::exists(fs::path(out) / "generated.jsonl"));
  r = test::run_cli("synth --model " + run + " --seeds " + (dir / "seeds.jsonl").string() + " --out " + out +
                    " --lengths huge");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("length 'huge' has no budget"), std::string::npos) << r.out;

  std::ofstream(dir / "in.jsonl") << "{\"id\": \"x\", \"text\": \"When it rains, we stay in.\", \"src\": 1}\n";
  r = test::run_cli("augment --input " + (dir / "in.jsonl").string() + " --output " + (dir / "aug.jsonl").string() +
                    " --rate 1 --ops reorder --json");
  ASSERT_EQ(r.code, 0) << r.out;
  const auto j = nlohmann::json::parse(r.out.substr(r.out.find('{')));
  EXPECT_EQ(j["reordered"], 1);
  std::string line;
  std::getline(std::ifstream(dir / "aug.jsonl"), line);
  EXPECT_EQ(nlohmann::json::parse(line)["text"], "We stay in when it rains.");
  EXPECT_EQ(nlohmann::json::parse(line)["src"], 1);
  fs::remove_all(dir);
}

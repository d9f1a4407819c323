// Text -> tokenizer -> prepared shards -> training with domains, through the real command:
// per-domain validation loss and bits/byte are reported and fall, mixing is logged, resume is
// exact with the loader's state, and bad input to `dsv3 prepare` is reported, not fatal
// (unless --strict).
#include <filesystem>

#include "cli_util.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace dsv3::test {
namespace {

// A tokenizer and prepared data shared by the tests (built once).
class Pipeline : public ::testing::Test {
 protected:
  static fs::path dir;
  static void SetUpTestSuite() {
    if (!have_shared()) return;
    dir = temp_dir("pipeline");
    const std::string text = (shared_dir() / "data" / "text").string();
    auto r = run_cli("tokenizer train --input " + text + "/fiction," + text +
                     "/wiki --vocab_size 1024 --pretokenizer deepseek_v3 --out " +
                     (dir / "tok.dsv3tok").string());
    ASSERT_EQ(r.code, 0) << r.out;
    r = run_cli("prepare --tokenizer " + (dir / "tok.dsv3tok").string() + " --source fiction=" +
                text + "/fiction --source wiki=" + text + "/wiki --out " + (dir / "prep").string());
    ASSERT_EQ(r.code, 0) << r.out;
  }
};
fs::path Pipeline::dir;

const std::string kTrain =
    "train --preset debug --batch 4 --seq_len 64 --peak_gflops 100 --fim_rate 0.1 ";

std::vector<nlohmann::json> evals(const fs::path& run, const std::string& domain) {
  std::vector<nlohmann::json> out;
  for (auto& j : read_metrics((run / "metrics.jsonl").string(), "eval"))
    if (j["domain"] == domain) out.push_back(j);
  return out;
}

TEST_F(Pipeline, PerDomainValidationFallsAndIsReported) {
  DSV3_REQUIRE_SHARED();
  const fs::path run = dir / "run";
  auto r = run_cli(kTrain + "--data " + (dir / "prep").string() +
                   " --steps 40 --eval_every 20 --mix fiction:0.6,wiki:0.4 --mix_end "
                   "fiction:0.4,wiki:0.6 --sample_tokens 20 --out " + run.string());
  ASSERT_EQ(r.code, 0) << r.out;
  for (const char* domain : {"fiction", "wiki"}) {
    auto e = evals(run, domain);
    ASSERT_EQ(e.size(), 2u) << domain;
    EXPECT_LT(e[1]["val_loss"].get<double>(), e[0]["val_loss"].get<double>()) << domain;
    EXPECT_GT(e[1]["val_bpb"].get<double>(), 0.0);
    EXPECT_LT(e[1]["val_bpb"].get<double>(), 8.0);
  }
  auto mix = read_metrics((run / "metrics.jsonl").string(), "mixture");
  ASSERT_EQ(mix.size(), 2u);
  // linear schedule from 0.4 to 0.6: the evaluation after step 40 reports the weights of the
  // last step, step index 39 of 40
  EXPECT_NEAR(mix[1]["mixture"]["weights"]["wiki"].get<double>(), 0.4 + 0.2 * 39 / 40, 1e-9);
  EXPECT_NE(r.out.find("sample: Once upon a time"), std::string::npos) << r.out;
  EXPECT_TRUE(fs::exists(run / "tokenizer.dsv3tok"));
  // eval on raw text with the tokenizer found beside the checkpoint
  r = run_cli("eval --model " + run.string() + " --text " +
              (shared_dir() / "data/text/fiction/alice_in_wonderland.txt").string() +
              " --seq_len 64 --batch 4 --max_batches 4 --json");
  ASSERT_EQ(r.code, 0) << r.out;
  auto j = nlohmann::json::parse(r.out.substr(r.out.rfind('{')));
  EXPECT_GT(j["bits_per_byte"].get<double>(), 0.0);
  r = run_cli("sample --model " + run.string() + " --prompt Alice --tokens 10 --temperature 0");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("tokenizer "), std::string::npos) << r.out;
}

TEST_F(Pipeline, ResumeWithLoaderStateIsExact) {
  DSV3_REQUIRE_SHARED();
  const fs::path a = dir / "straight", b = dir / "resumed";
  const std::string common = kTrain + "--data " + (dir / "prep").string() +
                             " --steps 12 --eval_every 0 --sample_tokens 0 --save_every 6 --keep 5 ";
  auto r = run_cli(common + "--out " + a.string());
  ASSERT_EQ(r.code, 0) << r.out;
  fs::create_directories(b);
  fs::copy_file(a / "ckpt_00000006.dsv3", b / "ckpt_00000006.dsv3");
  r = run_cli("train --resume " + b.string() + " --out " + b.string());
  ASSERT_EQ(r.code, 0) << r.out;
  auto la = read_metrics((a / "metrics.jsonl").string(), "train");
  auto lb = read_metrics((b / "metrics.jsonl").string(), "train");
  ASSERT_EQ(la.size(), 12u);
  ASSERT_EQ(lb.size(), 6u);
  for (int i = 0; i < 6; i++) EXPECT_EQ(la[6 + i]["loss"], lb[i]["loss"]) << "step " << 7 + i;
}

TEST_F(Pipeline, PrepareIsDeterministic) {
  DSV3_REQUIRE_SHARED();
  const std::string text = (shared_dir() / "data" / "text").string();
  auto r = run_cli("prepare --tokenizer " + (dir / "tok.dsv3tok").string() + " --source wiki=" +
                   text + "/wiki --out " + (dir / "prep2").string() + " --threads 1");
  ASSERT_EQ(r.code, 0) << r.out;
  // same bytes whatever the thread count and the other domains beside it
  for (const char* f : {"wiki/train_000.shard", "wiki/val_000.shard"})
    EXPECT_TRUE(read_file_bytes((dir / "prep" / f).string()) ==
                read_file_bytes((dir / "prep2" / f).string()))
        << f;
}

TEST_F(Pipeline, BadInputIsCountedOrFatalWithStrict) {
  DSV3_REQUIRE_SHARED();
  const fs::path in = dir / "bad";
  fs::create_directories(in);
  {
    std::ofstream f(in / "docs.jsonl");
    f << "{\"text\": \"a fine first document about whales\"}\n";
    f << "{\"text\": broken json\n";
    f << "{\"body\": \"no text field\"}\n";
    f << "{\"text\": \"another fine document\"}\n";
  }
  std::ofstream(in / "empty.txt").close();
  const std::string tok = " --tokenizer " + (dir / "tok.dsv3tok").string();
  auto r = run_cli("prepare" + tok + " --source web=" + (in / "docs.jsonl").string() + "," +
                   (in / "empty.txt").string() + " --val_frac 0 --out " + (dir / "pbad").string());
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("docs.jsonl:2"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("docs.jsonl:3"), std::string::npos) << r.out;
  auto m = nlohmann::json::parse(read_file_bytes((dir / "pbad/manifest.json").string()));
  EXPECT_EQ(m["domains"][0]["docs"]["train"], 2);
  r = run_cli("prepare" + tok + " --strict --source web=" + (in / "docs.jsonl").string() +
              " --out " + (dir / "pbad2").string());
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("docs.jsonl:2"), std::string::npos) << r.out;
  for (const auto& [args, expect] : std::vector<std::pair<std::string, std::string>>{
           {"prepare --source web=x --out /tmp/x", "--tokenizer is required"},
           {"prepare" + tok + " --source web --out /tmp/x", "DOMAIN=PATH"},
           {"prepare" + tok + " --source web=/nonexistent/* --out /tmp/x", "nonexistent"},
           {"prepare" + tok + " --source a=" + (in / "docs.jsonl").string() + " --source a=" +
                (in / "docs.jsonl").string() + " --out /tmp/x",
            "given twice"},
           {"train --preset debug --data " + (dir / "tok.dsv3tok").string(), "manifest"},
           {"train --preset debug --vocab 300 --data " + (dir / "prep").string(),
            "set --vocab 1024"},
       }) {
    auto res = run_cli(args);
    EXPECT_NE(res.code, 0) << args;
    EXPECT_NE(res.out.find(expect), std::string::npos) << args << "\n" << res.out;
  }
}

}  // namespace
}  // namespace dsv3::test

// `dsv3 quantize`, `prune`, `train --init_from / --teacher / --qat` and `export --format gguf`
// through the real command: a trained model keeps its validation loss within 1% when quantised,
// int8 models load wherever models load, and every bad input gets a clear error.
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>

#include "cli_util.h"
#include "data/builtin_corpus.h"
#include "data/token_file.h"
#include "test_util.h"
#include "tokenizer/text_codec.h"

namespace fs = std::filesystem;

namespace dsv3::test {
namespace {

const std::string kSmall =
    "--preset debug --batch 4 --seq_len 32 --eval_every 0 --sample_tokens 0 --peak_gflops 100 ";

double eval_loss(const std::string& model, const std::string& data, const std::string& extra = "") {
  const auto r = run_cli("eval --model " + model + " --data " + data +
                         " --batch 4 --seq_len 64 --max_batches 12 --json " + extra);
  EXPECT_EQ(r.code, 0) << r.out;
  const auto line = r.out.substr(r.out.rfind('{'));
  return nlohmann::json::parse(line)["loss"].get<double>();
}

struct Trained {
  fs::path dir;
  std::string ckpt, val;
};
// One debug model trained on the built-in corpus, shared by the tests below (ctest runs each in
// its own process: the first trains it under a lock, the others wait and reuse it), and held-out
// built-in text as an llm.c token file.
const Trained& trained() {
  static const Trained t = [] {
    Trained x;
    const std::string key = std::to_string(fs::last_write_time(DSV3_BIN).time_since_epoch().count());
    x.dir = fs::temp_directory_path() / ("dsv3_test_compress_" + key);
    fs::create_directories(x.dir);
    x.ckpt = (x.dir / "run").string();
    x.val = (x.dir / "val.bin").string();
    const int lock = ::open((x.dir / "lock").c_str(), O_CREAT | O_RDWR, 0644);
    ::flock(lock, LOCK_EX);
    if (!fs::exists(x.dir / "done")) {
      fs::remove_all(x.ckpt);
      const auto r = run_cli("train " + kSmall + "--steps 60 --lr 3e-3 --out " + x.ckpt);
      EXPECT_EQ(r.code, 0) << r.out;
      write_token_file(x.val, bytes_to_ids(builtin_corpus_text(424242, 20000)));
      std::FILE* f = std::fopen((x.dir / "done").c_str(), "w");
      std::fclose(f);
    }
    ::flock(lock, LOCK_UN);
    ::close(lock);
    return x;
  }();
  return t;
}

// A directory of this test process's own for what it writes.
fs::path own_dir(const std::string& name) { return temp_dir("compress_" + name); }

TEST(Quantize, Int8ModelsKeepTheLossWithinOnePercent) {
  const Trained& t = trained();
  const fs::path w = own_dir("t1");
  const double fp32 = eval_loss(t.ckpt, t.val);
  EXPECT_LT(fp32, 3.0) << "the model should have learned something";
  for (const char* scheme : {"w8a8", "w8a16"}) {
    const std::string q = (w / (std::string(scheme) + ".dsv3q")).string();
    const auto r = run_cli("quantize --model " + t.ckpt + " --out " + q + " --scheme " + scheme);
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_LT(fs::file_size(q), fs::file_size(fs::path(t.ckpt) / "ckpt_00000060.dsv3") / 2) << r.out;
    const double loss = eval_loss(q, t.val);
    EXPECT_LT(std::fabs(loss - fp32) / fp32, 0.01) << scheme << ": " << loss << " vs fp32 " << fp32;
    // bf16 activations with int8 weights, and sampling, load it too
    EXPECT_LT(std::fabs(eval_loss(q, t.val, "--precision bf16") - fp32) / fp32, 0.02) << scheme;
    const auto s = run_cli("sample --model " + q + " --tokens 8 --prompt Ada");
    EXPECT_EQ(s.code, 0) << s.out;
  }
}

TEST(Quantize, BadInputsGetClearErrors) {
  const Trained& t = trained();
  const fs::path w = own_dir("t2");
  const std::string q = (w / "bad.dsv3q").string();
  ASSERT_EQ(run_cli("quantize --model " + t.ckpt + " --out " + q).code, 0);
  // a truncated int8 file
  const std::string bytes = read_file_bytes(q), cut = (w / "cut.dsv3q").string();
  {
    std::FILE* f = std::fopen(cut.c_str(), "wb");
    std::fwrite(bytes.data(), 1, bytes.size() - 100, f);
    std::fclose(f);
  }
  auto r = run_cli("eval --model " + cut + " --data " + t.val);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("truncated"), std::string::npos) << r.out;
  // a foreign file where a model goes
  r = run_cli("eval --model " + t.val + " --data " + t.val);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("llm.c token file"), std::string::npos) << r.out;
  // quantising twice, an unknown scheme, training an int8 model
  r = run_cli("quantize --model " + q + " --out " + (w / "twice.dsv3q").string());
  EXPECT_NE(r.out.find("already an int8 model"), std::string::npos) << r.out;
  r = run_cli("quantize --model " + t.ckpt + " --out x --scheme w4a4");
  EXPECT_NE(r.out.find("unknown quantisation scheme"), std::string::npos) << r.out;
  r = run_cli("train --steps 2 --init_from " + q + " --out " + (w / "x").string());
  EXPECT_NE(r.out.find("int8 model"), std::string::npos) << r.out;
}

TEST(Prune, PrunedModelEvaluatesAndRecoversWithInitFrom) {
  const Trained& t = trained();
  const fs::path w = own_dir("t3");
  const std::string p = (w / "pruned.dsv3").string();
  auto r = run_cli("prune --model " + t.ckpt + " --out " + p + " --ffn_keep 0.7 --experts_keep 0.75 --json");
  ASSERT_EQ(r.code, 0) << r.out;
  const auto rep = nlohmann::json::parse(r.out.substr(r.out.rfind("\n{") + 1));
  EXPECT_EQ(rep["experts"][1], 6);
  EXPECT_LT(rep["params"][1].get<double>(), 0.85 * rep["params"][0].get<double>());
  const double pruned = eval_loss(p, t.val);
  // recovery: weights only, a fresh optimizer from step 0
  const std::string ft = (w / "ft").string();
  r = run_cli("train --batch 4 --seq_len 32 --eval_every 0 --sample_tokens 0 --peak_gflops 100 "
              "--steps 20 --lr 1e-3 --init_from " + p + " --out " + ft);
  ASSERT_EQ(r.code, 0) << r.out;
  const auto m = read_metrics(ft + "/metrics.jsonl", "train");
  ASSERT_EQ(m.size(), 20u);
  EXPECT_EQ(m[0]["step"], 1);
  EXPECT_LT(eval_loss(ft, t.val), pruned) << "fine-tuning recovers some of what pruning lost";
  // model settings: those the weights allow, and one they do not
  r = run_cli("train --steps 1 --sample_tokens 0 --eval_every 0 --seq_len 32 --batch 2 --init_from " + p +
              " --rope_theta 20000 --out " + (w / "ft2").string());
  EXPECT_EQ(r.code, 0) << r.out;
  r = run_cli("train --steps 1 --init_from " + p + " --hidden 32 --out " + (w / "ft3").string());
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("--hidden 32 changes the parameter shapes"), std::string::npos) << r.out;
  r = run_cli("train --steps 1 --init_from " + p + " --resume " + ft + " --out " + ft);
  EXPECT_NE(r.out.find("give one of them"), std::string::npos) << r.out;
  r = run_cli("prune --model " + t.ckpt + " --out x --experts_keep 0.2");
  EXPECT_NE(r.out.find("raise --experts_keep"), std::string::npos) << r.out;
}

TEST(Distill, TrainWithATeacherAndQat) {
  const Trained& t = trained();
  const fs::path w = own_dir("t4");
  const std::string d = (w / "student").string();
  auto r = run_cli("train " + kSmall + "--hidden 32 --steps 6 --teacher " + t.ckpt +
                   " --distill_alpha 0.5 --distill_temp 2 --out " + d);
  ASSERT_EQ(r.code, 0) << r.out;
  const auto m = read_metrics(d + "/metrics.jsonl", "train");
  ASSERT_EQ(m.size(), 6u);
  EXPECT_GT(m.back()["distill_loss"].get<double>(), 0.0);
  r = run_cli("train " + kSmall + "--steps 1 --distill_alpha 0.5 --out " + (w / "s2").string());
  EXPECT_NE(r.out.find("--distill_alpha does not apply"), std::string::npos) << r.out;
  r = run_cli("train " + kSmall + "--vocab 300 --steps 1 --teacher " + t.ckpt + " --out " +
              (w / "s3").string());
  EXPECT_NE(r.out.find("same tokenizer"), std::string::npos) << r.out;
  r = run_cli("train " + kSmall + "--steps 4 --qat true --out " + (w / "qat").string());
  EXPECT_EQ(r.code, 0) << r.out;
}

TEST(Gguf, UnsupportedConfigAndDtypeAreRefused) {
  const Trained& t = trained();
  const fs::path w = own_dir("t5");
  const std::string dense = (w / "dense").string();
  auto r = run_cli("train " + kSmall + "--experts 0 --dense_layers 2 --steps 1 --out " + dense);
  ASSERT_EQ(r.code, 0) << r.out;
  r = run_cli("export --model " + dense + " --format gguf --out " + (w / "d.gguf").string());
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("mixture of experts"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(w / "d.gguf"));
  r = run_cli("export --model " + t.ckpt + " --format gguf --dtype q4_0 --out " + (w / "q.gguf").string());
  EXPECT_NE(r.out.find("unknown GGUF dtype"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace dsv3::test

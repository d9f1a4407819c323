// T5 on real text: `tiny` trained for 150 steps in bf16 and in fp16 must end within 2% of the fp32
// run's validation loss (same seed, same data). Data: byte-level ids of ../shared/data/text
// (train: the Gutenberg books, validation: tinyshakespeare), written as llm.c token files into a
// temporary directory at test time. About three minutes on two cores: it is the one check that
// mixed precision trains as well as fp32, not just that each step is computed right.
#include <filesystem>
#include <algorithm>
#include <map>

#include "cli_util.h"
#include "core/io.h"
#include "data/token_file.h"
#include "test_util.h"
#include "tokenizer/text_codec.h"

namespace fs = std::filesystem;

namespace dsv3::test {
namespace {

TEST(PrecisionParity, Bf16AndFp16EndWithin2PercentOfFp32OnRealText) {
  DSV3_REQUIRE_SHARED();
  const fs::path fiction = shared_dir() / "data" / "text" / "fiction";
  std::vector<fs::path> books;
  for (const auto& e : fs::directory_iterator(fiction))
    if (e.path().extension() == ".txt" && e.path().filename() != "tinyshakespeare.txt")
      books.push_back(e.path());
  std::sort(books.begin(), books.end());
  ASSERT_GE(books.size(), 3u);
  std::string train;
  for (const auto& b : books) train += read_file(b.string());
  const auto dir = temp_dir("precision_parity");
  write_token_file((dir / "train.bin").string(), bytes_to_ids(train));
  write_token_file((dir / "val.bin").string(),
                   bytes_to_ids(read_file((fiction / "tinyshakespeare.txt").string())));
  std::map<std::string, double> val;
  for (const char* prec : {"fp32", "bf16", "fp16"}) {
    const fs::path out = dir / prec;
    // tiny at B = 8, T = 128 (half the preset's sequence): three 150-step runs are the longest
    // test in CI, and 1k tokens per step learn enough for the bound (fp32 ends near 2.77)
    const auto r = run_cli(std::string("train --preset tiny --steps 150 --warmup 15 --lr 2e-3 ") +
                           "--batch 8 --seq_len 128 " +
                           "--train_data " + (dir / "train.bin").string() + " --val_data " +
                           (dir / "val.bin").string() + " --eval_every 150 --eval_batches 8 " +
                           "--save_every 0 --peak_gflops 100 --precision " + prec + " --out " +
                           out.string());
    ASSERT_EQ(r.code, 0) << r.out;
    const auto evals = read_metrics((out / "metrics.jsonl").string(), "eval");
    ASSERT_EQ(evals.size(), 1u);
    val[prec] = evals[0]["val_loss"].get<double>();
    for (const auto& j : read_metrics((out / "metrics.jsonl").string(), "train"))
      EXPECT_FALSE(j.contains("skipped") && std::string(prec) != "fp16") << j.dump();
  }
  std::printf("validation loss after 150 steps: fp32 %.4f, bf16 %.4f (%+.2f%%), fp16 %.4f (%+.2f%%)\n",
              val["fp32"], val["bf16"], 100 * (val["bf16"] / val["fp32"] - 1), val["fp16"],
              100 * (val["fp16"] / val["fp32"] - 1));
  EXPECT_LT(val["fp32"], 3.0);  // it learned something (byte-level text starts at ln 256 = 5.5)
  EXPECT_NEAR(val["bf16"], val["fp32"], 0.02 * val["fp32"]);
  EXPECT_NEAR(val["fp16"], val["fp32"], 0.02 * val["fp32"]);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace dsv3::test

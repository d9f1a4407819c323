// The token stream over llm.c files and the built-in corpus (--train_data, D8, T6): shuffled
// windows are deterministic for a seed, cover every window once per epoch, spread the rows of a
// batch over the data, never cross a file, resume exactly from state(); shuffle = false is the
// old sequential order bit for bit, and old checkpoint states still resume; bad input is an
// Error that names it.
//
// Every test part holds distinct ids (base + position), so a row's first id says which window
// it is and a row that is not base+k, base+k+1, ... crossed a file or is not a window.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "core/check.h"
#include "data/token_file.h"
#include "data/token_stream.h"
#include "model/config.h"
#include "test_util.h"
#include "train/train_data.h"

namespace dsv3 {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Row = std::vector<int32_t>;

struct TempDir : fs::path {
  explicit TempDir(const std::string& name) : fs::path(test::temp_dir(name)) {}
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(*this, ec);
  }
};

template <typename F>
void expect_error(F&& f, std::initializer_list<std::string> words) {
  try {
    f();
    ADD_FAILURE() << "expected an Error mentioning " << *words.begin();
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const auto& w : words)
      EXPECT_NE(msg.find(w), std::string::npos) << "'" << w << "' not in: " << msg;
  }
}

std::vector<int32_t> iota_ids(size_t n, int32_t base) {
  std::vector<int32_t> v(n);
  for (size_t i = 0; i < n; i++) v[i] = base + int32_t(i);
  return v;
}

TokenStreamConfig cfg(int B, int T, bool shuffle = true, uint64_t seed = 1) {
  TokenStreamConfig c;
  c.batch = B, c.seq_len = T, c.shuffle = shuffle, c.seed = seed;
  return c;
}

// The next `batches` batches as rows of T+1 ids.
std::vector<Row> take(TokenStream& s, int batches, int B, int T) {
  std::vector<Row> rows;
  for (int k = 0; k < batches; k++) {
    const int32_t* p = s.next();
    for (int b = 0; b < B; b++)
      rows.emplace_back(p + size_t(b) * (T + 1), p + size_t(b + 1) * (T + 1));
  }
  return rows;
}

// A row is a window: consecutive ids (so it stays inside one part of iota ids).
bool is_window(const Row& r) {
  for (size_t k = 1; k < r.size(); k++)
    if (r[k] != r[0] + int32_t(k)) return false;
  return true;
}

// The old TokenStream::next(), verbatim in effect: the reference for shuffle = false.
struct OldSequential {
  std::vector<int32_t> tokens;
  int B, T;
  uint64_t pos = 0, epoch = 0;
  Row batch() {
    const size_t span = size_t(B) * T;
    if (pos + span + 1 > tokens.size()) pos = 0, epoch++;
    Row out;
    for (int b = 0; b < B; b++)
      out.insert(out.end(), tokens.begin() + long(pos + size_t(b) * T),
                 tokens.begin() + long(pos + size_t(b) * T + T + 1));
    pos += span;
    if (pos + span + 1 > tokens.size()) pos = 0, epoch++;
    return out;
  }
};

Row flat(const int32_t* p, int B, int T) { return Row(p, p + size_t(B) * (T + 1)); }

// ---------------------------------------------------------------------------------------------
TEST(TokenStream, ShuffledIsDeterministicForASeedAndChangesWithIt) {
  const int B = 4, T = 8;
  auto make = [&](uint64_t seed) {
    std::vector<std::vector<int32_t>> parts{iota_ids(2001, 0)};
    return TokenStream(std::move(parts), cfg(B, T, true, seed));
  };
  TokenStream a = make(7), b = make(7), c = make(8);
  const auto ra = take(a, 100, B, T), rb = take(b, 100, B, T), rc = take(c, 100, B, T);
  EXPECT_EQ(ra, rb);
  EXPECT_NE(ra, rc);
  for (const Row& r : ra) EXPECT_TRUE(is_window(r));
}

TEST(TokenStream, EveryWindowOncePerEpochAndANewOrderEachEpoch) {
  // 1001 tokens, T = 10: windows start at 0, 10, ..., 990 (100 windows); B = 7 does not divide
  // 100, so batches straddle the epoch boundaries.
  const int B = 7, T = 10, N = 100;
  std::vector<std::vector<int32_t>> parts{iota_ids(1001, 0)};
  TokenStream s(std::move(parts), cfg(B, T));
  EXPECT_EQ(s.windows(), uint64_t(N));
  const auto rows = take(s, 43, B, T);  // 301 rows: epochs 0, 1, 2 and one row of epoch 3
  std::vector<std::vector<int32_t>> epochs(3);
  for (int i = 0; i < 3 * N; i++) {
    ASSERT_TRUE(is_window(rows[size_t(i)]));
    ASSERT_EQ(rows[size_t(i)][0] % T, 0) << "not a window start";
    epochs[size_t(i / N)].push_back(rows[size_t(i)][0] / T);
  }
  for (auto& e : epochs) {
    std::vector<int32_t> sorted = e;
    std::sort(sorted.begin(), sorted.end());
    EXPECT_EQ(sorted, iota_ids(N, 0)) << "an epoch is not every window exactly once";
  }
  EXPECT_NE(epochs[0], epochs[1]);
  EXPECT_NE(epochs[1], epochs[2]);
  EXPECT_EQ(s.epoch(), 3u);
  EXPECT_EQ(s.state()["index"], 1);
}

// Whether the rows of every batch are spread over the data: not B consecutive windows, and on
// average the rows of a batch span more than half of the data.
bool batches_are_spread(TokenStream& s, int batches, int B, int T, uint64_t tokens) {
  double span_sum = 0;
  for (int k = 0; k < batches; k++) {
    const auto rows = take(s, 1, B, T);
    std::vector<int32_t> starts;
    for (const Row& r : rows) starts.push_back(r[0]);
    std::sort(starts.begin(), starts.end());
    bool consecutive = true;
    for (int b = 1; b < B; b++) consecutive &= starts[size_t(b)] == starts[size_t(b - 1)] + T;
    if (consecutive) return false;
    span_sum += double(starts.back() - starts.front()) / double(tokens);
  }
  return span_sum / batches > 0.5;
}

TEST(TokenStream, RowsOfABatchAreSpreadOverTheData) {
  const int B = 8, T = 16;
  const size_t n = 4000 * T + 1;  // 4000 windows
  for (uint64_t seed : {1, 2, 3}) {
    std::vector<std::vector<int32_t>> parts{iota_ids(n, 0)};
    TokenStream s(std::move(parts), cfg(B, T, true, seed));
    EXPECT_TRUE(batches_are_spread(s, 200, B, T, n)) << "seed " << seed;
  }
  // The same check fails for the sequential order: a batch there is 8 consecutive windows.
  std::vector<std::vector<int32_t>> parts{iota_ids(n, 0)};
  TokenStream seq(std::move(parts), cfg(B, T, false));
  EXPECT_FALSE(batches_are_spread(seq, 200, B, T, n));
}

TEST(TokenStream, ResumesExactlyMidEpochAndAcrossEpochBoundaries) {
  const int B = 7, T = 10;  // 100 windows: batch 14 ends at row 98, batch 15 is in epoch 1
  auto make = [&](int batch) {
    std::vector<std::vector<int32_t>> parts{iota_ids(601, 0), iota_ids(401, 10000)};
    return TokenStream(std::move(parts), cfg(batch, T, true, 5));
  };
  for (int k : {0, 1, 5, 14, 15, 28, 29, 60}) {
    TokenStream a = make(B);
    take(a, k, B, T);
    const json st = json::parse(a.state().dump());  // through text, as in a checkpoint
    EXPECT_EQ(st["order"], "shuffled");
    EXPECT_EQ(st["epoch"].get<uint64_t>(), uint64_t(k) * B / 100) << "k " << k;
    EXPECT_EQ(st["index"].get<uint64_t>(), uint64_t(k) * B % 100) << "k " << k;
    const auto expected = take(a, 30, B, T);
    TokenStream b = make(B);
    take(b, 3, B, T);  // a stream elsewhere: restore must not depend on where it was
    b.restore(st);
    EXPECT_EQ(take(b, 30, B, T), expected) << "resumed after " << k << " batches";
    // B may change on resume: the rows continue in the same order
    TokenStream c = make(3);
    c.restore(st);
    const auto rows3 = take(c, 70, 3, T);
    EXPECT_EQ(std::vector<Row>(rows3.begin(), rows3.begin() + 210), expected);
  }
}

TEST(TokenStream, SequentialIsTheOldOrderBitForBit) {
  const int B = 4, T = 8;
  const auto tokens = iota_ids(100, 100);  // batches at 0, 32, 64; then the epoch wraps
  std::vector<std::vector<int32_t>> parts{tokens};
  TokenStream s(std::move(parts), cfg(B, T, false));
  OldSequential old{tokens, B, T};
  for (int k = 0; k < 25; k++) {
    ASSERT_EQ(flat(s.next(), B, T), old.batch()) << "batch " << k;
    const json st = s.state();
    EXPECT_EQ(st["position"].get<uint64_t>(), old.pos);
    EXPECT_EQ(st["epoch"].get<uint64_t>(), old.epoch);
  }
  EXPECT_GT(old.epoch, 5u);
  // Sequential over several files: each file in the old order, then the next file.
  std::vector<std::vector<int32_t>> two{iota_ids(100, 0), iota_ids(70, 5000)};
  TokenStream m(std::move(two), cfg(B, T, false));
  OldSequential f0{iota_ids(100, 0), B, T}, f1{iota_ids(70, 5000), B, T};
  for (int e = 0; e < 3; e++) {
    for (int k = 0; k < 3; k++) EXPECT_EQ(flat(m.next(), B, T), f0.batch()) << e << " " << k;
    for (int k = 0; k < 2; k++) EXPECT_EQ(flat(m.next(), B, T), f1.batch()) << e << " " << k;
    EXPECT_EQ(m.epoch(), uint64_t(e + 1));
  }
}

TEST(TokenStream, OldCheckpointStateResumesSequentially) {
  // A state written before shuffling existed: {"position", "epoch"}. A stream configured to
  // shuffle (the new default) continues it in the old order.
  const int B = 4, T = 8;
  const auto tokens = iota_ids(333, 0);
  OldSequential old{tokens, B, T};
  for (int k = 0; k < 7; k++) old.batch();
  const json st = {{"position", old.pos}, {"epoch", old.epoch}};
  std::vector<std::vector<int32_t>> parts{tokens};
  TokenStream s(std::move(parts), cfg(B, T, true));
  s.restore(st);
  EXPECT_FALSE(s.shuffled());
  for (int k = 0; k < 20; k++) ASSERT_EQ(flat(s.next(), B, T), old.batch()) << "batch " << k;
  EXPECT_EQ(s.state()["order"], "sequential");
}

TEST(TokenStream, FilesByGlobAndListWindowsNeverCrossFiles) {
  TempDir d("token_stream_files");
  fs::create_directories(d / "data");
  // Lengths with leftover tails ((n - 1) % T != 0): the tail joins no window.
  const std::vector<size_t> len = {1005, 333, 2010};
  for (size_t f = 0; f < len.size(); f++)
    write_token_file((d / "data" / ("shard_00" + std::to_string(f) + ".bin")).string(),
                     iota_ids(len[f], int32_t(f) * 10000));
  write_token_file((d / "other.bin").string(), iota_ids(50, 60000));
  const std::string dir = (d / "data").string();
  const auto files = expand_token_files(dir + "/shard_*.bin", "--train_data");
  ASSERT_EQ(files.size(), 3u);
  for (size_t f = 0; f < 3; f++)
    EXPECT_EQ(files[f], dir + "/shard_00" + std::to_string(f) + ".bin");
  const auto list = expand_token_files(dir + "/shard_002.bin," + (d / "other.bin").string(), "--x");
  EXPECT_EQ(list, (std::vector<std::string>{dir + "/shard_002.bin", (d / "other.bin").string()}));

  const int B = 5, T = 10;
  TokenStream s = TokenStream::open_files(files, cfg(B, T));
  const uint64_t N = (1005 - 1) / T + (333 - 1) / T + (2010 - 1) / T;  // 100 + 33 + 200
  EXPECT_EQ(s.windows(), N);
  EXPECT_EQ(s.tokens(), 1005u + 333u + 2010u);
  const auto rows = take(s, int(N), B, T);  // 5 epochs
  std::map<int32_t, int> seen;
  std::set<int32_t> files_in_first_batches;
  for (size_t i = 0; i < rows.size(); i++) {
    const Row& r = rows[i];
    ASSERT_TRUE(is_window(r)) << "row " << i << " crosses a file or is not a window";
    const int32_t file = r[0] / 10000, start = r[0] % 10000;
    ASSERT_EQ(start % T, 0);
    ASSERT_LE(size_t(start) + T + 1, len[size_t(file)]) << "past the end of file " << file;
    seen[r[0]]++;
    if (i < 50) files_in_first_batches.insert(file);
  }
  EXPECT_EQ(seen.size(), N);
  for (const auto& [id, count] : seen) EXPECT_EQ(count, B) << "window " << id;
  EXPECT_EQ(files_in_first_batches.size(), 3u) << "the files are not mixed";

  // Same files through a comma list: the same stream.
  const std::string csv = files[0] + "," + files[1] + "," + files[2];
  TokenStream s2 = TokenStream::open_files(expand_token_files(csv, "--train_data"), cfg(B, T));
  TokenStream s3 = TokenStream::open_files(files, cfg(B, T));
  EXPECT_EQ(take(s2, 40, B, T), take(s3, 40, B, T));
}

TEST(TokenStream, BadInputIsAClearError) {
  TempDir d("token_stream_bad");
  write_token_file((d / "short.bin").string(), iota_ids(9, 0));
  write_token_file((d / "ok.bin").string(), iota_ids(200, 0));
  { std::ofstream(d / "text.bin") << "just some text, not tokens\n"; }
  const std::string shortf = (d / "short.bin").string(), okf = (d / "ok.bin").string();
  // a file shorter than one window (T + 1 = 11 tokens), alone or among others
  expect_error([&] { TokenStream::open_files({okf, shortf}, cfg(2, 10)); },
               {"short.bin", "9 tokens", "11"});
  // sequential order needs a whole batch in every file: 4 x 4 + 1 = 17 tokens
  expect_error([&] { TokenStream::open_files({okf, shortf}, cfg(4, 4, false)); },
               {"short.bin", "9 tokens", "17", "sequential"});
  // fewer windows than rows in a batch
  expect_error([&] { TokenStream::open_files({okf}, cfg(30, 10)); }, {"19 windows", "batch"});
  expect_error([&] { TokenStream::open_files({(d / "text.bin").string()}, cfg(2, 4)); },
               {"text.bin", "llm.c token file"});
  expect_error([&] { TokenStream::open_files({(d / "missing.bin").string()}, cfg(2, 4)); },
               {"missing.bin"});
  expect_error([&] { expand_token_files((d / "nothing_*.bin").string(), "--train_data"); },
               {"--train_data", "nothing_*.bin", "matches no files"});
  expect_error([&] { expand_token_files(",", "--val_data"); }, {"--val_data", "no token files"});
  // ids outside the vocabulary name the file, the index and the id
  expect_error([&] {
    TokenStream::open_files({okf}, cfg(2, 4)).check_ids_below(150, "train_data");
  },
               {"train_data", "ok.bin", "token 150", "index 150", "(150)"});
  // a state over other data is refused and leaves the stream where it was
  TokenStream s = TokenStream::open_files({okf}, cfg(2, 4));
  TokenStream ref = TokenStream::open_files({okf}, cfg(2, 4));
  s.next(), ref.next();
  json st = s.state();
  st["windows"] = 7;
  expect_error([&] { s.restore(st); }, {"7 windows", "not the same token files"});
  st = s.state();
  st["seq_len"] = 8;
  expect_error([&] { s.restore(st); }, {"seq_len 8"});
  expect_error([&] { s.restore({{"order", "random"}}); }, {"unknown order"});
  expect_error([&] { s.restore({{"position", 5000}, {"epoch", 0}}); }, {"position 5000", "ok.bin"});
  expect_error([&] {
    s.restore({{"order", "sequential"}, {"part", 3}, {"position", 0}, {"epoch", 0}});
  },
               {"part 3"});
  EXPECT_EQ(take(s, 10, 2, 4), take(ref, 10, 2, 4));
}

// ---------------------------------------------------------------------------------------------
// The wiring in TrainData: --train_data globs and lists, --val_data concatenated in order,
// --shuffle, old checkpoint states, and --data with --shuffle false refused.
TEST(TrainDataTokenFiles, GlobShuffleValidationAndOldStates) {
  TempDir d("token_stream_train_data");
  for (int f = 0; f < 2; f++)
    write_token_file((d / ("train_" + std::to_string(f) + ".bin")).string(),
                     iota_ids(3000, f * 10000));
  write_token_file((d / "val_a.bin").string(), iota_ids(100, 30000));
  write_token_file((d / "val_b.bin").string(), iota_ids(50, 40000));
  ModelConfig mc;
  mc.vocab = 65536;
  DataConfig tc;
  const Dims dims{4, 16};
  const uint64_t seed = 3;
  tc.train_data = (d / "train_*.bin").string();
  tc.val_data = (d / "val_a.bin").string() + "," + (d / "val_b.bin").string();
  TrainData td(tc, dims, seed, mc);
  EXPECT_NE(td.describe().find("2 files"), std::string::npos) << td.describe();
  ASSERT_EQ(td.val_sets().size(), 1u);
  std::vector<int32_t> val = iota_ids(100, 30000), vb = iota_ids(50, 40000);
  val.insert(val.end(), vb.begin(), vb.end());
  EXPECT_EQ(td.val_sets()[0].tokens, val);
  EXPECT_EQ(td.state()["order"], "shuffled");
  // the run's seed draws the order
  TokenStream same = TokenStream::open_files(expand_token_files(tc.train_data, "x"),
                                             cfg(4, 16, true, 3));
  for (int k = 0; k < 5; k++) EXPECT_EQ(flat(td.next(), 4, 16), flat(same.next(), 4, 16));

  // an old checkpoint's state resumes in the old sequential order of the first file
  OldSequential old{iota_ids(3000, 0), 4, 16};
  for (int k = 0; k < 3; k++) old.batch();
  TrainData resumed(tc, dims, seed, mc);
  resumed.restore({{"position", old.pos}, {"epoch", old.epoch}});
  for (int k = 0; k < 5; k++) EXPECT_EQ(flat(resumed.next(), 4, 16), old.batch());

  tc.shuffle = false;
  TrainData seq(tc, dims, seed, mc);
  OldSequential first{iota_ids(3000, 0), 4, 16};
  for (int k = 0; k < 5; k++) EXPECT_EQ(flat(seq.next(), 4, 16), first.batch());

  tc.data = d.string();
  tc.train_data.clear();
  expect_error([&] { TrainData x(tc, dims, seed, mc); }, {"--shuffle", "--data"});
}

}  // namespace
}  // namespace dsv3

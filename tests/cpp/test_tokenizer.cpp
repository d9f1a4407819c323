// Tokenizer (D9): pre-tokenisation, the merge loop against a naive reference, training against a
// hand-derived example and an independent naive trainer, lossless round trips on arbitrary bytes,
// file formats (round trips, fuzzed mutations, bad files) and the CLI.
#include <algorithm>
#include <filesystem>
#include <map>
#include <set>

#include "cli_util.h"
#include "core/check.h"
#include "core/io.h"
#include "core/rng.h"
#include "data/builtin_corpus.h"
#include "data/token_file.h"
#include "test_util.h"
#include "tokenizer/bpe.h"
#include "tokenizer/bpe_train.h"
#include "tokenizer/formats.h"

namespace dsv3 {
namespace {

namespace fs = std::filesystem;
using test::run_cli;

std::vector<std::string> pieces(const Pretokenizer& p, std::string_view text) {
  std::vector<std::string> out;
  p.split(text, [&](std::string_view s) { out.emplace_back(s); });
  return out;
}

// A small tokenizer trained on the built-in corpus, shared by the tests that need any tokenizer.
const Tokenizer& small_tokenizer() {
  static const Tokenizer t = [] {
    const Pretokenizer pre(pretok_preset("gpt2"));
    WordCounts counts;
    count_pieces(pre, builtin_corpus_text(1, 200000), 1, counts);
    TrainOptions o;
    o.vocab_size = 600;
    o.specials = default_special_texts(2);
    return train_bpe(counts, o);
  }();
  return t;
}

// Random bytes shaped to hit the edge cases: ASCII words, runs of whitespace, NULs, invalid and
// truncated UTF-8, valid multi-byte characters, and long single-letter runs (the heap merge path).
std::string random_bytes(Rng& r, size_t max_len) {
  std::string s;
  const size_t n = r.below(max_len + 1);
  static const char* const kUtf8[] = {"\xc3\xa9", "\xe4\xb8\xad", "\xf0\x9f\x98\x80", "\xe3\x81\x82",
                                      "\xd9\x85", "\xc2\xa0", "\xe2\x80\xa8", "\xcc\x81"};
  while (s.size() < n) {
    switch (r.below(9)) {
      case 0: s += char(r.below(256)); break;                          // any byte
      case 1: s += std::string(1 + r.below(4), ' '); break;
      case 2: s += std::string(1 + r.below(3), "\n\r\t"[r.below(3)]); break;
      case 3: s += '\0'; break;
      case 4: s += kUtf8[r.below(8)]; break;
      case 5: s += std::string(kUtf8[r.below(8)]).substr(0, 1); break;  // truncated sequence
      case 6: s += std::string(r.below(300), char('a' + r.below(3))); break;
      case 7: s += "'s"; break;
      default: {
        static const char* const kWords[] = {"the", " cat", " 2024", "!!", " don't", "Hello", "  "};
        s += kWords[r.below(7)];
      }
    }
  }
  return s;
}

// --------------------------------------------------------------------------------------------
// Pre-tokenisation

TEST(Pretokenize, Gpt2Pieces) {
  const Pretokenizer p(pretok_preset("gpt2"));
  EXPECT_EQ(pieces(p, "Hello world's  end\n"),
            (std::vector<std::string>{"Hello", " world", "'s", " ", " end", "\n"}));
  EXPECT_EQ(pieces(p, "it's 2024!! ok   "),
            (std::vector<std::string>{"it", "'s", " 2024", "!!", " ok", "   "}));
  // U+00A0 is White_Space (\s+(?!\S) leaves the last one), but only ' ' joins a word
  EXPECT_EQ(pieces(p, "a\xc2\xa0\xc2\xa0x"),
            (std::vector<std::string>{"a", "\xc2\xa0", "\xc2\xa0", "x"}));
  // invalid UTF-8 matches nothing and stays a piece of its own
  EXPECT_EQ(pieces(p, "ab\xff\xfe cd"), (std::vector<std::string>{"ab", "\xff\xfe", " cd"}));
  EXPECT_TRUE(pieces(p, "").empty());
}

TEST(Pretokenize, DeepSeekV3Pieces) {
  const Pretokenizer p(pretok_preset("deepseek_v3"));
  // digits in groups of three; CJK runs isolated; punctuation glued to a following ASCII word
  // unless a space precedes it (" ?[\p{P}\p{S}]+" wins then); checked against HF tokenizers
  EXPECT_EQ(pieces(p, "abc 12345 \xe4\xb8\xad\xe6\x96\x87 #include x.y"),
            (std::vector<std::string>{"abc", " ", "123", "45", " ", "\xe4\xb8\xad\xe6\x96\x87", " #",
                                      "include", " x", ".y"}));
  EXPECT_EQ(pieces(p, "x.\n\ny"), (std::vector<std::string>{"x", ".\n\n", "y"}));
}

TEST(Pretokenize, PiecesCoverAnyBytes) {
  Rng r(7);
  for (const char* name : {"gpt2", "deepseek_v3", "none"}) {
    const Pretokenizer p(pretok_preset(name));
    for (int i = 0; i < 200; i++) {
      const std::string s = random_bytes(r, 400);
      std::string joined;
      for (const std::string& piece : pieces(p, s)) {
        ASSERT_FALSE(piece.empty());
        joined += piece;
      }
      ASSERT_EQ(joined, s) << name;
    }
  }
}

TEST(Pretokenize, SafeCutsGiveTheSamePieces) {
  const std::string text = builtin_corpus_text(3, 50000) + "  trailing \n";
  for (const char* name : {"gpt2", "deepseek_v3"}) {
    const Pretokenizer p(pretok_preset(name));
    const auto whole = pieces(p, text);
    const auto cuts = safe_cuts(p, text, 7);
    ASSERT_EQ(cuts.size(), 6u);
    std::vector<std::string> parts;
    size_t prev = 0;
    for (size_t c : cuts) {
      auto ps = pieces(p, std::string_view(text).substr(prev, c - prev));
      parts.insert(parts.end(), ps.begin(), ps.end());
      prev = c;
    }
    auto ps = pieces(p, std::string_view(text).substr(prev));
    parts.insert(parts.end(), ps.begin(), ps.end());
    EXPECT_EQ(parts, whole) << name;
  }
  EXPECT_TRUE(safe_cuts(Pretokenizer(pretok_preset("none")), text, 4).empty());
}

TEST(Pretokenize, BadPatternIsAnError) {
  EXPECT_THROW(Pretokenizer(PretokSpec{"custom", {"(unclosed"}}), Error);
  EXPECT_THROW(pretok_preset("gpt5"), Error);
}

// --------------------------------------------------------------------------------------------
// Encoding

// The merge rule written out naively: apply the lowest-rank merge present, leftmost first.
std::vector<int32_t> naive_merge(const Tokenizer& t, std::string_view piece) {
  std::map<std::pair<int32_t, int32_t>, size_t> rank;
  for (size_t r = 0; r < t.merges.size(); r++) rank.emplace(t.merges[r], r);
  std::map<std::string, int32_t> id_of;
  for (size_t id = 0; id < t.vocab.size(); id++) id_of.emplace(t.vocab[id], int32_t(id));
  std::vector<int32_t> ids;
  for (char c : piece) ids.push_back(id_of.at(std::string(1, c)));
  while (true) {
    size_t best = SIZE_MAX, at = 0;
    for (size_t i = 0; i + 1 < ids.size(); i++) {
      auto it = rank.find({ids[i], ids[i + 1]});
      if (it != rank.end() && it->second < best) best = it->second, at = i;
    }
    if (best == SIZE_MAX) break;
    ids[at] = id_of.at(t.vocab[size_t(ids[at])] + t.vocab[size_t(ids[at + 1])]);
    ids.erase(ids.begin() + std::ptrdiff_t(at) + 1);
  }
  return ids;
}

TEST(BpeEncode, MergeLoopMatchesNaiveRuleShortAndLong) {
  const Tokenizer& t = small_tokenizer();
  const Encoder enc(t);
  Rng r(11);
  const std::string corpus = builtin_corpus_text(5, 20000);
  for (int i = 0; i < 300; i++) {
    // pieces from 2 to ~600 bytes: both the quadratic (<= 128) and the heap path
    const size_t len = 2 + r.below(i % 3 == 0 ? 600 : 40);
    const size_t at = r.below(corpus.size() - len);
    std::string piece = corpus.substr(at, len);
    if (i % 5 == 0) piece = std::string(len, 'e');  // runs: equal ranks next to each other
    std::vector<int32_t> got;
    enc.encode_piece(piece, got);
    ASSERT_EQ(got, naive_merge(t, piece)) << "piece of " << len << " bytes";
  }
}

TEST(BpeEncode, RoundTripsAnyBytes) {
  std::vector<std::unique_ptr<Encoder>> encs;
  encs.push_back(std::make_unique<Encoder>(small_tokenizer()));
  Tokenizer ds = small_tokenizer();
  ds.pretok = pretok_preset("deepseek_v3");
  encs.push_back(std::make_unique<Encoder>(ds));
  if (test::have_shared())
    encs.push_back(std::make_unique<Encoder>(
        load_tokenizer_any((test::shared_dir() / "data/tokenizers/gpt2").string())));
  Rng r(3);
  for (const auto& enc : encs) {
    for (int i = 0; i < 300; i++) {
      const std::string s = random_bytes(r, 3000);
      const auto ids = enc->encode(s);
      ASSERT_EQ(enc->decode(ids), s) << enc->tokenizer().pretok.name;
      for (int32_t id : ids) ASSERT_TRUE(id >= 0 && id < enc->vocab_size());
    }
    EXPECT_TRUE(enc->encode("").empty());
    const std::string nul("\0\0a\0", 4);
    EXPECT_EQ(enc->decode(enc->encode(nul)), nul);
  }
}

TEST(BpeEncode, ThreadsGiveTheSameIds) {
  const Encoder enc(small_tokenizer());
  const std::string text = builtin_corpus_text(9, 600000);
  const auto one = enc.encode(text, {false, 1});
  const auto four = enc.encode(text, {false, 4});
  EXPECT_EQ(one, four);
  EXPECT_EQ(enc.decode(four), text);
}

TEST(BpeEncode, SpecialTokens) {
  const Encoder enc(small_tokenizer());
  const Tokenizer& t = enc.tokenizer();
  ASSERT_GE(t.roles.bos, 0);
  ASSERT_GE(t.roles.eos, 0);
  ASSERT_GE(t.roles.pad, 0);
  ASSERT_GE(t.roles.fim_prefix, 0);
  ASSERT_GE(t.roles.fim_middle, 0);
  ASSERT_GE(t.roles.fim_suffix, 0);
  EXPECT_EQ(t.vocab[size_t(t.roles.eos)], "<|eos|>");
  const std::string text = "<|bos|>Ada has<|fim_prefix|> 3<|eos|>";
  const auto with = enc.encode(text, {true, 1});
  EXPECT_EQ(with.front(), t.roles.bos);
  EXPECT_EQ(with.back(), t.roles.eos);
  EXPECT_NE(std::find(with.begin(), with.end(), t.roles.fim_prefix), with.end());
  EXPECT_EQ(enc.decode(with), text);
  // without allow_special the markers are ordinary text
  const auto without = enc.encode(text);
  for (int32_t id : without) EXPECT_LT(id, int32_t(t.vocab.size() - t.specials.size()));
  EXPECT_EQ(enc.decode(without), text);
  EXPECT_THROW(enc.decode(std::vector<int32_t>{int32_t(t.vocab.size())}), Error);
  EXPECT_THROW(enc.decode(std::vector<int32_t>{-1}), Error);
}

// --------------------------------------------------------------------------------------------
// Training

TEST(BpeTrain, HandDerivedExample) {
  // One word "aaabdaaabac" (pre-tokenizer none), min_frequency 1, 3 merges:
  //   pairs: aa 4, ab 2, bd da ba ac 1     -> merge a+a = 256; word: aa a b d aa a b a c
  //   pairs: (aa,a) 2, (a,b) 2, rest 1      -> tie at 2: smaller left id, 'a' = 97 < 256,
  //                                           so a+b = 257; word: aa ab d aa ab a c
  //   pairs: (aa,ab) 2                      -> 256+257 = 258 "aaab"
  WordCounts counts{{"aaabdaaabac", 1}};
  TrainOptions o;
  o.vocab_size = 259;
  o.min_frequency = 1;
  o.pretokenizer = "none";
  const Tokenizer t = train_bpe(counts, o);
  EXPECT_EQ(t.merges, (std::vector<std::pair<int32_t, int32_t>>{{97, 97}, {97, 98}, {256, 257}}));
  EXPECT_EQ(t.vocab[256], "aa");
  EXPECT_EQ(t.vocab[257], "ab");
  EXPECT_EQ(t.vocab[258], "aaab");
  const Encoder enc(t);
  EXPECT_EQ(enc.encode("aaabdaaabac"), (std::vector<int32_t>{258, 'd', 258, 'a', 'c'}));
  // overlapping occurrences merge left to right: "aaa" -> aa a
  EXPECT_EQ(enc.encode("aaa"), (std::vector<int32_t>{256, 'a'}));
}

// An independent trainer: recounts every pair of every word for each merge.
std::vector<std::pair<int32_t, int32_t>> naive_train(const WordCounts& counts, size_t vocab_size,
                                                    int64_t min_frequency) {
  std::vector<std::pair<std::vector<int32_t>, int64_t>> words;
  for (const auto& [w, c] : counts) {
    std::vector<int32_t> s;
    for (char ch : w) s.push_back(uint8_t(ch));
    words.push_back({s, c});
  }
  std::vector<std::string> vocab(256);
  for (int c = 0; c < 256; c++) vocab[size_t(c)] = std::string(1, char(c));
  std::vector<std::pair<int32_t, int32_t>> merges;
  while (vocab.size() < vocab_size) {
    std::map<std::pair<int32_t, int32_t>, int64_t> pc;
    for (const auto& [s, c] : words)
      for (size_t i = 0; i + 1 < s.size(); i++) pc[{s[i], s[i + 1]}] += c;
    std::pair<int32_t, int32_t> best{-1, -1};
    int64_t best_count = 0;
    for (const auto& [p, c] : pc)  // map order: the smallest pair first among equal counts
      if (c > best_count) best = p, best_count = c;
    if (best_count < min_frequency || best_count == 0) break;
    const std::string bytes = vocab[size_t(best.first)] + vocab[size_t(best.second)];
    int32_t made = int32_t(std::find(vocab.begin(), vocab.end(), bytes) - vocab.begin());
    if (made == int32_t(vocab.size())) vocab.push_back(bytes);
    merges.push_back(best);
    for (auto& [s, c] : words) {
      std::vector<int32_t> out;
      for (size_t i = 0; i < s.size();) {
        if (i + 1 < s.size() && s[i] == best.first && s[i + 1] == best.second) {
          out.push_back(made);
          i += 2;
        } else {
          out.push_back(s[i++]);
        }
      }
      s = out;
    }
  }
  return merges;
}

TEST(BpeTrain, MatchesNaiveTrainer) {
  Rng r(5);
  // Few letters make many ties, repeats ("aaaa") and merges that remake existing tokens.
  for (int round = 0; round < 4; round++) {
    std::string text;
    for (int i = 0; i < 4000; i++) {
      const uint64_t k = r.below(10);
      text += k < 6 ? char('a' + r.below(3)) : k < 8 ? ' ' : k < 9 ? '\n' : char('1' + r.below(2));
    }
    WordCounts counts;
    const Pretokenizer pre(pretok_preset(round % 2 ? "deepseek_v3" : "gpt2"));
    count_pieces(pre, text, 1 + round % 2, counts);
    TrainOptions o;
    o.vocab_size = 256 + 80;
    o.min_frequency = 1 + round % 2;
    const Tokenizer t = train_bpe(counts, o);
    EXPECT_EQ(t.merges, naive_train(counts, size_t(o.vocab_size), o.min_frequency))
        << "round " << round;
  }
  // one long word
  WordCounts one{{std::string(50, 'a') + "bab" + std::string(20, 'b'), 3}};
  TrainOptions o;
  o.vocab_size = 270;
  o.min_frequency = 1;
  EXPECT_EQ(train_bpe(one, o).merges, naive_train(one, 270, 1));
}

TEST(BpeTrain, CountingInParallelMatchesOneThread) {
  const std::string text = builtin_corpus_text(2, 900000);
  const Pretokenizer pre(pretok_preset("gpt2"));
  WordCounts one, many;
  count_pieces(pre, text, 1, one);
  count_pieces(pre, text, 4, many);
  EXPECT_EQ(one, many);
}

TEST(BpeTrain, SpecialsAndLimits) {
  const Tokenizer& t = small_tokenizer();
  EXPECT_EQ(t.vocab.size(), 600u);
  EXPECT_EQ(t.specials.size(), 12u);
  EXPECT_EQ(t.specials.back().id, 599);
  EXPECT_EQ(t.specials.back().text, "<|reserved_1|>");
  WordCounts counts{{"ab", 5}};
  TrainOptions o;
  o.vocab_size = 100;
  EXPECT_THROW(train_bpe(counts, o), Error);
  o.vocab_size = 1000;  // runs out of pairs: stops early, still valid
  TrainReport rep;
  const Tokenizer small = train_bpe(counts, o, &rep);
  EXPECT_TRUE(rep.stopped_by_frequency);
  EXPECT_EQ(small.merges.size(), 1u);
}

// --------------------------------------------------------------------------------------------
// Formats

void expect_same_encoding(const Tokenizer& a, const Tokenizer& b) {
  const Encoder ea(a), eb(b);
  Rng r(1);
  const std::string text = builtin_corpus_text(8, 30000) + random_bytes(r, 3000);
  EXPECT_EQ(ea.encode(text), eb.encode(text));
  EXPECT_EQ(eb.decode(eb.encode(text)), text);
}

TEST(TokenizerFiles, RoundTrips) {
  const auto dir = test::temp_dir("tok_formats");
  const Tokenizer& t = small_tokenizer();
  const std::string d = (dir / "t.dsv3tok").string();
  save_dsv3_tokenizer(d, t);
  const Tokenizer back = load_dsv3_tokenizer(d);
  EXPECT_EQ(back.vocab, t.vocab);
  EXPECT_EQ(back.merges, t.merges);
  EXPECT_EQ(back.pretok.patterns, t.pretok.patterns);
  EXPECT_EQ(back.roles.fim_suffix, t.roles.fim_suffix);
  EXPECT_EQ(load_tokenizer_any(d).vocab, t.vocab);

  export_hf_tokenizer_json((dir / "tokenizer.json").string(), t);
  const Tokenizer hf = load_tokenizer_any((dir / "tokenizer.json").string());
  EXPECT_EQ(hf.vocab, t.vocab);
  EXPECT_EQ(hf.merges, t.merges);
  EXPECT_EQ(hf.roles.eos, t.roles.eos);
  expect_same_encoding(t, hf);

  export_gpt2_files((dir / "gpt2").string(), t);
  const Tokenizer g = load_tokenizer_any((dir / "gpt2").string());
  EXPECT_EQ(g.vocab, t.vocab);
  EXPECT_EQ(g.merges, t.merges);
  EXPECT_EQ(g.specials.size(), t.specials.size());
  expect_same_encoding(t, g);

  export_tiktoken_file((dir / "t.tiktoken").string(), t);
  const Tokenizer k = load_tokenizer_any((dir / "t.tiktoken").string());
  EXPECT_EQ(k.merges, t.merges);  // re-derived from the ranks alone
  expect_same_encoding(t, k);

  Tokenizer ds = t;
  ds.pretok = pretok_preset("deepseek_v3");
  export_hf_tokenizer_json((dir / "ds.json").string(), ds);
  EXPECT_EQ(load_hf_tokenizer_json((dir / "ds.json").string()).pretok.name, "deepseek_v3");
  fs::remove_all(dir);
}

TEST(TokenizerFiles, Gpt2FilesAndTiktokenAgree) {
  DSV3_REQUIRE_SHARED();
  const auto g = test::shared_dir() / "data/tokenizers/gpt2";
  const Tokenizer a = load_tokenizer_any(g.string());
  const Tokenizer b = load_tokenizer_any((g / "gpt2.tiktoken").string());
  EXPECT_EQ(a.vocab, b.vocab);
  EXPECT_EQ(a.merges, b.merges);  // tiktoken's derived merges are exactly vocab.bpe's
  EXPECT_EQ(a.roles.eos, 50256);
  EXPECT_EQ(b.roles.eos, 50256);
  const Encoder ea(a);
  EXPECT_EQ(ea.encode("Hello world"), (std::vector<int32_t>{15496, 995}));
  EXPECT_EQ(ea.unreachable_tokens(), 0);
}

// Mutations of a valid file load (if still valid) or throw dsv3::Error; nothing else may happen.
void fuzz_file(const std::string& path, const std::function<Tokenizer(const std::string&)>& load,
               int rounds, uint64_t seed) {
  const std::string good = test::read_file_bytes(path);
  ASSERT_FALSE(good.empty());
  Rng r(seed);
  int errors = 0;
  for (int i = 0; i < rounds; i++) {
    std::string bad = good;
    const int edits = 1 + int(r.below(4));
    for (int e = 0; e < edits; e++) {
      const size_t at = bad.empty() ? 0 : r.below(bad.size());
      switch (r.below(6)) {
        case 0: if (!bad.empty()) bad[at] = char(r.below(256)); break;
        case 1: bad.resize(at); break;  // truncate
        case 2: bad.insert(at, 1, char(r.below(256))); break;
        case 3: if (!bad.empty()) bad.erase(at, 1 + r.below(8)); break;
        case 4: if (!bad.empty()) bad[at] = "0123456789\"{}[],: \n-"[r.below(20)]; break;
        default: if (!bad.empty()) bad[at] ^= char(1 << r.below(8));
      }
    }
    write_file_atomic(path, [&](std::FILE* f) { write_bytes(f, bad.data(), bad.size()); });
    try {
      const Tokenizer t = load(path);
      const Encoder enc(t, path);  // a file that loads must also work
      const std::string text = "Hello, world! 123 \xff\n";
      ASSERT_EQ(enc.decode(enc.encode(text)), text);
    } catch (const Error& e) {
      errors++;
      ASSERT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    }
  }
  write_file_atomic(path, [&](std::FILE* f) { write_bytes(f, good.data(), good.size()); });
  EXPECT_GT(errors, rounds / 4) << "mutations were rarely caught for " << path;
}

TEST(TokenizerFiles, FuzzedFilesGiveErrorsNotCrashes) {
  const auto dir = test::temp_dir("tok_fuzz");
  // a smaller tokenizer keeps each load fast
  WordCounts counts{{"the cat sat on the mat", 3}, {"ab", 2}, {"hello", 4}};
  TrainOptions o;
  o.vocab_size = 280;
  o.min_frequency = 1;
  o.specials = {"<|eos|>", "<|pad|>"};
  const Tokenizer t = train_bpe(counts, o);
  const std::string d = (dir / "t.dsv3tok").string(), hf = (dir / "tokenizer.json").string(),
                    tk = (dir / "t.tiktoken").string(), g = (dir / "gpt2").string();
  save_dsv3_tokenizer(d, t);
  export_hf_tokenizer_json(hf, t);
  export_tiktoken_file(tk, t);
  export_gpt2_files(g, t);
  const PretokSpec gpt2 = pretok_preset("gpt2");
  fuzz_file(d, load_dsv3_tokenizer, 300, 1);
  fuzz_file(hf, load_hf_tokenizer_json, 300, 2);
  fuzz_file(tk, [&](const std::string& p) { return load_tiktoken_file(p, gpt2); }, 300, 3);
  const std::string enc = g + "/encoder.json", bpe = g + "/vocab.bpe";
  fuzz_file(enc, [&](const std::string&) { return load_gpt2_files(enc, bpe, gpt2); }, 300, 4);
  fuzz_file(bpe, [&](const std::string&) { return load_gpt2_files(enc, bpe, gpt2); }, 300, 5);
  fs::remove_all(dir);
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(TokenizerFiles, BadFilesNameTheProblem) {
  const auto dir = test::temp_dir("tok_bad");
  auto write = [&](const std::string& name, const std::string& bytes) {
    const std::string p = (dir / name).string();
    write_file_atomic(p, [&](std::FILE* f) { write_bytes(f, bytes.data(), bytes.size()); });
    return p;
  };
  const std::string empty = write("empty.json", "");
  EXPECT_NE(error_of([&] { load_tokenizer_any(empty); }).find("empty"), std::string::npos);
  EXPECT_NE(error_of([&] { load_tokenizer_any((dir / "missing").string()); }).find("does not exist"),
            std::string::npos);
  EXPECT_NE(error_of([&] { load_tokenizer_any(dir.string()); }).find("no tokenizer"),
            std::string::npos);
  const std::string ckpt = write("model.bin", std::string("DSV3CKPT\x01\0\0\0", 12) + "xxxx");
  EXPECT_NE(error_of([&] { load_tokenizer_any(ckpt); }).find("dsv3 checkpoint"), std::string::npos);
  const std::string wp = write("wordpiece.json", R"({"model": {"type": "WordPiece", "vocab": {}}})");
  EXPECT_NE(error_of([&] { load_tokenizer_any(wp); }).find("WordPiece"), std::string::npos);
  const std::string nfc = write("nfc.json",
                                R"({"normalizer": {"type": "NFC"}, "pre_tokenizer": {"type": "ByteLevel"},
                                    "model": {"type": "BPE", "vocab": {}, "merges": []}})");
  EXPECT_NE(error_of([&] { load_tokenizer_any(nfc); }).find("NFC"), std::string::npos);
  const std::string tk = write("x.tiktoken", "IQ== 0\nnot base64!! 1\n");
  EXPECT_NE(error_of([&] { load_tokenizer_any(tk); }).find(":2:"), std::string::npos);
  const std::string few = write("few.tiktoken", "IQ== 0\nIg== 1\n");
  EXPECT_NE(error_of([&] { load_tokenizer_any(few); }).find("256 byte tokens"), std::string::npos);
  // truncated dsv3 file
  save_dsv3_tokenizer((dir / "ok.dsv3tok").string(), small_tokenizer());
  const std::string full = test::read_file_bytes((dir / "ok.dsv3tok").string());
  const std::string cut = write("cut.dsv3tok", full.substr(0, full.size() / 2));
  EXPECT_NE(error_of([&] { load_tokenizer_any(cut); }).find("truncated"), std::string::npos);
  fs::remove_all(dir);
}

// --------------------------------------------------------------------------------------------
// CLI

TEST(TokenizerCli, HelpForEverySubcommand) {
  EXPECT_EQ(run_cli("tokenizer --help").code, 0);
  for (const char* sub : {"train", "encode", "decode", "export", "info"}) {
    const auto r = run_cli(std::string("tokenizer ") + sub + " --help");
    EXPECT_EQ(r.code, 0) << sub;
    EXPECT_NE(r.out.find("usage: dsv3 tokenizer " + std::string(sub)), std::string::npos) << r.out;
  }
  EXPECT_EQ(run_cli("tokenizer frobnicate").code, 2);
}

TEST(TokenizerCli, TrainEncodeDecodeExport) {
  const auto dir = test::temp_dir("tok_cli");
  const std::string corpus = (dir / "corpus.txt").string();
  const std::string text = builtin_corpus_text(4, 100000);
  write_file_atomic(corpus, [&](std::FILE* f) { write_bytes(f, text.data(), text.size()); });
  const std::string tok = (dir / "t.dsv3tok").string();
  auto r = run_cli("tokenizer train --input " + corpus + " --out " + tok +
                   " --vocab_size 500 --threads 2 --json");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("\"vocab_size\":500"), std::string::npos) << r.out;

  // bytes that are not text: NULs, invalid UTF-8, an empty file
  const std::string odd("\0\xff\xfe abc\0\n\xc3(", 11);
  const std::string odd_path = (dir / "odd.bin").string(), empty = (dir / "empty.txt").string();
  write_file_atomic(odd_path, [&](std::FILE* f) { write_bytes(f, odd.data(), odd.size()); });
  write_file_atomic(empty, [](std::FILE*) {});
  const std::string shard = (dir / "odd_shard.bin").string();
  r = run_cli("tokenizer encode --tokenizer " + tok + " --input " + odd_path + " --out " + shard +
              " --eos");
  ASSERT_EQ(r.code, 0) << r.out;
  const auto ids = read_token_file(shard);
  EXPECT_EQ(ids.back(), Encoder(load_dsv3_tokenizer(tok)).tokenizer().roles.eos);
  const std::string back = (dir / "back.bin").string();
  r = run_cli("tokenizer decode --tokenizer " + tok + " --input " + shard + " --out " + back);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(test::read_file_bytes(back), odd + "<|eos|>");
  r = run_cli("tokenizer encode --tokenizer " + tok + " --input " + empty);
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(r.out, "");
  r = run_cli("tokenizer encode --tokenizer " + tok + " --text 'Ada has 7 apples.'");
  ASSERT_EQ(r.code, 0) << r.out;
  std::string ids_inline;
  for (char c : r.out) ids_inline += c == '\n' ? ' ' : c;
  r = run_cli("tokenizer decode --tokenizer " + tok + " --ids '" + ids_inline + "'");
  EXPECT_EQ(r.out, "Ada has 7 apples.");

  for (const char* fmt : {"hf", "gpt2", "tiktoken", "dsv3"}) {
    const std::string out = (dir / (std::string("export_") + fmt)).string();
    r = run_cli("tokenizer export --tokenizer " + tok + " --format " + fmt + " --out " + out);
    ASSERT_EQ(r.code, 0) << fmt << ": " << r.out;
    r = run_cli("tokenizer encode --tokenizer " + out + " --input " + odd_path);
    EXPECT_EQ(r.code, 0) << fmt << ": " << r.out;
  }
  r = run_cli("tokenizer info --tokenizer " + tok + " --json");
  ASSERT_EQ(r.code, 0) << r.out;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["vocab_size"], 500);
  EXPECT_EQ(j["roles"]["fim_middle"], j["vocab_size"].get<int>() - 16 + 4);

  // errors: a clear message and exit code 1, never a crash
  r = run_cli("tokenizer encode --tokenizer " + odd_path + " --text hi");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find(odd_path), std::string::npos) << r.out;
  r = run_cli("tokenizer decode --tokenizer " + tok + " --ids '1 2 99999'");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("99999"), std::string::npos) << r.out;
  r = run_cli("tokenizer decode --tokenizer " + tok + " --ids '1 x2'");
  EXPECT_EQ(r.code, 1);
  r = run_cli("tokenizer train --input " + empty + " --out " + (dir / "e.dsv3tok").string() +
              " --vocab_size 300");
  EXPECT_EQ(r.code, 0) << r.out;  // nothing to learn: bytes + specials only
  r = run_cli("tokenizer encode --tokenizer " + tok + " --pretokenizer deepseek_v3 --text x");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("carries its own pre-tokenizer"), std::string::npos) << r.out;
  fs::remove_all(dir);
}

TEST(TokenizerCli, ShardRejectsLargeVocabulary) {
  const auto dir = test::temp_dir("tok_cli_big");
  Tokenizer t = small_tokenizer();
  t.vocab.resize(70000);  // holes up to id 69999, a special at the end
  t.vocab.back() = "<|big|>";
  t.specials.push_back({69999, "<|big|>"});
  const std::string tok = (dir / "big.dsv3tok").string();
  save_dsv3_tokenizer(tok, t);
  const auto r = run_cli("tokenizer encode --tokenizer " + tok + " --text hi --out " +
                         (dir / "s.bin").string());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("uint16"), std::string::npos) << r.out;
  fs::remove_all(dir);
}

}  // namespace
}  // namespace dsv3

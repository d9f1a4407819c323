// Token shards, the training data loader and domain mixing (D8, D10, T10).
// Shards round-trip exactly and every bad file is an Error naming the problem (mutated files
// never crash the reader); the loader's rows follow the documented layouts exactly (packing,
// windows, FIM), are the same for the same seed, resume exactly from state() with or without
// prefetch, partition documents across ranks, and mix domains in the stated proportions.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "core/check.h"
#include "core/io.h"
#include "core/rng.h"
#include "data/loader.h"
#include "data/mixture.h"
#include "data/shard.h"
#include "data/token_file.h"
#include "test_util.h"

namespace dsv3 {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Doc = std::vector<int32_t>;

struct TempDir : fs::path {
  explicit TempDir(const std::string& name) : fs::path(test::temp_dir(name)) {}
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(*this, ec);
  }
};

// Runs f, expects a dsv3::Error whose message contains every word.
template <typename F>
void expect_error(F&& f, std::initializer_list<std::string> words) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one mentioning '" << *words.begin() << "'";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const auto& w : words)
      EXPECT_NE(msg.find(w), std::string::npos) << "message lacks '" << w << "': " << msg;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw a non-dsv3 exception: " << e.what();
  }
}

void spit(const fs::path& p, const std::string& bytes) {
  fs::remove(p);
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), std::streamsize(bytes.size()));
}

constexpr int32_t kEos = 0, kFimPre = 1, kFimMid = 2, kFimSuf = 3;

std::string write_shard(const fs::path& path, const std::vector<Doc>& docs,
                        const std::string& domain = "web", int64_t vocab = 5000,
                        int token_bytes = 0) {
  ShardInfo info;
  info.domain = domain, info.split = "train", info.vocab_size = vocab, info.eos = kEos;
  info.token_bytes = token_bytes, info.tokenizer = "test";
  ShardWriter w(path.string(), info);
  for (const auto& d : docs) w.add_document(d, 3 * d.size());
  w.finish();
  return path.string();
}

Doc iota_doc(int32_t first, size_t n) {
  Doc d(n);
  for (size_t i = 0; i < n; i++) d[i] = first + int32_t(i);
  return d;
}

// n documents of random lengths in [lo, hi] whose ids are unique to the document: document i
// of this set holds base + 50 * i + k (so a token names its document).
std::vector<Doc> make_docs(int n, int32_t base, int lo, int hi, uint64_t seed) {
  Rng r(seed);
  std::vector<Doc> docs;
  for (int i = 0; i < n; i++) docs.push_back(iota_doc(base + 50 * i, size_t(lo + int(r.below(uint64_t(hi - lo + 1))))));
  return docs;
}

LoaderConfig base_config(int batch, int seq_len, uint64_t seed = 1) {
  LoaderConfig c;
  c.batch = batch, c.seq_len = seq_len, c.seed = seed;
  c.eos = kEos, c.fim_prefix = kFimPre, c.fim_middle = kFimMid, c.fim_suffix = kFimSuf;
  return c;
}

// `count` batches as vectors.
std::vector<Doc> take(Loader& l, int count) {
  std::vector<Doc> out;
  const size_t n = size_t(l.config().batch) * size_t(l.config().seq_len + 1);
  for (int i = 0; i < count; i++) {
    const int32_t* b = l.next();
    out.emplace_back(b, b + n);
  }
  return out;
}

// ---------------------------------------------------------------- shards

TEST(Shard, RoundTripBothWidths) {
  const TempDir dir("shard_rt");
  for (int tb : {2, 4}) {
    const int64_t vocab = tb == 2 ? 65536 : 200000;
    const std::vector<Doc> docs = {{5, 65535, 7}, {1}, iota_doc(tb == 2 ? 60000 : 150000, 300)};
    const std::string p = write_shard(dir / ("s" + std::to_string(tb)), docs, "code", vocab, 0);
    const Shard s = Shard::open(p);
    EXPECT_EQ(s.token_bytes(), tb);
    EXPECT_EQ(s.domain(), "code");
    EXPECT_EQ(s.split(), "train");
    EXPECT_EQ(s.vocab_size(), vocab);
    EXPECT_EQ(s.info().eos, kEos);
    EXPECT_EQ(s.info().tokenizer, "test");
    EXPECT_FALSE(s.is_llmc());
    ASSERT_EQ(s.n_docs(), docs.size());
    EXPECT_EQ(s.n_tokens(), 304u);
    EXPECT_EQ(s.n_text_bytes(), 3u * 304);
    for (size_t i = 0; i < docs.size(); i++) EXPECT_EQ(s.doc(i), docs[i]) << "doc " << i;
    EXPECT_EQ(s.doc_begin(2), 4u);
    Doc mid(3);
    s.read_tokens(3, 3, mid.data());
    EXPECT_EQ(mid, (Doc{1, docs[2][0], docs[2][1]}));
    expect_error([&] { s.doc(3); }, {"document 3 out of range"});
    expect_error([&] { s.read_tokens(300, 5, mid.data()); }, {"out of range"});
  }
}

TEST(Shard, WriterRejectsBadInput) {
  const TempDir dir("shard_w");
  ShardInfo info;
  info.domain = "web", info.split = "train", info.vocab_size = 1000, info.eos = 0;
  ShardWriter w((dir / "a").string(), info);
  const Doc bad = {1, 2, 1000};
  expect_error([&] { w.add_document(bad, 3); }, {"document 0", "token 2 is 1000", "[0, 1000)"});
  const Doc neg = {-1};
  expect_error([&] { w.add_document(neg, 1); }, {"token 0 is -1"});
  expect_error([&] { w.add_document({}, 0); }, {"document 0", "no tokens"});
  const Doc ok = {1, 2};
  w.add_document(ok, 2);
  EXPECT_EQ(w.n_docs(), 1u);  // the rejected documents left nothing behind
  EXPECT_EQ(w.n_tokens(), 2u);
  EXPECT_FALSE(fs::exists(dir / "a"));  // nothing before finish()
  w.finish();
  EXPECT_EQ(Shard::open((dir / "a").string()).doc(0), ok);
  expect_error([&] { w.add_document(ok, 2); }, {"already finished"});

  info.vocab_size = 70000, info.token_bytes = 2;
  expect_error([&] { ShardWriter((dir / "b").string(), info); }, {"does not fit 2-byte ids"});
  info.token_bytes = 3;
  expect_error([&] { ShardWriter((dir / "b").string(), info); }, {"token_bytes is 3"});
  info.token_bytes = 0, info.eos = 70000;
  expect_error([&] { ShardWriter((dir / "b").string(), info); }, {"eos id 70000"});
}

TEST(Shard, ReadsLlmcFiles) {
  const TempDir dir("shard_llmc");
  // llm.c's fineweb layout: EOT before every document.
  const Doc ids = {7, 10, 11, 12, 7, 13, 7, 7, 14, 15};
  const std::string p = (dir / "fineweb_train_000001.bin").string();
  write_token_file(p, ids);
  ShardOpenOptions opt;
  opt.llmc_eos = 7;
  const Shard s = Shard::open(p, opt);
  EXPECT_TRUE(s.is_llmc());
  EXPECT_EQ(s.domain(), "");
  EXPECT_EQ(s.token_bytes(), 2);
  EXPECT_EQ(s.n_tokens(), ids.size());
  EXPECT_EQ(s.vocab_size(), 16);  // largest id + 1
  ASSERT_EQ(s.n_docs(), 3u);      // the runs between EOS ids; empty runs dropped
  EXPECT_EQ(s.doc(0), (Doc{10, 11, 12}));
  EXPECT_EQ(s.doc(1), (Doc{13}));
  EXPECT_EQ(s.doc(2), (Doc{14, 15}));
  const Shard one = Shard::open(p);  // no EOS id: one document
  ASSERT_EQ(one.n_docs(), 1u);
  EXPECT_EQ(one.doc(0), ids);

  write_token_file(p, {7, 7});
  expect_error([&] { Shard::open(p, opt); }, {p, "only EOS ids"});
  std::string bytes = read_file(p);
  spit(p, bytes.substr(0, bytes.size() - 1));
  expect_error([&] { Shard::open(p, opt); }, {p, "bytes"});
}

// A valid shard's bytes with a hand-edited header: the header CRC is recomputed so the field
// checks behind it are reached.
std::string with_header(const std::string& bytes, const std::function<void(json&)>& edit) {
  const uint64_t hlen = load_u64le(bytes.data() + 16);
  json h = json::parse(bytes.substr(24, size_t(hlen)));
  edit(h);
  std::string text = h.dump();
  const uint64_t start = (24 + hlen + 7) / 8 * 8;
  std::string out = bytes.substr(0, 24) + text;
  out.resize((out.size() + 7) / 8 * 8, '\0');
  out += bytes.substr(size_t(start));
  const uint32_t crc = crc32_update(0, text.data(), text.size());
  for (int k = 0; k < 4; k++) out[12 + k] = char(crc >> (8 * k));
  for (int k = 0; k < 8; k++) out[16 + k] = char(uint64_t(text.size()) >> (8 * k));
  return out;
}

TEST(Shard, BadFilesGiveClearErrors) {
  const TempDir dir("shard_bad");
  const std::string good = write_shard(dir / "good", {{5, 6, 7}, {8, 9}, {10}});
  const std::string bytes = read_file(good);
  const uint64_t hlen = load_u64le(bytes.data() + 16);
  const size_t table = size_t((24 + hlen + 7) / 8 * 8), ids = table + 8 * 4;
  ASSERT_EQ(bytes.size(), ids + 2 * 6);
  const std::string p = (dir / "bad").string();
  auto with = [&](const std::string& b) {
    spit(p, b);
    return [&] { Shard::open(p); };
  };

  expect_error([&] { Shard::open((dir / "missing").string()); }, {"cannot open", "missing"});
  expect_error(with(""), {p, "empty"});
  expect_error(with("hello world, this is not a shard\n"), {p, "not a dsv3 token shard",
                                                             "looks like text"});
  expect_error(with(std::string("\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03", 10) +
                    std::string(40, '\x01')),
               {p, "not a dsv3 token shard", "gzip"});
  expect_error(with(std::string("DSV3CKPT") + std::string(40, '\0')),
               {p, "not a dsv3 token shard", "checkpoint"});
  expect_error(with(bytes.substr(0, 12)), {p, "truncated", "too short"});
  expect_error(with(bytes.substr(0, 30)), {p, "truncated", "header length"});
  expect_error(with(bytes.substr(0, bytes.size() - 1)), {p, "truncated"});
  expect_error(with(bytes.substr(0, table + 4)), {p, "truncated"});
  expect_error(with(bytes + "xx"), {p, "2 unexpected trailing bytes"});

  std::string v = bytes;
  v[8] = 2;
  expect_error(with(v), {p, "version 2 is newer"});
  std::string hc = bytes;
  hc[30] ^= 0x20;
  expect_error(with(hc), {p, "header checksum mismatch"});
  std::string pc = bytes;
  pc[ids + 3] ^= 0x01;
  expect_error(with(pc), {p, "payload checksum mismatch", "corrupt"});
  // Offset table: out of range, not increasing, not starting at 0 (checked before the CRC).
  std::string ot = bytes;
  ot[table + 8] = 60;
  expect_error(with(ot), {p, "document 0 ends at token 60", "past the shard's 6 tokens"});
  std::string oi = bytes;
  oi[table + 16] = 2;  // offsets 0 3 2 5 6
  expect_error(with(oi), {p, "document 1", "not increasing"});
  std::string oz = bytes;
  oz[table] = 1;
  expect_error(with(oz), {p, "starts at 1"});
  std::string pad = bytes;
  if (table > 24 + hlen) {
    pad[table - 1] = 1;
    expect_error(with(pad), {p, "padding"});
  }

  // Header fields (header CRC fixed so the field checks are reached).
  expect_error(with(with_header(bytes, [](json& h) { h.erase("n_docs"); })), {p, "no 'n_docs'"});
  expect_error(with(with_header(bytes, [](json& h) { h["token_bytes"] = 3; })),
               {p, "token_bytes is 3"});
  expect_error(with(with_header(bytes, [](json& h) { h["n_tokens"] = "6"; })),
               {p, "'n_tokens' must be a non-negative integer"});
  expect_error(with(with_header(bytes, [](json& h) { h["n_docs"] = 2; })), {p, "bytes"});
  expect_error(with(with_header(bytes, [](json& h) { h["vocab_size"] = 9; })),
               {p, "token", "is 10", "outside the vocabulary [0, 9)"});
  expect_error(with(with_header(bytes, [](json& h) { h["domain"] = 7; })),
               {p, "'domain' must be a string"});
  std::string nj = bytes;
  nj[24] = '[';
  const uint32_t crc = crc32_update(0, nj.data() + 24, size_t(hlen));
  for (int k = 0; k < 4; k++) nj[12 + k] = char(crc >> (8 * k));
  expect_error(with(nj), {p, "not valid JSON"});
}

// Mutated shard bytes: random flips anywhere, flips in the JSON header with its CRC fixed,
// truncations and extensions. Every outcome is an Error or a shard whose documents read back.
TEST(Shard, FuzzMutationsNeverCrash) {
  const TempDir dir("shard_fuzz");
  const std::string good = write_shard(dir / "good", make_docs(12, 100, 1, 20, 5));
  const std::string bytes = read_file(good);
  const uint64_t hlen = load_u64le(bytes.data() + 16);
  const std::string p = (dir / "m").string();
  Rng r(42);
  int loaded = 0, failed = 0;
  for (int it = 0; it < 1500; it++) {
    std::string m = bytes;
    const int kind = int(r.below(4));
    if (kind == 0) {
      for (int k = 0, n = 1 + int(r.below(4)); k < n; k++)
        m[size_t(r.below(m.size()))] ^= char(1 + r.below(255));
    } else if (kind == 1) {
      m[24 + size_t(r.below(hlen))] = char(0x20 + r.below(0x5f));
      const uint32_t crc = crc32_update(0, m.data() + 24, size_t(hlen));
      for (int k = 0; k < 4; k++) m[12 + k] = char(crc >> (8 * k));
    } else if (kind == 2) {
      m.resize(size_t(r.below(m.size())));
    } else {
      m[size_t(24 + hlen + r.below(m.size() - 24 - hlen))] ^= char(1 + r.below(255));
    }
    spit(p, m);
    try {
      const Shard s = Shard::open(p);
      for (uint64_t i = 0; i < s.n_docs(); i++) {
        const Doc d = s.doc(i);
        for (int32_t id : d) ASSERT_TRUE(id >= 0 && id < s.vocab_size());
      }
      loaded++;
    } catch (const Error&) {
      failed++;
    }
  }
  std::printf("shard fuzz: %d of 1500 mutated files loaded (harmless edits), %d errors\n", loaded,
              failed);
  EXPECT_GT(failed, 1000);
}

// ---------------------------------------------------------------- layouts

TEST(Layout, WindowStarts) {
  EXPECT_EQ(window_starts(22, 9, 3), (std::vector<uint64_t>{0, 6, 12, 13}));
  EXPECT_EQ(window_starts(21, 9, 3), (std::vector<uint64_t>{0, 6, 12}));  // exact fit
  EXPECT_EQ(window_starts(9, 9, 3), (std::vector<uint64_t>{0}));
  EXPECT_EQ(window_starts(10, 9, 0), (std::vector<uint64_t>{0, 1}));
  EXPECT_EQ(window_starts(27, 9, 0), (std::vector<uint64_t>{0, 9, 18}));
  EXPECT_EQ(window_starts(12, 4, 3), (std::vector<uint64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8}));
}

TEST(Layout, FimExact) {
  LoaderConfig c = base_config(1, 8);
  const Doc doc = iota_doc(101, 10);  // 101..110
  c.fim_order = FimOrder::PSM;
  EXPECT_EQ(fim_layout(doc, 3, 7, c),
            (Doc{kFimPre, 101, 102, 103, kFimSuf, 108, 109, 110, kFimMid, 104, 105, 106, 107}));
  EXPECT_EQ(fim_layout(doc, 0, 10, c), (Doc{kFimPre, kFimSuf, kFimMid, 101, 102, 103, 104, 105,
                                            106, 107, 108, 109, 110}));
  c.fim_order = FimOrder::SPM;
  EXPECT_EQ(fim_layout(doc, 3, 7, c),
            (Doc{kFimSuf, 108, 109, 110, kFimPre, 101, 102, 103, kFimMid, 104, 105, 106, 107}));
  EXPECT_EQ(fim_layout(doc, 5, 5, c),
            (Doc{kFimSuf, 106, 107, 108, 109, 110, kFimPre, 101, 102, 103, 104, 105, kFimMid}));
  expect_error([&] { fim_layout(doc, 6, 5, c); }, {"split points"});
  EXPECT_EQ(parse_fim_order("SPM"), FimOrder::SPM);
  expect_error([] { parse_fim_order("mps"); }, {"unknown FIM order 'mps'"});
}

// The document 100..120 (21 tokens, 22 with EOS), seq_len 8 (rows of 9), overlap 3: windows at
// 0, 6, 12 and the last one aligned to the end at 13; then the next epoch repeats them.
TEST(Loader, WindowLayoutExact) {
  const TempDir dir("ld_win");
  const std::string s = write_shard(dir / "s", {iota_doc(100, 21)});
  LoaderConfig c = base_config(1, 8);
  c.window_overlap = 3;
  for (bool prefetch : {false, true}) {
    c.prefetch = prefetch;
    Loader l({{"web", {s}}}, c);
    const std::vector<Doc> rows = take(l, 8);
    const std::vector<Doc> want = {iota_doc(100, 9), iota_doc(106, 9), iota_doc(112, 9),
                                   {113, 114, 115, 116, 117, 118, 119, 120, kEos}};
    for (int i = 0; i < 8; i++) EXPECT_EQ(rows[size_t(i)], want[size_t(i % 4)]) << "row " << i;
    EXPECT_EQ(l.state()["domains"][0]["epoch"], 2);
  }
  // FIM first, then windows over the rewritten document (25 tokens with EOS: starts 0, 6, 12, 16).
  c.fim_rate = 1;
  Loader l({{"web", {s}}}, c);
  const std::vector<Doc> rows = take(l, 4);
  const Doc doc = iota_doc(100, 21);
  int matches = 0;
  for (size_t a = 0; a <= 21; a++)
    for (size_t b = a; b <= 21; b++) {
      Doc full = fim_layout(doc, a, b, c);
      full.push_back(kEos);
      ASSERT_EQ(window_starts(full.size(), 9, 3), (std::vector<uint64_t>{0, 6, 12, 16}));
      bool same = true;
      for (size_t k = 0; k < 4; k++) {
        const uint64_t st = window_starts(full.size(), 9, 3)[k];
        same &= Doc(full.begin() + long(st), full.begin() + long(st) + 9) == rows[k];
      }
      matches += same;
    }
  EXPECT_EQ(matches, 1);
}

// Short documents are packed with EOS into rows of T+1 tokens that advance by T; a long
// document's windows come out when it comes up, the packing buffer waiting meanwhile.
TEST(Loader, PackingLayoutExact) {
  const TempDir dir("ld_pack");
  const std::string s = write_shard(dir / "s", {{11, 12, 13}, {14, 15}, {16, 17, 18, 19, 20}});
  LoaderConfig c = base_config(1, 6);
  c.shuffle = false;
  {
    Loader l({{"web", {s}}}, c);
    // stream: 11 12 13 0 14 15 0 16 17 18 19 20 0 | 11 12 13 0 14 15 0 16 ...
    const std::vector<Doc> rows = take(l, 4);
    EXPECT_EQ(rows[0], (Doc{11, 12, 13, 0, 14, 15, 0}));
    EXPECT_EQ(rows[1], (Doc{0, 16, 17, 18, 19, 20, 0}));
    EXPECT_EQ(rows[2], (Doc{0, 11, 12, 13, 0, 14, 15}));
    EXPECT_EQ(rows[3], (Doc{15, 0, 16, 17, 18, 19, 20}));
  }
  const std::string m = write_shard(dir / "m", {{1, 2}, iota_doc(100, 21), {3, 4}});
  c.seq_len = 8, c.window_overlap = 3;
  Loader l({{"web", {m}}}, c);
  const std::vector<Doc> rows = take(l, 14);
  const std::vector<Doc> win = {iota_doc(100, 9), iota_doc(106, 9), iota_doc(112, 9),
                                {113, 114, 115, 116, 117, 118, 119, 120, kEos}};
  for (int k = 0; k < 4; k++) {
    EXPECT_EQ(rows[size_t(k)], win[size_t(k)]);       // epoch 0: [1 2 0] waits in the buffer
    EXPECT_EQ(rows[size_t(5 + k)], win[size_t(k)]);   // epoch 1
    EXPECT_EQ(rows[size_t(9 + k)], win[size_t(k)]);   // epoch 2
  }
  EXPECT_EQ(rows[4], (Doc{1, 2, 0, 3, 4, 0, 1, 2, 0}));  // epoch 0's [3 4 0] + epoch 1's [1 2 0]
  EXPECT_EQ(rows[13], (Doc{0, 3, 4, 0, 1, 2, 0, 3, 4}));
}

// The packed token stream of a single-domain loader with batch 1: row k covers stream tokens
// [kT, kT + T], so the rows' first T tokens concatenated are the stream.
Doc packed_stream(Loader& l, int rows) {
  Doc s;
  const int T = l.config().seq_len;
  for (int i = 0; i < rows; i++) {
    const int32_t* r = l.next();
    s.insert(s.end(), r, r + T);
  }
  return s;
}
std::vector<Doc> split_at_eos(const Doc& s) {
  std::vector<Doc> docs(1);
  for (int32_t t : s) {
    if (t == kEos)
      docs.emplace_back();
    else
      docs.back().push_back(t);
  }
  docs.pop_back();  // the unfinished tail
  return docs;
}

// With FIM on, every document in the stream is either itself or fim_layout(doc, a, b) for some
// split points; the rate is as configured; PSM and SPM give their layouts.
TEST(Loader, FimInTheStream) {
  const TempDir dir("ld_fim");
  const std::vector<Doc> docs = make_docs(200, 100, 1, 12, 9);
  const std::string s = write_shard(dir / "s", docs, "web", 20000);
  std::map<int32_t, Doc> by_first;
  for (const auto& d : docs) by_first[d[0]] = d;
  for (FimOrder order : {FimOrder::PSM, FimOrder::SPM}) {
    LoaderConfig c = base_config(1, 32);
    c.fim_rate = 0.5, c.fim_order = order;
    Loader l({{"web", {s}}}, c);
    const std::vector<Doc> seen = split_at_eos(packed_stream(l, 200));
    ASSERT_GT(seen.size(), 300u);
    int fim = 0, plain = 0;
    std::set<std::pair<size_t, size_t>> splits;
    for (const Doc& d : seen) {
      if (d[0] != kFimPre && d[0] != kFimSuf) {
        EXPECT_TRUE(by_first.count(d[0]) && by_first[d[0]] == d);
        plain++;
        continue;
      }
      ASSERT_EQ(d[0], order == FimOrder::PSM ? kFimPre : kFimSuf);
      // The original: the document holding the ids (any id names its document).
      int32_t any = -1;
      for (int32_t t : d)
        if (t >= 100) any = t;
      ASSERT_GE(any, 100);
      const Doc& orig = std::prev(by_first.upper_bound(any))->second;
      ASSERT_EQ(d.size(), orig.size() + 3);
      bool found = false;
      for (size_t a = 0; a <= orig.size() && !found; a++)
        for (size_t b = a; b <= orig.size() && !found; b++)
          if (fim_layout(orig, a, b, c) == d) found = true, splits.insert({a, b});
      EXPECT_TRUE(found) << "a FIM document matches no split of its original";
      fim++;
    }
    const double n = fim + plain;
    EXPECT_LT(std::abs(fim - 0.5 * n), 5 * std::sqrt(n * 0.25)) << fim << " FIM of " << n;
    EXPECT_GT(splits.size(), 20u);  // the split points vary
  }
}

// ---------------------------------------------------------------- order, resume, ranks

struct Corpus {
  static constexpr int64_t kV = 10000;
  TempDir dir{"ld_corpus"};
  std::vector<DomainSpec> domains;
  Corpus() {
    // web: short documents in two shards; code: mostly long documents (windows).
    domains.push_back({"web", {write_shard(dir / "web0", make_docs(30, 1000, 1, 15, 1), "web", kV),
                               write_shard(dir / "web1", make_docs(17, 3000, 1, 15, 2), "web", kV)}});
    domains.push_back(  // 4-byte ids
        {"code", {write_shard(dir / "code0", make_docs(9, 5000, 5, 45, 3), "code", kV, 4)}});
    domains.push_back({"math", {write_shard(dir / "math0", make_docs(5, 7000, 1, 30, 4), "math", kV)}});
  }
};

MixtureConfig schedule_mix() {
  MixtureConfig m;
  m.start_weights = {0.5, 0.3, 0.2};
  m.end_weights = {0.2, 0.3, 0.5};
  m.adaptive_factor = 1.15, m.adaptive_window = 2;
  return m;
}

// Drives a loader as the trainer would: set_step before each batch, a validation loss every 7.
std::vector<Doc> drive(Loader& l, int64_t from, int count) {
  std::vector<Doc> out;
  for (int64_t step = from; step < from + count; step++) {
    l.set_step(step, 100);
    if (step % 7 == 6) l.observe_validation({2.0 + 0.01 * double(step), 2.0, 3.0 - 0.01 * double(step)});
    const std::vector<Doc> b = take(l, 1);
    out.push_back(b[0]);
  }
  return out;
}

TEST(Loader, SameSeedSameBatchesDifferentSeedDifferent) {
  const Corpus corpus;
  LoaderConfig c = base_config(4, 16, 7);
  c.fim_rate = 0.2, c.window_overlap = 2;
  Loader a(corpus.domains, c, schedule_mix());
  Loader b(corpus.domains, c, schedule_mix());
  const std::vector<Doc> ref = drive(a, 0, 60);
  EXPECT_EQ(drive(b, 0, 60), ref);
  c.prefetch = false;  // prefetch changes nothing
  Loader sync(corpus.domains, c, schedule_mix());
  EXPECT_EQ(drive(sync, 0, 60), ref);
  c.seed = 8;
  Loader d(corpus.domains, c, schedule_mix());
  EXPECT_NE(drive(d, 0, 60), ref);
}

// state() after N batches, a fresh Loader restored from it (through JSON text) continues with
// exactly the batches the first one gives, for many N (mid-epoch, mid-window, across epochs),
// with and without prefetch on either side, with FIM on.
TEST(Loader, ResumeIsExact) {
  const Corpus corpus;
  LoaderConfig c = base_config(3, 16, 11);
  c.fim_rate = 0.3, c.window_overlap = 3;
  for (int variant = 0; variant < 4; variant++) {
    LoaderConfig ca = c, cb = c;
    ca.prefetch = variant & 1, cb.prefetch = (variant >> 1) & 1;
    Loader a(corpus.domains, ca, schedule_mix());
    bool saw_window = false, saw_epoch = false;
    for (int n = 0; n < 45; n += (variant == 0 ? 1 : 4)) {
      const std::string saved = a.state().dump();
      const json st = json::parse(saved);
      for (const auto& d : st["domains"]) {
        saw_window |= d["window"].get<uint64_t>() > 0;
        saw_epoch |= d["epoch"].get<uint64_t>() > 0;
      }
      const std::vector<Doc> cont_a = drive(a, n, 6);
      Loader b(corpus.domains, cb, schedule_mix());
      b.restore(json::parse(saved));
      EXPECT_EQ(drive(b, n, 6), cont_a) << "resume after " << n << " batches, variant " << variant;
      EXPECT_EQ(b.rows_per_domain(), a.rows_per_domain());
      EXPECT_EQ(b.weights(), a.weights());
      EXPECT_EQ(b.state(), a.state());
      // a restored to the saved state repeats the same continuation; then on to the next n.
      a.restore(json::parse(saved));
      EXPECT_EQ(drive(a, n, 6), cont_a);
      a.restore(json::parse(saved));
      drive(a, n, variant == 0 ? 1 : 4);
    }
    EXPECT_TRUE(saw_window) << "no state was taken in the middle of a long document";
    EXPECT_TRUE(saw_epoch) << "no state was taken after an epoch boundary";
  }
}

// World 2: each rank's first epoch holds half of the documents; the halves are disjoint and
// together are all the documents.
TEST(Loader, RankPartitionDisjointAndComplete) {
  const TempDir dir("ld_rank");
  const std::vector<Doc> docs = make_docs(25, 100, 1, 9, 21);
  const std::string s = write_shard(dir / "s", docs);
  std::set<Doc> all(docs.begin(), docs.end()), seen_union;
  size_t total = 0;
  for (int rank = 0; rank < 2; rank++) {
    LoaderConfig c = base_config(1, 10, 3);
    c.rank = rank, c.world = 2;
    Loader l({{"web", {s}}}, c);
    EXPECT_EQ(l.domains()[0].rank_docs, rank == 0 ? 13u : 12u);
    const std::vector<Doc> seen = split_at_eos(packed_stream(l, 60));
    ASSERT_GT(seen.size(), 2 * l.domains()[0].rank_docs);
    const std::vector<Doc> epoch0(seen.begin(), seen.begin() + long(l.domains()[0].rank_docs));
    const std::vector<Doc> epoch1(seen.begin() + long(l.domains()[0].rank_docs),
                                  seen.begin() + long(2 * l.domains()[0].rank_docs));
    const std::set<Doc> e0(epoch0.begin(), epoch0.end()), e1(epoch1.begin(), epoch1.end());
    EXPECT_EQ(e0.size(), epoch0.size()) << "a document repeats within an epoch";
    EXPECT_NE(epoch0, epoch1) << "the second epoch has the same order";
    for (const Doc& d : e0) {
      EXPECT_TRUE(all.count(d));
      EXPECT_TRUE(seen_union.insert(d).second) << "a document is on both ranks";
    }
    total += e0.size();
  }
  EXPECT_EQ(seen_union, all);
  EXPECT_EQ(total, docs.size());
  LoaderConfig c = base_config(1, 10);
  c.world = 26;
  c.rank = 25;
  expect_error([&] { Loader({{"web", {s}}}, c); }, {"'web' has 25 documents", "26 ranks"});
}

// ---------------------------------------------------------------- mixing

// Which domain a row came from: each domain's ids live in their own range.
int domain_of(const int32_t* row, int n) {
  for (int i = 0; i < n; i++)
    if (row[i] >= 1000) return row[i] / 2000;  // web 1000.., code 5000.., math 7000.. -> 0/1, 2, 3
  return -1;
}

TEST(Loader, MixingProportionsWithinBinomialBounds) {
  const Corpus corpus;
  MixtureConfig m;
  m.start_weights = {5, 3, 2};
  LoaderConfig c = base_config(32, 16, 5);
  Loader l(corpus.domains, c, m);
  const int batches = 600;
  std::vector<uint64_t> by_content(3, 0);
  const int R = c.seq_len + 1;
  for (int i = 0; i < batches; i++) {
    const int32_t* b = l.next();
    for (int r = 0; r < c.batch; r++) {
      const int k = domain_of(b + r * R, R);
      ASSERT_GE(k, 0);
      by_content[k <= 1 ? 0 : size_t(k - 1)]++;
    }
  }
  const double n = double(batches) * c.batch;
  const std::vector<double> p = {0.5, 0.3, 0.2};
  for (size_t d = 0; d < 3; d++) {
    const double count = double(l.rows_per_domain()[d]);
    const double sigma = std::sqrt(n * p[d] * (1 - p[d]));
    EXPECT_LT(std::abs(count - n * p[d]), 5 * sigma) << "domain " << d << ": " << count;
    EXPECT_EQ(by_content[d], l.rows_per_domain()[d]) << "rows are not from the domain counted";
  }
  const json log = l.log_record();
  EXPECT_NEAR(log["weights"]["web"].get<double>(), 0.5, 1e-12);
  EXPECT_EQ(log["rows"]["code"].get<uint64_t>(), l.rows_per_domain()[1]);
}

TEST(Loader, NaturalWeightsAndScheduleEndpoints) {
  const Corpus corpus;
  Loader nat(corpus.domains, base_config(2, 8));
  double total = 0;
  for (const auto& d : nat.domains()) total += double(d.tokens);
  for (size_t d = 0; d < 3; d++)
    EXPECT_NEAR(nat.weights()[d], double(nat.domains()[d].tokens) / total, 1e-12);

  MixtureConfig m;
  m.start_weights = {1, 0, 0}, m.end_weights = {0, 0, 1};
  LoaderConfig c = base_config(16, 8);
  Loader l(corpus.domains, c, m);
  l.set_step(0, 100);
  take(l, 20);
  EXPECT_EQ(l.rows_per_domain(), (std::vector<uint64_t>{320, 0, 0}));
  l.set_step(100, 100);
  take(l, 20);
  EXPECT_EQ(l.rows_per_domain(), (std::vector<uint64_t>{320, 0, 320}));
  l.set_step(50, 100);
  take(l, 50);
  const double half = double(l.rows_per_domain()[2] - 320);
  EXPECT_LT(std::abs(half - 400), 5 * std::sqrt(800 * 0.25));
}

TEST(Mixture, LinearScheduleEndpoints) {
  MixtureConfig m;
  m.start_weights = {25, 75};  // any scale: normalised
  m.end_weights = {0.18, 0.82};
  Mixture mix({"tech", "web"}, m);
  EXPECT_NEAR(mix.weights_at(0, 1000)[0], 0.25, 1e-12);
  EXPECT_NEAR(mix.weights_at(1000, 1000)[0], 0.18, 1e-12);
  EXPECT_NEAR(mix.weights_at(500, 1000)[0], 0.215, 1e-12);
  EXPECT_NEAR(mix.weights_at(250, 1000)[1], 0.7675, 1e-12);
  EXPECT_NEAR(mix.weights_at(5000, 1000)[0], 0.18, 1e-12);  // clamped after the end
  EXPECT_NEAR(mix.weights_at(10, 0)[0], 0.25, 1e-12);       // no total: start weights
  mix.set_step(1000, 1000);
  EXPECT_NEAR(mix.weights()[0], 0.18, 1e-12);
  Mixture constant({"a", "b"}, MixtureConfig{{1, 3}, {}, 1.0, 3});
  EXPECT_EQ(constant.weights_at(0, 10), constant.weights_at(10, 10));
  expect_error([] { Mixture({"a", "b"}, MixtureConfig{{1}, {}, 1.0, 3}); },
               {"1 weights for 2 domains"});
  expect_error([] { Mixture({"a", "b"}, MixtureConfig{{1, -1}, {}, 1.0, 3}); },
               {"domain 'b'", "-1"});
  expect_error([] { Mixture({"a", "b"}, MixtureConfig{{0, 0}, {}, 1.0, 3}); }, {"all zero"});
  expect_error([] { Mixture({"a", "b"}, MixtureConfig{{1, 1}, {0, 0}, 1.0, 3}); },
               {"end weights are all zero"});
  expect_error([] { Mixture({"a", "b"}, MixtureConfig{{1, 1}, {}, 0.0, 3}); },
               {"adaptive factor"});
  expect_error([] { Mixture({"a", "a"}, MixtureConfig{}); }, {"'a' is listed twice"});
}

// K = 3, factor 1.15: a domain is raised after its loss rose at 3 evaluations in a row; the run
// then restarts from the latest loss; a loss that does not rise restarts it; NaN empties it.
TEST(Mixture, AdaptiveRuleOnHandMadeLosses) {
  MixtureConfig m;
  m.start_weights = {1, 1, 2};
  m.adaptive_factor = 1.15, m.adaptive_window = 3;
  Mixture mix({"a", "b", "c"}, m);
  const std::vector<std::vector<double>> evals = {
      {2.0, 2.0, 2.0}, {2.1, 2.1, 1.9}, {2.2, 2.05, 2.0}, {2.3, 2.2, NAN},  // a raised at eval 3
      {2.4, 2.3, 2.1}, {2.5, 2.4, 2.2}, {2.6, 2.5, 2.3}, {2.5, 2.6, 2.4}};  // a again at 6; b at 5; c at 7
  const std::vector<std::vector<size_t>> want = {{}, {}, {}, {0}, {}, {1}, {0}, {2}};
  for (size_t e = 0; e < evals.size(); e++)
    EXPECT_EQ(mix.observe_validation(evals[e]), want[e]) << "evaluation " << e;
  const double ma = 1.15 * 1.15, mb = 1.15, mc = 1.15;
  EXPECT_DOUBLE_EQ(mix.multipliers()[0], ma);
  EXPECT_DOUBLE_EQ(mix.multipliers()[1], mb);
  EXPECT_DOUBLE_EQ(mix.multipliers()[2], mc);
  const double sum = 0.25 * ma + 0.25 * mb + 0.5 * mc;
  const std::vector<double> w = mix.weights();
  EXPECT_NEAR(w[0], 0.25 * ma / sum, 1e-12);
  EXPECT_NEAR(w[1], 0.25 * mb / sum, 1e-12);
  EXPECT_NEAR(w[2], 0.5 * mc / sum, 1e-12);
  // State round trip: the same future.
  Mixture copy({"a", "b", "c"}, m);
  copy.restore(json::parse(mix.state().dump()));
  EXPECT_EQ(copy.weights(), mix.weights());
  for (const auto& e : std::vector<std::vector<double>>{{2.6, 2.7, 2.5}, {2.7, 2.8, 2.6}})
    EXPECT_EQ(copy.observe_validation(e), mix.observe_validation(e));
  expect_error([&] { mix.observe_validation({1.0}); }, {"1 validation losses for 3 domains"});
  expect_error([&] { Mixture({"a", "b", "x"}, m).restore(mix.state()); }, {"is for domains"});
  // Off (factor 1): nothing moves.
  Mixture off({"a", "b", "c"}, MixtureConfig{{1, 1, 2}, {}, 1.0, 1});
  for (const auto& e : evals) EXPECT_TRUE(off.observe_validation(e).empty());
}

TEST(Mixture, ParseWeights) {
  const std::vector<std::string> names = {"web", "code", "math"};
  EXPECT_EQ(parse_domain_weights("web:0.6, code:0.4", names), (std::vector<double>{0.6, 0.4, 0}));
  EXPECT_EQ(parse_domain_weights(" math:1 ", names), (std::vector<double>{0, 0, 1}));
  EXPECT_EQ(format_domain_weights(names, {0.6, 0.4, 0}), "web:0.6,code:0.4,math:0");
  expect_error([&] { parse_domain_weights("web:0.6,tech:1", names, "--mix"); },
               {"--mix", "unknown domain 'tech'", "web, code, math"});
  expect_error([&] { parse_domain_weights("web:-1", names, "--mix"); }, {"'web'", ">= 0"});
  expect_error([&] { parse_domain_weights("web:0,code:0", names, "--mix"); }, {"all weights are zero"});
  expect_error([&] { parse_domain_weights("web", names, "--mix"); }, {"'web' is not name:weight"});
  expect_error([&] { parse_domain_weights("web:abc", names, "--mix"); }, {"'abc', not a number"});
  expect_error([&] { parse_domain_weights("web:1,web:2", names, "--mix"); }, {"given twice"});
  expect_error([&] { parse_domain_weights("", names, "--mix"); }, {"--mix", "empty"});
  expect_error([&] { parse_domain_weights("web:1,", names, "--mix"); }, {"not name:weight"});
}

// ---------------------------------------------------------------- inputs and errors

TEST(Loader, ReadsLlmcShards) {
  const TempDir dir("ld_llmc");
  const std::string p = (dir / "train.bin").string();
  write_token_file(p, {kEos, 11, 12, 13, kEos, 14, 15, kEos, 16, 17, 18, 19, 20});
  LoaderConfig c = base_config(1, 6);
  c.shuffle = false;
  Loader l({{"fineweb", {p}}}, c);
  EXPECT_EQ(l.domains()[0].docs, 3u);
  const std::vector<Doc> rows = take(l, 2);
  EXPECT_EQ(rows[0], (Doc{11, 12, 13, 0, 14, 15, 0}));
  EXPECT_EQ(rows[1], (Doc{0, 16, 17, 18, 19, 20, 0}));
}

TEST(Loader, BadSettingsAndStatesGiveClearErrors) {
  const Corpus corpus;
  const auto& doms = corpus.domains;
  LoaderConfig c = base_config(2, 8);
  auto with = [&](auto edit) {
    LoaderConfig x = c;
    edit(x);
    return [x, &doms] { Loader l(doms, x); };
  };
  expect_error(with([](LoaderConfig& x) { x.fim_rate = 0.1, x.fim_middle = -1; }),
               {"FIM rate 0.1 needs the fim_prefix, fim_middle and fim_suffix ids"});
  expect_error(with([](LoaderConfig& x) { x.fim_rate = 0.1, x.fim_middle = kEos; }),
               {"four different ids"});
  expect_error(with([](LoaderConfig& x) { x.eos = -1; }), {"EOS id is required"});
  expect_error(with([](LoaderConfig& x) { x.window_overlap = 9; }), {"window overlap 9"});
  expect_error(with([](LoaderConfig& x) { x.rank = 2, x.world = 2; }), {"rank 2"});
  expect_error(with([](LoaderConfig& x) { x.fim_rate = 1.5; }), {"FIM rate 1.5"});
  expect_error(with([](LoaderConfig& x) { x.eos = 7; }), {"written with EOS id 0", "uses 7"});
  expect_error(with([](LoaderConfig& x) { x.fim_rate = 0.1, x.fim_suffix = 20000; }),
               {"FIM id", "vocabulary of 10000"});
  expect_error([&] { Loader({{"web", doms[0].shards}, {"web", doms[1].shards}}, c); },
               {"'web' is listed twice"});
  expect_error([&] { Loader({{"a:b", doms[0].shards}}, c); }, {"'a:b'"});
  expect_error([&] { Loader({{"web", {}}}, c); }, {"'web' has no shard files"});
  expect_error([&] { Loader(doms, c, MixtureConfig{{1, 2}, {}, 1.0, 3}); },
               {"2 weights for 3 domains"});
  const std::string text = (corpus.dir / "notes.txt").string();
  spit(text, "just some text\n");
  expect_error([&] { Loader({{"web", {text}}}, c); }, {"notes.txt", "looks like text"});

  Loader l(doms, c);
  take(l, 5);
  const json st = l.state();
  LoaderConfig other = c;
  other.seq_len = 16;
  expect_error([&] { Loader(doms, other).restore(st); },
               {"saved with seq_len = 8", "this run has 16", "cannot be resumed exactly"});
  other = c, other.world = 2, other.rank = 1;
  expect_error([&] { Loader(doms, other).restore(st); }, {"saved with rank = 0", "this run has 1"});
  other = c, other.batch = 5;  // a different batch size resumes fine
  EXPECT_NO_THROW(Loader(doms, other).restore(st));
  expect_error([&] { Loader({doms[0], doms[1]}, c).restore(st); }, {"3 domains", "has 2"});
  std::vector<DomainSpec> fewer = doms;
  fewer[0].shards.pop_back();
  expect_error([&] { Loader(fewer, c).restore(st); }, {"domain 'web'", "the data changed"});
  json bad = st;
  bad["domains"][1]["cursor"] = 1000;
  expect_error([&] { l.restore(bad); }, {"domain 'code'", "cursor 1000"});
  bad = st;
  bad["domains"][0]["carry"] = "x";
  expect_error([&] { l.restore(bad); }, {"domain 'web'", "malformed"});
  bad = st;
  bad["mix_rng"][2] = 5;
  expect_error([&] { l.restore(bad); }, {"mix_rng"});
  expect_error([&] { l.restore(json{{"steps", 3}}); }, {"not a dsv3 loader state"});
  // A failed restore leaves the loader where it was.
  Loader twin(doms, c);
  take(twin, 5);
  EXPECT_EQ(take(l, 3), take(twin, 3));
}

}  // namespace
}  // namespace dsv3

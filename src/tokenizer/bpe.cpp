#include "tokenizer/bpe.h"

#include <omp.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <queue>
#include <unordered_map>

#include "core/check.h"

namespace dsv3 {

// ---------------------------------------------------------------------------------------------
// Special-token roles

const std::vector<std::string>& special_role_names() {
  static const std::vector<std::string> n = {"bos",        "eos",        "pad",
                                             "fim_prefix", "fim_middle", "fim_suffix"};
  return n;
}

int32_t& role_slot(SpecialRoles& r, const std::string& name) {
  if (name == "bos") return r.bos;
  if (name == "eos") return r.eos;
  if (name == "pad") return r.pad;
  if (name == "fim_prefix") return r.fim_prefix;
  if (name == "fim_middle") return r.fim_middle;
  if (name == "fim_suffix") return r.fim_suffix;
  fail("unknown special-token role '", name,
       "' (roles: bos, eos, pad, fim_prefix, fim_middle, fim_suffix)");
}

int32_t role_id(const SpecialRoles& r, const std::string& name) {
  SpecialRoles copy = r;
  return role_slot(copy, name);
}

SpecialRoles infer_roles(const std::vector<SpecialToken>& specials) {
  // Texts used by GPT-2, Llama, DeepSeek (fullwidth bars, U+2581 for spaces), StarCoder and dsv3.
  static const std::vector<std::pair<std::string, std::vector<std::string>>> known = {
      {"bos",
       {"<|bos|>", "<|endoftext|>", "<s>", "<|begin_of_text|>",
        "<\uff5cbegin\u2581of\u2581sentence\uff5c>", "<bos>"}},
      {"eos",
       {"<|eos|>", "<|endoftext|>", "</s>", "<|end_of_text|>",
        "<\uff5cend\u2581of\u2581sentence\uff5c>", "<eos>"}},
      {"pad", {"<|pad|>", "<pad>", "<\uff5c\u2581pad\u2581\uff5c>", "[PAD]"}},
      {"fim_prefix", {"<|fim_prefix|>", "<fim_prefix>", "<\uff5cfim\u2581begin\uff5c>"}},
      {"fim_suffix", {"<|fim_suffix|>", "<fim_suffix>", "<\uff5cfim\u2581hole\uff5c>"}},
      {"fim_middle", {"<|fim_middle|>", "<fim_middle>", "<\uff5cfim\u2581end\uff5c>"}},
  };
  SpecialRoles r;
  for (const auto& [role, texts] : known) {
    int32_t& slot = role_slot(r, role);
    for (const std::string& text : texts) {  // the first listed text present wins
      for (const SpecialToken& s : specials)
        if (s.text == text) slot = s.id;
      if (slot >= 0) break;
    }
  }
  return r;
}

// ---------------------------------------------------------------------------------------------
// Validation

void validate_tokenizer(const Tokenizer& t, const std::string& where) {
  const size_t V = t.vocab.size();
  DSV3_CHECK(V >= 256 && V < size_t(INT32_MAX), where, ": vocabulary of ", V,
             " ids (a byte-level BPE vocabulary has at least the 256 byte tokens)");
  DSV3_CHECK(!t.pretok.name.empty(), where, ": the pre-tokenizer has no name");
  try {
    Pretokenizer compiles(t.pretok);  // a file's regexes are checked when it is read
  } catch (const Error& e) {
    fail(where, ": ", e.what());
  }
  std::vector<uint8_t> is_special(V, 0);
  std::unordered_map<std::string_view, int32_t> special_text;
  for (const SpecialToken& s : t.specials) {
    DSV3_CHECK(s.id >= 0 && size_t(s.id) < V, where, ": special token '", s.text, "' has id ",
               s.id, ", outside the vocabulary [0, ", V, ")");
    DSV3_CHECK(!s.text.empty(), where, ": special token ", s.id, " has empty text");
    DSV3_CHECK(t.vocab[size_t(s.id)] == s.text, where, ": special token ", s.id, " '", s.text,
               "' does not match the vocabulary entry of its id");
    DSV3_CHECK(!is_special[size_t(s.id)], where, ": id ", s.id, " is listed twice as special");
    DSV3_CHECK(special_text.emplace(s.text, s.id).second, where, ": special token text '", s.text,
               "' is used by two ids");
    is_special[size_t(s.id)] = 1;
  }
  std::unordered_map<std::string_view, int32_t> normal;
  normal.reserve(V);
  int bytes_seen = 0;
  for (size_t id = 0; id < V; id++) {
    const std::string& b = t.vocab[id];
    if (is_special[id] || b.empty()) continue;
    auto [it, fresh] = normal.emplace(b, int32_t(id));
    DSV3_CHECK(fresh, where, ": ids ", it->second, " and ", id, " have the same bytes");
    bytes_seen += b.size() == 1;
  }
  if (bytes_seen != 256) {
    for (int c = 0; c < 256; c++)
      DSV3_CHECK(normal.count(std::string_view(std::string(1, char(c)))), where,
                 ": no token for byte 0x", "0123456789abcdef"[c >> 4], "0123456789abcdef"[c & 15],
                 " (a byte-level BPE vocabulary needs one token per byte value)");
  }
  std::string cat;
  for (size_t r = 0; r < t.merges.size(); r++) {
    const auto [a, b] = t.merges[r];
    for (int32_t x : {a, b})
      DSV3_CHECK(x >= 0 && size_t(x) < V && !is_special[size_t(x)] && !t.vocab[size_t(x)].empty(),
                 where, ": merge ", r, " uses id ", x,
                 ", which is not an ordinary token of the vocabulary");
    cat = t.vocab[size_t(a)] + t.vocab[size_t(b)];
    DSV3_CHECK(normal.count(std::string_view(cat)), where, ": merge ", r, " (ids ", a, " + ", b,
               ") makes a token that is not in the vocabulary");
  }
  for (const std::string& name : special_role_names()) {
    const int32_t id = role_id(t.roles, name);
    DSV3_CHECK(id == -1 || (id >= 0 && size_t(id) < V && is_special[size_t(id)]), where,
               ": role ", name, " names id ", id, ", which is not a special token");
  }
}

// ---------------------------------------------------------------------------------------------
// Lookup tables

namespace {

inline uint64_t mix64(uint64_t x) {
  x ^= x >> 32;
  x *= 0xd6e8feb86659fd93ull;
  x ^= x >> 32;
  x *= 0xd6e8feb86659fd93ull;
  x ^= x >> 32;
  return x;
}

inline uint64_t hash_bytes(const char* p, size_t n) {
  uint64_t h = 0x9e3779b97f4a7c15ull ^ (n * 0xff51afd7ed558ccdull);
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    h = (h ^ v) * 0xbf58476d1ce4e5b9ull;
    h ^= h >> 29;
    p += 8, n -= 8;
  }
  uint64_t v = 0;
  for (size_t i = 0; i < n; i++) v |= uint64_t(uint8_t(p[i])) << (8 * i);
  return mix64(h ^ v);
}

inline size_t table_size(size_t n) {
  size_t cap = 16;
  while (cap < 2 * n) cap <<= 1;
  return cap;
}

// Token bytes -> id, open addressing; the bytes live in the vocabulary.
struct TokenMap {
  struct Slot {
    uint32_t tag = 0;  // high hash bits, to skip most byte comparisons
    int32_t id = -1;
  };
  std::vector<Slot> slots;
  size_t mask = 0;
  const std::vector<std::string>* vocab = nullptr;

  void build(const std::vector<std::string>& v, const std::vector<uint8_t>& use) {
    vocab = &v;
    slots.assign(table_size(v.size()), Slot{});
    mask = slots.size() - 1;
    for (size_t id = 0; id < v.size(); id++) {
      if (!use[id]) continue;
      const uint64_t h = hash_bytes(v[id].data(), v[id].size());
      size_t i = h & mask;
      while (slots[i].id >= 0) i = (i + 1) & mask;
      slots[i] = {uint32_t(h >> 32), int32_t(id)};
    }
  }
  int32_t find(std::string_view s) const {
    const uint64_t h = hash_bytes(s.data(), s.size());
    const uint32_t tag = uint32_t(h >> 32);
    for (size_t i = h & mask;; i = (i + 1) & mask) {
      const Slot& sl = slots[i];
      if (sl.id < 0) return -1;
      if (sl.tag == tag) {
        const std::string& t = (*vocab)[size_t(sl.id)];
        if (t.size() == s.size() && std::memcmp(t.data(), s.data(), s.size()) == 0) return sl.id;
      }
    }
  }
};

constexpr uint32_t kNoRank = UINT32_MAX;

// (left id, right id) -> (rank, merged id), open addressing.
struct PairMap {
  struct Slot {
    uint64_t key = UINT64_MAX;
    uint32_t rank = kNoRank;
    int32_t merged = -1;
  };
  std::vector<Slot> slots;
  size_t mask = 0;

  static uint64_t key(int32_t a, int32_t b) { return uint64_t(uint32_t(a)) << 32 | uint32_t(b); }
  void reserve(size_t n) {
    slots.assign(table_size(n), Slot{});
    mask = slots.size() - 1;
  }
  void insert_first(int32_t a, int32_t b, uint32_t rank, int32_t merged) {  // keeps the first
    const uint64_t k = key(a, b);
    size_t i = mix64(k) & mask;
    while (slots[i].key != UINT64_MAX) {
      if (slots[i].key == k) return;
      i = (i + 1) & mask;
    }
    slots[i] = {k, rank, merged};
  }
  const Slot* find(int32_t a, int32_t b) const {
    const uint64_t k = key(a, b);
    for (size_t i = mix64(k) & mask;; i = (i + 1) & mask) {
      const Slot& s = slots[i];
      if (s.key == k) return &s;
      if (s.key == UINT64_MAX) return nullptr;
    }
  }
};

}  // namespace

struct Encoder::Index {
  TokenMap tokens;                    // ordinary tokens
  PairMap pairs;
  std::array<int32_t, 256> byte_id{};
  std::vector<uint8_t> direct;        // 1: a piece equal to this token encodes to it directly
  // Special tokens by first byte, longest text first, for the allow_special scan.
  std::array<std::vector<int32_t>, 256> specials_by_first;
};

// ---------------------------------------------------------------------------------------------
// The merge loop

namespace {

// Pieces up to this many bytes use the quadratic scan (tiktoken's loop: tiny arrays, no heap);
// longer ones a heap over a linked list, O(n log n), so a megabyte-long word cannot stall.
constexpr size_t kSmallPiece = 128;

void merge_small(const PairMap& pairs, const std::array<int32_t, 256>& byte_id,
                 std::string_view piece, std::vector<int32_t>& out) {
  const size_t n = piece.size();
  int32_t ids[kSmallPiece];
  uint32_t rank[kSmallPiece];  // rank[i]: of the pair (ids[i], ids[i+1])
  int32_t made[kSmallPiece];   // made[i]: the id that pair merges into
  for (size_t i = 0; i < n; i++) ids[i] = byte_id[uint8_t(piece[i])];
  auto look = [&](size_t i) {
    const PairMap::Slot* s = pairs.find(ids[i], ids[i + 1]);
    rank[i] = s ? s->rank : kNoRank;
    made[i] = s ? s->merged : -1;
  };
  size_t m = n;
  for (size_t i = 0; i + 1 < m; i++) look(i);
  while (m > 1) {
    size_t best = 0;
    uint32_t best_rank = kNoRank;
    for (size_t i = 0; i + 1 < m; i++)
      if (rank[i] < best_rank) best_rank = rank[i], best = i;  // strict <: leftmost on ties
    if (best_rank == kNoRank) break;
    ids[best] = made[best];
    for (size_t i = best + 1; i + 1 < m; i++) {
      ids[i] = ids[i + 1];
      rank[i] = rank[i + 1];
      made[i] = made[i + 1];
    }
    m--;
    if (best > 0) look(best - 1);
    if (best + 1 < m) look(best);
  }
  out.insert(out.end(), ids, ids + m);
}

void merge_large(const PairMap& pairs, const std::array<int32_t, 256>& byte_id,
                 std::string_view piece, std::vector<int32_t>& out) {
  const int32_t n = int32_t(piece.size());
  // Node i starts at byte i; ids[i] < 0 once it has been merged into its left neighbour.
  std::vector<int32_t> ids(static_cast<size_t>(n)), prev(ids.size()), next(ids.size());
  for (int32_t i = 0; i < n; i++) {
    ids[size_t(i)] = byte_id[uint8_t(piece[size_t(i)])];
    prev[size_t(i)] = i - 1;
    next[size_t(i)] = i + 1;
  }
  using Entry = std::pair<uint32_t, int32_t>;  // (rank, left node): min-heap = leftmost lowest
  std::priority_queue<Entry, std::vector<Entry>, std::greater<Entry>> heap;
  auto push = [&](int32_t i) {
    if (i < 0) return;
    const int32_t j = next[size_t(i)];
    if (j >= n) return;
    if (const PairMap::Slot* s = pairs.find(ids[size_t(i)], ids[size_t(j)])) heap.push({s->rank, i});
  };
  for (int32_t i = 0; i + 1 < n; i++) push(i);
  while (!heap.empty()) {
    const auto [r, i] = heap.top();
    heap.pop();
    if (ids[size_t(i)] < 0) continue;
    const int32_t j = next[size_t(i)];
    if (j >= n) continue;
    const PairMap::Slot* s = pairs.find(ids[size_t(i)], ids[size_t(j)]);
    if (!s || s->rank != r) continue;  // stale: a neighbour changed since this was pushed
    ids[size_t(i)] = s->merged;
    ids[size_t(j)] = -1;
    next[size_t(i)] = next[size_t(j)];
    if (next[size_t(j)] < n) prev[size_t(next[size_t(j)])] = i;
    push(prev[size_t(i)]);
    push(i);
  }
  for (int32_t i = 0; i < n; i = next[size_t(i)]) out.push_back(ids[size_t(i)]);
}

void merge_piece(const PairMap& pairs, const std::array<int32_t, 256>& byte_id,
                 std::string_view piece, std::vector<int32_t>& out) {
  if (piece.size() <= kSmallPiece) merge_small(pairs, byte_id, piece, out);
  else merge_large(pairs, byte_id, piece, out);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Encoder

Encoder::Encoder(Tokenizer t, const std::string& where) : t_(std::move(t)) {
  validate_tokenizer(t_, where);
  try {
    pre_ = std::make_unique<Pretokenizer>(t_.pretok);
  } catch (const Error& e) {
    fail(where, ": ", e.what());
  }
  ix_ = std::make_unique<Index>();
  Index& ix = *ix_;
  const size_t V = t_.vocab.size();
  std::vector<uint8_t> ordinary(V, 1);
  for (const SpecialToken& s : t_.specials) ordinary[size_t(s.id)] = 0;
  for (size_t id = 0; id < V; id++)
    if (t_.vocab[id].empty()) ordinary[id] = 0;
  ix.tokens.build(t_.vocab, ordinary);
  for (int c = 0; c < 256; c++) ix.byte_id[size_t(c)] = ix.tokens.find(std::string(1, char(c)));

  ix.pairs.reserve(t_.merges.size());
  std::string cat;
  for (size_t r = 0; r < t_.merges.size(); r++) {
    const auto [a, b] = t_.merges[r];
    cat = t_.vocab[size_t(a)] + t_.vocab[size_t(b)];
    ix.pairs.insert_first(a, b, uint32_t(r), ix.tokens.find(cat));
  }

  // Whole-piece shortcut: exact under ignore_merges by definition, and otherwise for every token
  // that merging its own bytes reproduces (all of them in a vocabulary a BPE trainer made).
  ix.direct.assign(V, 0);
  std::vector<int32_t> got;
  for (size_t id = 0; id < V; id++) {
    if (!ordinary[id] || t_.vocab[id].size() < 2) continue;
    got.clear();
    merge_piece(ix.pairs, ix.byte_id, t_.vocab[id], got);
    const bool self = got.size() == 1 && got[0] == int32_t(id);
    unreachable_ += !self;
    ix.direct[id] = t_.ignore_merges || self;
  }

  std::vector<SpecialToken> sorted = t_.specials;
  std::stable_sort(sorted.begin(), sorted.end(), [](const SpecialToken& a, const SpecialToken& b) {
    return a.text.size() > b.text.size();
  });
  for (const SpecialToken& s : sorted) ix.specials_by_first[uint8_t(s.text[0])].push_back(s.id);
}

Encoder::~Encoder() = default;

void Encoder::encode_piece(std::string_view piece, std::vector<int32_t>& out) const {
  const Index& ix = *ix_;
  if (piece.size() == 1) {
    out.push_back(ix.byte_id[uint8_t(piece[0])]);
    return;
  }
  const int32_t id = ix.tokens.find(piece);
  if (id >= 0 && ix.direct[size_t(id)]) {
    out.push_back(id);
    return;
  }
  merge_piece(ix.pairs, ix.byte_id, piece, out);
}

void Encoder::encode_ordinary(std::string_view text, std::vector<int32_t>& out) const {
  pre_->split(text, [&](std::string_view piece) { encode_piece(piece, out); });
}

std::vector<int32_t> Encoder::encode(std::string_view text, const EncodeOptions& o) const {
  // Cut out special tokens first (when allowed); the ordinary stretches between them are
  // independent texts for the pre-tokenizer, as in tiktoken and HF.
  struct Segment {
    std::string_view text;
    int32_t special = -1;
  };
  std::vector<Segment> segs;
  if (o.allow_special && !t_.specials.empty()) {
    size_t start = 0;
    for (size_t i = 0; i < text.size();) {
      int32_t hit = -1;
      for (int32_t id : ix_->specials_by_first[uint8_t(text[i])]) {
        const std::string& s = t_.vocab[size_t(id)];
        if (text.compare(i, s.size(), s) == 0) {
          hit = id;
          break;
        }
      }
      if (hit < 0) {
        i++;
        continue;
      }
      if (i > start) segs.push_back({text.substr(start, i - start)});
      segs.push_back({{}, hit});
      i += t_.vocab[size_t(hit)].size();
      start = i;
    }
    if (start < text.size()) segs.push_back({text.substr(start)});
  } else {
    segs.push_back({text});
  }

  // Long stretches are cut between words into chunks that pre-tokenise exactly as the whole
  // (see safe_cuts) and encoded in parallel; concatenating the chunks' ids gives the same ids.
  constexpr size_t kMinChunk = 64 * 1024;
  std::vector<int32_t> out;
  out.reserve(text.size() / 3);
  for (const Segment& seg : segs) {
    if (seg.special >= 0) {
      out.push_back(seg.special);
      continue;
    }
    const int threads = std::max(1, o.threads);
    const int parts =
        threads == 1 ? 1 : int(std::min<size_t>(size_t(threads) * 8, seg.text.size() / kMinChunk));
    const std::vector<size_t> cuts = safe_cuts(*pre_, seg.text, parts);
    if (cuts.empty()) {
      encode_ordinary(seg.text, out);
      continue;
    }
    std::vector<std::string_view> chunks;
    size_t prev = 0;
    for (size_t c : cuts) chunks.push_back(seg.text.substr(prev, c - prev)), prev = c;
    chunks.push_back(seg.text.substr(prev));
    std::vector<std::vector<int32_t>> ids(chunks.size());
    std::exception_ptr error;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (size_t i = 0; i < chunks.size(); i++) {
      try {
        ids[i].reserve(chunks[i].size() / 3);
        encode_ordinary(chunks[i], ids[i]);
      } catch (...) {
#pragma omp critical
        error = std::current_exception();
      }
    }
    if (error) std::rethrow_exception(error);
    for (const auto& v : ids) out.insert(out.end(), v.begin(), v.end());
  }
  return out;
}

std::string Encoder::decode(std::span<const int32_t> ids) const {
  const int32_t V = vocab_size();
  size_t total = 0;
  for (size_t i = 0; i < ids.size(); i++) {
    const int32_t id = ids[i];
    DSV3_CHECK(id >= 0 && id < V, "cannot decode token ", i, ": id ", id,
               " is outside the vocabulary [0, ", V, ")");
    const std::string& b = t_.vocab[size_t(id)];
    DSV3_CHECK(!b.empty(), "cannot decode token ", i, ": id ", id,
               " is a hole in the vocabulary (no token has it)");
    total += b.size();
  }
  std::string out;
  out.reserve(total);
  for (int32_t id : ids) out += t_.vocab[size_t(id)];
  return out;
}

}  // namespace dsv3

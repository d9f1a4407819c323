#include "tokenizer/bpe_train.h"

#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <queue>

#include "core/check.h"
#include "core/io.h"
#include "core/timer.h"

namespace dsv3 {

std::vector<std::string> default_special_texts(int reserved) {
  std::vector<std::string> s = {"<|bos|>",        "<|eos|>",        "<|pad|>",
                                "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
                                "<|system|>",     "<|user|>",       "<|assistant|>",
                                "<|end_of_turn|>"};
  for (int i = 0; i < reserved; i++) s.push_back("<|reserved_" + std::to_string(i) + "|>");
  return s;
}

void count_pieces(const Pretokenizer& pre, std::string_view text, int threads, WordCounts& counts,
                  TrainReport* report) {
  constexpr size_t kMinChunk = 256 * 1024;
  threads = std::max(1, threads);
  const int parts = threads == 1 ? 1 : int(std::min<size_t>(size_t(threads) * 4, text.size() / kMinChunk));
  const std::vector<size_t> cuts = safe_cuts(pre, text, parts);
  std::vector<std::string_view> chunks;
  size_t prev = 0;
  for (size_t c : cuts) chunks.push_back(text.substr(prev, c - prev)), prev = c;
  chunks.push_back(text.substr(prev));
  // Each chunk counts into its own map of views into `text`; the maps are then summed.
  std::vector<std::unordered_map<std::string_view, int64_t>> local(chunks.size());
  std::vector<int64_t> pieces(chunks.size(), 0);
  std::exception_ptr error;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
  for (size_t i = 0; i < chunks.size(); i++) {
    try {
      pre.split(chunks[i], [&](std::string_view p) {
        local[i][p]++;
        pieces[i]++;
      });
    } catch (...) {
#pragma omp critical
      error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
  for (size_t i = 0; i < chunks.size(); i++) {
    for (const auto& [w, c] : local[i]) counts[std::string(w)] += c;
    if (report) report->pieces += pieces[i];
  }
  if (report) report->bytes += int64_t(text.size());
}

namespace {

inline uint64_t pair_key(int32_t a, int32_t b) { return uint64_t(uint32_t(a)) << 32 | uint32_t(b); }

// A heap entry; the heap may hold stale counts (only ever too high), fixed when popped.
struct Candidate {
  int64_t count;
  int32_t a, b;
  // std::priority_queue pops the largest: higher count, then smaller (a, b).
  bool operator<(const Candidate& o) const {
    if (count != o.count) return count < o.count;
    if (a != o.a) return a > o.a;
    return b > o.b;
  }
};

}  // namespace

Tokenizer train_bpe(const WordCounts& counts, const TrainOptions& o, TrainReport* report) {
  const double t0 = now_seconds();
  const int n_special = int(o.specials.size());
  DSV3_CHECK(o.vocab_size >= 256 + n_special, "vocab_size ", o.vocab_size,
             " is too small: it must hold the 256 byte tokens and ", n_special, " special tokens");
  DSV3_CHECK(o.min_frequency >= 1, "min_frequency must be at least 1, got ", o.min_frequency);

  // Words in one arena: word w is sym[start[w] .. start[w] + len[w]); merging only shrinks it.
  std::vector<int32_t> sym;
  std::vector<uint64_t> start;
  std::vector<uint32_t> len;
  std::vector<int64_t> freq;
  {
    // Sorted so the arena layout (and with it the order of work) does not depend on hashing.
    std::vector<std::pair<std::string_view, int64_t>> sorted(counts.begin(), counts.end());
    std::sort(sorted.begin(), sorted.end());
    for (const auto& [w, c] : sorted) {
      if (w.size() < 2) continue;  // a single byte has no pairs
      DSV3_CHECK(w.size() < UINT32_MAX, "a piece of ", w.size(), " bytes is too long to train on");
      start.push_back(sym.size());
      len.push_back(uint32_t(w.size()));
      freq.push_back(c);
      for (char ch : w) sym.push_back(uint8_t(ch));
    }
    if (report) report->words += int64_t(counts.size());
  }
  const size_t W = freq.size();

  std::vector<std::string> vocab(256);
  for (int c = 0; c < 256; c++) vocab[size_t(c)] = std::string(1, char(c));
  std::unordered_map<std::string, int32_t> id_of;
  for (int c = 0; c < 256; c++) id_of[vocab[size_t(c)]] = c;

  // Pair counts and, per pair, the words it may occur in (entries can be stale: a word that lost
  // the pair is skipped when visited).
  std::unordered_map<uint64_t, int64_t> pair_count;
  std::unordered_map<uint64_t, std::vector<int32_t>> where;
  for (size_t w = 0; w < W; w++) {
    const int32_t* s = sym.data() + start[w];
    for (uint32_t i = 0; i + 1 < len[w]; i++) {
      const uint64_t k = pair_key(s[i], s[i + 1]);
      pair_count[k] += freq[w];
      auto& list = where[k];
      if (list.empty() || list.back() != int32_t(w)) list.push_back(int32_t(w));
    }
  }
  std::priority_queue<Candidate> heap;
  for (const auto& [k, c] : pair_count) heap.push({c, int32_t(k >> 32), int32_t(uint32_t(k))});

  std::vector<std::pair<int32_t, int32_t>> merges;
  std::vector<int32_t> stamp(W, -1);  // last merge that rewrote the word
  std::vector<uint64_t> grown;        // pairs whose count rose during this merge
  const size_t target = size_t(o.vocab_size - n_special);
  bool by_frequency = false;
  double last_progress = now_seconds();

  while (vocab.size() < target) {
    // The best pair: pop until an entry's count is current.
    Candidate best{0, 0, 0};
    bool found = false;
    while (!heap.empty()) {
      const Candidate c = heap.top();
      heap.pop();
      auto it = pair_count.find(pair_key(c.a, c.b));
      const int64_t actual = it == pair_count.end() ? 0 : it->second;
      if (actual == c.count) {
        best = c, found = true;
        break;
      }
      if (actual > 0 && actual < c.count) heap.push({actual, c.a, c.b});
    }
    if (!found || best.count < o.min_frequency) {
      by_frequency = true;
      break;
    }
    const int32_t a = best.a, b = best.b;
    std::string bytes = vocab[size_t(a)] + vocab[size_t(b)];
    int32_t made;
    if (auto it = id_of.find(bytes); it != id_of.end()) {
      made = it->second;
    } else {
      made = int32_t(vocab.size());
      id_of.emplace(bytes, made);
      vocab.push_back(std::move(bytes));
    }
    const int32_t merge_no = int32_t(merges.size());
    merges.push_back({a, b});

    const uint64_t ab = pair_key(a, b);
    std::vector<int32_t> words = std::move(where[ab]);
    where.erase(ab);
    pair_count.erase(ab);
    grown.clear();
    auto change = [&](int32_t x, int32_t y, int64_t d) {
      const uint64_t k = pair_key(x, y);
      if (k == ab) return;  // its count is gone with it
      pair_count[k] += d;
      if (d > 0) grown.push_back(k);
    };
    for (int32_t w : words) {
      if (stamp[size_t(w)] == merge_no) continue;
      stamp[size_t(w)] = merge_no;
      int32_t* s = sym.data() + start[size_t(w)];
      const uint32_t n = len[size_t(w)];
      const int64_t f = freq[size_t(w)];
      // Rewrite in place, left to right: out <= i always. Around each occurrence the pairs with
      // the neighbours move from a / b to the new token; the previous neighbour is s[out - 1],
      // which may itself be a token made earlier in this same pass.
      uint32_t out = 0;
      bool any = false;
      for (uint32_t i = 0; i < n;) {
        if (i + 1 < n && s[i] == a && s[i + 1] == b) {
          any = true;
          if (out > 0) {
            change(s[out - 1], a, -f);
            change(s[out - 1], made, f);
          }
          if (i + 2 < n) {
            change(b, s[i + 2], -f);
            change(made, s[i + 2], f);
          }
          s[out++] = made;
          i += 2;
        } else {
          s[out++] = s[i++];
        }
      }
      len[size_t(w)] = out;
      if (!any) continue;
      for (uint32_t i = 0; i + 1 < out; i++)
        if (s[i] == made || s[i + 1] == made) {
          auto& list = where[pair_key(s[i], s[i + 1])];
          if (list.empty() || list.back() != w) list.push_back(w);
        }
    }
    std::sort(grown.begin(), grown.end());
    grown.erase(std::unique(grown.begin(), grown.end()), grown.end());
    for (uint64_t k : grown) {
      const int64_t c = pair_count[k];
      if (c > 0) heap.push({c, int32_t(k >> 32), int32_t(uint32_t(k))});
    }
    if (o.progress && now_seconds() - last_progress > 5) {
      last_progress = now_seconds();
      std::fprintf(stderr, "  %zu merges, vocabulary %zu of %zu, last pair count %lld\n",
                   merges.size(), vocab.size(), target, (long long)best.count);
    }
  }

  Tokenizer t;
  t.pretok = pretok_preset(o.pretokenizer);
  t.vocab = std::move(vocab);
  t.merges = std::move(merges);
  for (const std::string& s : o.specials) {
    DSV3_CHECK(!s.empty(), "special tokens cannot be empty");
    t.specials.push_back({int32_t(t.vocab.size()), s});
    t.vocab.push_back(s);
  }
  t.roles = infer_roles(t.specials);
  validate_tokenizer(t, "trained tokenizer");
  if (report) {
    report->merges = int64_t(t.merges.size());
    report->merge_seconds += now_seconds() - t0;
    report->stopped_by_frequency = by_frequency;
  }
  return t;
}

Tokenizer train_bpe_files(const std::vector<std::string>& files, const TrainOptions& o,
                          TrainReport* report) {
  DSV3_CHECK(!files.empty(), "no input files to train on");
  const Pretokenizer pre(pretok_preset(o.pretokenizer));
  WordCounts counts;
  TrainReport local;
  TrainReport& r = report ? *report : local;
  const double t0 = now_seconds();
  for (const std::string& f : files) {
    const std::string text = read_file(f);
    count_pieces(pre, text, o.threads, counts, &r);
  }
  r.count_seconds += now_seconds() - t0;
  if (o.progress)
    std::fprintf(stderr, "counted %lld pieces (%zu distinct) in %lld bytes of %zu files: %.1f s\n",
                 (long long)r.pieces, counts.size(), (long long)r.bytes, files.size(),
                 r.count_seconds);
  return train_bpe(counts, o, &r);
}

}  // namespace dsv3

#include "curate/dedup.h"

#include <xxhash.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/check.h"
#include "core/rng.h"
#include "curate/text.h"

namespace dsv3::curate {

Hash128 exact_hash(std::string_view text) {
  const XXH128_hash_t h = XXH3_128bits(text.data(), text.size());
  return {h.low64, h.high64};
}

void validate(const MinHashConfig& c) {
  DSV3_CHECK(c.ngram >= 1 && c.ngram <= 32, "minhash_ngram must be in 1..32, not ", c.ngram);
  DSV3_CHECK(c.num_perm >= 1 && c.num_perm <= 4096, "minhash_perm must be in 1..4096, not ",
             c.num_perm);
  DSV3_CHECK(c.bands >= 1 && c.rows >= 1, "minhash_bands and minhash_rows must be >= 1");
  DSV3_CHECK(c.bands * c.rows <= c.num_perm, "minhash_bands x minhash_rows (", c.bands, " x ",
             c.rows, ") exceeds minhash_perm (", c.num_perm, ")");
  DSV3_CHECK(c.threshold >= 0 && c.threshold <= 1, "minhash_threshold must be in [0, 1], not ",
             c.threshold);
}

double lsh_candidate_probability(double j, int bands, int rows) {
  return 1.0 - std::pow(1.0 - std::pow(j, rows), bands);
}

MinHasher::MinHasher(const MinHashConfig& c) : c_(c) {
  validate(c);
  Rng rng(c.seed ^ 0x6d696e68617368ull);  // same parameters on every rank for the same seed
  a_.resize(size_t(c.num_perm));
  b_.resize(size_t(c.num_perm));
  for (int i = 0; i < c.num_perm; i++) {
    a_[size_t(i)] = rng.next_u64() | 1;
    b_[size_t(i)] = rng.next_u64();
  }
}

namespace {

// min over permutations, vectorised: 64-bit multiply-add, keep the high half.
inline void update_min(uint32_t* __restrict mins, const uint64_t* __restrict a,
                       const uint64_t* __restrict b, uint64_t x, int k) {
  for (int i = 0; i < k; i++) {
    const uint32_t v = uint32_t((a[i] * x + b[i]) >> 32);
    mins[i] = v < mins[i] ? v : mins[i];
  }
}

}  // namespace

void MinHasher::signature(std::string_view text, uint16_t* sig) const {
  thread_local std::string simple;
  thread_local std::vector<std::pair<uint32_t, uint32_t>> words;
  thread_local std::vector<uint64_t> wh;
  thread_local std::vector<uint32_t> mins;
  const int k = int(a_.size());
  simplify_words(text, simple, words);
  wh.resize(words.size());
  for (size_t i = 0; i < words.size(); i++)
    wh[i] = XXH3_64bits(simple.data() + words[i].first, words[i].second - words[i].first);
  mins.assign(size_t(k), 0xFFFFFFFFu);
  const size_t n = size_t(c_.ngram);
  if (!wh.empty()) {
    // a shingle's hash is xxh3 over its words' hashes, so "a b" + "c" differs from "a" + "b c"
    const size_t count = wh.size() >= n ? wh.size() - n + 1 : 1;
    const size_t width = std::min(n, wh.size());
    for (size_t i = 0; i < count; i++) {
      const uint64_t x = XXH3_64bits(wh.data() + i, width * sizeof(uint64_t));
      update_min(mins.data(), a_.data(), b_.data(), x, k);
    }
  }
  for (int i = 0; i < k; i++) sig[i] = uint16_t(mins[size_t(i)]);
  if (wh.empty()) std::fill(sig, sig + k, uint16_t(0xFFFF));
}

double estimate_jaccard(const uint16_t* x, const uint16_t* y, int num_perm) {
  int eq = 0;
  for (int i = 0; i < num_perm; i++) eq += x[i] == y[i];
  const double f = double(eq) / num_perm, c = 1.0 / 65536;
  return std::max(0.0, (f - c) / (1 - c));
}

UnionFind::UnionFind(size_t n) : parent(n) { std::iota(parent.begin(), parent.end(), 0u); }

uint32_t UnionFind::find(uint32_t x) {
  while (parent[x] != x) {
    parent[x] = parent[parent[x]];  // path halving
    x = parent[x];
  }
  return x;
}

bool UnionFind::unite(uint32_t a, uint32_t b) {
  a = find(a);
  b = find(b);
  if (a == b) return false;
  if (a < b) parent[b] = a;
  else parent[a] = b;
  return true;
}

std::vector<uint32_t> exact_clusters(const std::vector<Hash128>& hashes) {
  const size_t n = hashes.size();
  std::vector<uint32_t> order(n), first(n);
  std::iota(order.begin(), order.end(), 0u);
  // stable: equal hashes stay in document order, so the group's first is the survivor
  std::stable_sort(order.begin(), order.end(),
                   [&](uint32_t x, uint32_t y) { return hashes[x] < hashes[y]; });
  for (size_t i = 0; i < n;) {
    size_t j = i;
    while (j < n && hashes[order[j]] == hashes[order[i]]) j++;
    for (size_t q = i; q < j; q++) first[order[q]] = order[i];
    i = j;
  }
  return first;
}

std::vector<uint32_t> minhash_clusters(const std::vector<uint16_t>& sigs, size_t n,
                                       const MinHashConfig& c, NearDupStats* stats) {
  validate(c);
  const size_t k = size_t(c.num_perm);
  DSV3_CHECK(sigs.size() == n * k, "minhash signatures: ", sigs.size(), " values for ", n,
             " documents of ", k);
  // Each band yields its merge edges independently of the others (no shared union-find while
  // they run), so the edges, and hence the clusters, do not depend on thread or rank count.
  std::vector<std::vector<std::pair<uint32_t, uint32_t>>> edges(size_t(c.bands));
  std::vector<uint64_t> checked(size_t(c.bands), 0);
  const bool verify = c.threshold > 0;
  // Members of one bucket are compared with at most this many cluster representatives of the
  // bucket: a bucket of 10^4 copies of a template costs 10^4 x 8 comparisons, not 10^8.
  constexpr size_t kMaxReps = 8;
#pragma omp parallel for schedule(dynamic, 1)
  for (int band = 0; band < c.bands; band++) {
    std::vector<std::pair<uint64_t, uint32_t>> keys(n);
    for (size_t d = 0; d < n; d++)
      keys[d] = {XXH3_64bits_withSeed(&sigs[d * k + size_t(band) * size_t(c.rows)],
                                      size_t(c.rows) * sizeof(uint16_t), uint64_t(band)),
                 uint32_t(d)};
    std::sort(keys.begin(), keys.end());
    auto& out = edges[size_t(band)];
    std::vector<uint32_t> reps;
    for (size_t i = 0; i < n;) {
      size_t j = i + 1;
      while (j < n && keys[j].first == keys[i].first) j++;
      if (j - i > 1) {
        reps.clear();
        reps.push_back(keys[i].second);
        for (size_t q = i + 1; q < j; q++) {
          const uint32_t d = keys[q].second;
          bool joined = false;
          for (uint32_t r : reps) {
            if (verify) {
              checked[size_t(band)]++;
              if (estimate_jaccard(&sigs[size_t(r) * k], &sigs[size_t(d) * k], int(k)) <
                  c.threshold)
                continue;
            }
            out.emplace_back(r, d);
            joined = true;
            break;
          }
          if (!joined && reps.size() < kMaxReps) reps.push_back(d);
        }
      }
      i = j;
    }
  }
  UnionFind uf(n);
  uint64_t merged = 0, cand = 0;
  for (int band = 0; band < c.bands; band++) {
    cand += checked[size_t(band)];
    for (const auto& [a, b] : edges[size_t(band)]) merged += uf.unite(a, b);
  }
  if (stats) {
    stats->candidate_pairs += cand;
    stats->merged_pairs += merged;
  }
  std::vector<uint32_t> root(n);
  for (size_t d = 0; d < n; d++) root[d] = uf.find(uint32_t(d));
  return root;
}

}  // namespace dsv3::curate

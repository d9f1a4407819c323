// Deduplication (D6): exact (a 128-bit hash of the normalised text) and near-duplicate
// MinHash-LSH over word 5-grams with union-find. Both are global: the pipeline gathers the keys
// of every document from every rank, and every rank computes the same clusters from them, so
// one process and N processes drop exactly the same documents. The survivor of a cluster is its
// first document in input order.
//
// MinHash here (docs/curation.md has the derivation):
//  - shingles: word n-grams (n = 5) of datatrove's simplify_text (lower-case, no punctuation,
//    no accents, numbers -> 0), each hashed with xxh3-64;
//  - num_perm hash functions h_i(x) = (a_i x + b_i) >> 32 over 64-bit shingle hashes
//    (multiply-shift, a_i odd; the shingle hashes are already random, so these behave as
//    independent permutations, and they vectorise);
//  - the signature keeps the low 16 bits of each minimum (b-bit MinHash, Li & Koenig 2010):
//    half the memory, and P(two 16-bit values agree) = J + (1 - J) 2^-16;
//  - LSH: `bands` bands of `rows` values; documents sharing any band are candidates;
//  - verification (threshold > 0): a candidate pair is merged only if the fraction of equal
//    signature values, an unbiased estimate of J with standard deviation sqrt(J(1-J)/num_perm),
//    is >= threshold. With threshold = 0 every candidate pair is merged (datatrove's behaviour).
#pragma once
#include <cstdint>
#include <string_view>
#include <vector>

namespace dsv3::curate {

struct Hash128 {
  uint64_t lo = 0, hi = 0;
  bool operator==(const Hash128& o) const { return lo == o.lo && hi == o.hi; }
  bool operator<(const Hash128& o) const { return hi != o.hi ? hi < o.hi : lo < o.lo; }
};
Hash128 exact_hash(std::string_view text);

struct MinHashConfig {
  int ngram = 5;
  int num_perm = 128;
  int bands = 32;
  int rows = 4;
  double threshold = 0.7;  // estimated Jaccard needed to merge a candidate pair; 0 = any band
  uint64_t seed = 1;
};
void validate(const MinHashConfig& c);  // bands * rows <= num_perm, sizes in range

// Probability that LSH makes a pair with Jaccard similarity j a candidate: 1 - (1 - j^r)^b.
double lsh_candidate_probability(double j, int bands, int rows);

class MinHasher {
 public:
  explicit MinHasher(const MinHashConfig& c);
  // num_perm 16-bit values. A text with fewer than `ngram` words has one shingle of all its
  // words; an empty one gets all 0xFFFF.
  void signature(std::string_view text, uint16_t* sig) const;
  int num_perm() const { return int(a_.size()); }

 private:
  MinHashConfig c_;
  std::vector<uint64_t> a_, b_;
};

// Fraction of equal positions, corrected for 16-bit collisions: an estimate of Jaccard.
double estimate_jaccard(const uint16_t* x, const uint16_t* y, int num_perm);

struct UnionFind {
  std::vector<uint32_t> parent;
  explicit UnionFind(size_t n);
  uint32_t find(uint32_t x);
  // The smaller index becomes the root, so a cluster's root is its first document.
  bool unite(uint32_t a, uint32_t b);
};

struct NearDupStats {
  uint64_t candidate_pairs = 0;  // pairs checked against the threshold
  uint64_t merged_pairs = 0;     // pairs that joined two clusters
};
// sigs: n rows of num_perm values, in global document order. Returns, for each document, the
// index of its cluster's first document (itself if it is the survivor).
std::vector<uint32_t> minhash_clusters(const std::vector<uint16_t>& sigs, size_t n,
                                       const MinHashConfig& c, NearDupStats* stats);

// Exact duplicates: for hashes in document order, the index of the first equal hash.
std::vector<uint32_t> exact_clusters(const std::vector<Hash128>& hashes);

}  // namespace dsv3::curate

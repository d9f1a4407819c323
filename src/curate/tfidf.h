// Domain relevance (D7, seed): TF-IDF cosine similarity of each document to a target-domain
// sample. Terms are the words of datatrove's simplify_text, hashed into 2^log2_features
// buckets (the hashing trick: no vocabulary to build or ship). Weights follow scikit-learn's
// TfidfVectorizer(sublinear_tf=True, smooth_idf=True): (1 + ln tf) * (ln((1 + N)/(1 + df)) + 1),
// L2-normalised. Document frequencies come from the corpus being curated (all ranks' counts are
// summed), so words common everywhere weigh little; the target is summarised by the normalised
// mean of its documents' vectors (a centroid), and a document's score is its cosine with it.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace dsv3::curate {

using SparseVec = std::vector<std::pair<uint32_t, float>>;  // (bucket, value), sorted by bucket

// Bucket -> count for one text; sorted by bucket.
void term_counts(std::string_view text, int log2_features, SparseVec& out);

struct Idf {
  std::vector<float> weight;  // per bucket
  uint64_t docs = 0;
};
// df: per-bucket document frequencies over `docs` documents.
Idf make_idf(const std::vector<uint64_t>& df, uint64_t docs);

// The TF-IDF vector of a text, L2-normalised (empty if the text has no words).
void tfidf_vector(std::string_view text, int log2_features, const Idf& idf, SparseVec& out);

// Normalised mean of the vectors of `texts` (dense, one value per bucket).
std::vector<float> tfidf_centroid(const std::vector<std::string>& texts, int log2_features,
                                  const Idf& idf);

inline double cosine(const SparseVec& v, const std::vector<float>& dense) {
  double s = 0;
  for (const auto& [b, x] : v) s += double(x) * dense[b];
  return s;
}

// A dense `dim`-dimensional sketch of a sparse vector for clustering: signed feature hashing
// (Weinberger et al. 2009), which preserves inner products in expectation; L2-normalised.
void project(const SparseVec& v, int dim, float* out);

}  // namespace dsv3::curate

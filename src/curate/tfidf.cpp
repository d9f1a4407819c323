#include "curate/tfidf.h"

#include <xxhash.h>

#include <algorithm>
#include <cmath>

#include "curate/text.h"

namespace dsv3::curate {

void term_counts(std::string_view text, int log2_features, SparseVec& out) {
  thread_local std::string simple;
  thread_local std::vector<std::pair<uint32_t, uint32_t>> words;
  thread_local std::vector<uint32_t> buckets;
  simplify_words(text, simple, words);
  const uint32_t mask = (1u << log2_features) - 1;
  buckets.clear();
  for (const auto& [b, e] : words)
    buckets.push_back(uint32_t(XXH3_64bits(simple.data() + b, e - b)) & mask);
  std::sort(buckets.begin(), buckets.end());
  out.clear();
  for (size_t i = 0; i < buckets.size();) {
    size_t j = i;
    while (j < buckets.size() && buckets[j] == buckets[i]) j++;
    out.emplace_back(buckets[i], float(j - i));
    i = j;
  }
}

Idf make_idf(const std::vector<uint64_t>& df, uint64_t docs) {
  Idf idf;
  idf.docs = docs;
  idf.weight.resize(df.size());
  for (size_t b = 0; b < df.size(); b++)
    idf.weight[b] = float(std::log((1.0 + double(docs)) / (1.0 + double(df[b]))) + 1.0);
  return idf;
}

void tfidf_vector(std::string_view text, int log2_features, const Idf& idf, SparseVec& out) {
  term_counts(text, log2_features, out);
  double norm = 0;
  for (auto& [b, x] : out) {
    x = float((1.0 + std::log(double(x))) * idf.weight[b]);
    norm += double(x) * x;
  }
  if (norm > 0) {
    const float inv = float(1.0 / std::sqrt(norm));
    for (auto& e : out) e.second *= inv;
  }
}

std::vector<float> tfidf_centroid(const std::vector<std::string>& texts, int log2_features,
                                  const Idf& idf) {
  std::vector<double> sum(size_t(1) << log2_features, 0.0);
  SparseVec v;
  for (const auto& t : texts) {
    tfidf_vector(t, log2_features, idf, v);
    for (const auto& [b, x] : v) sum[b] += x;
  }
  double norm = 0;
  for (double x : sum) norm += x * x;
  std::vector<float> c(sum.size(), 0.0f);
  if (norm > 0)
    for (size_t b = 0; b < sum.size(); b++) c[b] = float(sum[b] / std::sqrt(norm));
  return c;
}

void project(const SparseVec& v, int dim, float* out) {
  std::fill(out, out + dim, 0.0f);
  for (const auto& [b, x] : v) {
    const uint64_t h = XXH3_64bits_withSeed(&b, sizeof b, 0x70726f6aull);
    out[h % uint64_t(dim)] += (h >> 63) ? -x : x;
  }
  double norm = 0;
  for (int i = 0; i < dim; i++) norm += double(out[i]) * out[i];
  if (norm > 0) {
    const float inv = float(1.0 / std::sqrt(norm));
    for (int i = 0; i < dim; i++) out[i] *= inv;
  }
}

}  // namespace dsv3::curate

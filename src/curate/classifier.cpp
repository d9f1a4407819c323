#include "curate/classifier.h"

#include <xxhash.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include <nlohmann/json.hpp>

#include "core/check.h"
#include "core/io.h"
#include "core/rng.h"
#include "curate/text.h"

namespace dsv3::curate {

namespace {
constexpr char kMagic[8] = {'D', 'S', 'V', '3', 'C', 'L', 'S', '1'};
constexpr uint32_t kVersion = 1;
}  // namespace

void validate(const ClassifierConfig& c) {
  DSV3_CHECK(c.dim >= 1 && c.dim <= 1024, "classifier dim must be in 1..1024, not ", c.dim);
  DSV3_CHECK(c.log2_buckets >= 8 && c.log2_buckets <= 26,
             "classifier log2_buckets must be in 8..26, not ", c.log2_buckets);
  DSV3_CHECK(c.word_ngrams >= 1 && c.word_ngrams <= 3, "word_ngrams must be 1, 2 or 3");
  DSV3_CHECK(c.minn >= 0 && c.maxn >= c.minn && c.maxn <= 8, "need 0 <= minn <= maxn <= 8");
  DSV3_CHECK(c.epochs >= 1, "epochs must be >= 1");
  DSV3_CHECK(c.lr > 0, "lr must be > 0");
  DSV3_CHECK(c.max_words >= 1, "max_words must be >= 1");
}

int ClassifierModel::label_index(const std::string& name) const {
  for (size_t i = 0; i < labels.size(); i++)
    if (labels[i] == name) return int(i);
  return -1;
}

void classifier_features(std::string_view text, const ClassifierConfig& c,
                         std::vector<uint32_t>& feats) {
  thread_local std::string simple;
  thread_local std::vector<std::pair<uint32_t, uint32_t>> words;
  thread_local std::string marked;
  simplify_words(text, simple, words);
  if (words.size() > size_t(c.max_words)) words.resize(size_t(c.max_words));
  const uint32_t mask = (1u << c.log2_buckets) - 1;
  feats.clear();
  uint64_t prev = 0, prev2 = 0;
  for (size_t i = 0; i < words.size(); i++) {
    const std::string_view w(simple.data() + words[i].first, words[i].second - words[i].first);
    const uint64_t h = XXH3_64bits_withSeed(w.data(), w.size(), 1);
    feats.push_back(uint32_t(h) & mask);
    if (c.word_ngrams >= 2 && i >= 1) {
      const uint64_t pair[2] = {prev, h};
      feats.push_back(uint32_t(XXH3_64bits_withSeed(pair, sizeof pair, 2)) & mask);
    }
    if (c.word_ngrams >= 3 && i >= 2) {
      const uint64_t tri[3] = {prev2, prev, h};
      feats.push_back(uint32_t(XXH3_64bits_withSeed(tri, sizeof tri, 3)) & mask);
    }
    prev2 = prev;
    prev = h;
    if (c.minn > 0) {
      // character n-grams of "<word>", on code point boundaries
      marked.assign("<");
      marked.append(w);
      marked += '>';
      thread_local std::vector<uint32_t> starts;
      starts.clear();
      for (size_t k = 0; k < marked.size(); k++)
        if ((static_cast<unsigned char>(marked[k]) & 0xC0) != 0x80) starts.push_back(uint32_t(k));
      starts.push_back(uint32_t(marked.size()));
      const size_t cps = starts.size() - 1;
      for (size_t a = 0; a < cps; a++)
        for (int n = c.minn; n <= c.maxn && a + size_t(n) <= cps; n++) {
          if (n == int(cps)) continue;  // the whole "<word>" is the word feature already
          feats.push_back(uint32_t(XXH3_64bits_withSeed(marked.data() + starts[a],
                                                        starts[a + size_t(n)] - starts[a], 4)) &
                          mask);
        }
    }
  }
}

namespace {

// hidden = mean of feature rows; p = softmax(out . hidden)
void forward(const ClassifierModel& m, const std::vector<uint32_t>& feats, std::vector<float>& h,
             std::vector<float>& p) {
  const int d = m.config.dim, L = int(m.labels.size());
  h.assign(size_t(d), 0.0f);
  for (uint32_t f : feats) {
    const float* row = &m.emb[size_t(f) * size_t(d)];
    for (int i = 0; i < d; i++) h[size_t(i)] += row[i];
  }
  if (!feats.empty())
    for (auto& x : h) x /= float(feats.size());
  p.assign(size_t(L), 0.0f);
  float mx = -1e30f;
  for (int l = 0; l < L; l++) {
    float s = 0;
    for (int i = 0; i < d; i++) s += m.out[size_t(l) * size_t(d) + size_t(i)] * h[size_t(i)];
    p[size_t(l)] = s;
    mx = std::max(mx, s);
  }
  float z = 0;
  for (auto& x : p) z += (x = std::exp(x - mx));
  for (auto& x : p) x /= z;
}

}  // namespace

ClassifierModel train_classifier(const std::vector<LabelledText>& data,
                                 const std::vector<std::string>& labels,
                                 const ClassifierConfig& c, TrainReport* report) {
  validate(c);
  DSV3_CHECK(labels.size() >= 2, "a classifier needs at least two labels, got ", labels.size());
  DSV3_CHECK(!data.empty(), "no training examples");
  ClassifierModel m;
  m.config = c;
  m.labels = labels;
  const size_t rows = size_t(1) << c.log2_buckets, d = size_t(c.dim), L = labels.size();
  m.emb.resize(rows * d);
  m.out.assign(L * d, 0.0f);  // fastText: output zero, input uniform(-1/dim, 1/dim)
  Rng rng(c.seed);
  for (auto& x : m.emb) x = (rng.uniform() * 2 - 1) / float(c.dim);
  // features once: training reads each example `epochs` times
  std::vector<std::vector<uint32_t>> feats(data.size());
#pragma omp parallel for schedule(dynamic, 16)
  for (size_t i = 0; i < data.size(); i++) classifier_features(data[i].text, c, feats[i]);
  std::vector<size_t> order(data.size());
  std::iota(order.begin(), order.end(), size_t(0));
  std::vector<float> h, p, gh(d);
  const double total = double(c.epochs) * double(data.size());
  double step = 0, loss = 0;
  size_t correct = 0;
  for (int ep = 0; ep < c.epochs; ep++) {
    for (size_t i = order.size(); i > 1; i--) std::swap(order[i - 1], order[rng.below(i)]);
    loss = 0;
    correct = 0;
    for (size_t idx : order) {
      const auto& f = feats[idx];
      const int y = data[idx].label;
      const float lr = float(c.lr * (1.0 - step / total));
      step += 1;
      forward(m, f, h, p);
      loss += -std::log(std::max(p[size_t(y)], 1e-12f));
      correct += size_t(std::max_element(p.begin(), p.end()) - p.begin()) == size_t(y);
      if (f.empty()) continue;
      std::fill(gh.begin(), gh.end(), 0.0f);
      for (size_t l = 0; l < L; l++) {
        const float g = p[l] - (int(l) == y ? 1.0f : 0.0f);  // d loss / d logit
        float* o = &m.out[l * d];
        for (size_t k = 0; k < d; k++) {
          gh[k] += g * o[k];
          o[k] -= lr * g * h[k];
        }
      }
      const float scale = lr / float(f.size());
      for (uint32_t r : f) {
        float* row = &m.emb[size_t(r) * d];
        for (size_t k = 0; k < d; k++) row[k] -= scale * gh[k];
      }
    }
  }
  if (report) {
    report->final_loss = loss / double(data.size());
    report->train_accuracy = double(correct) / double(data.size());
  }
  return m;
}

void classifier_predict(const ClassifierModel& m, std::string_view text, std::vector<float>& p) {
  thread_local std::vector<uint32_t> feats;
  thread_local std::vector<float> h;
  classifier_features(text, m.config, feats);
  forward(m, feats, h, p);
}

double classifier_accuracy(const ClassifierModel& m, const std::vector<LabelledText>& data) {
  if (data.empty()) return 0;
  size_t correct = 0;
#pragma omp parallel for reduction(+ : correct) schedule(dynamic, 16)
  for (size_t i = 0; i < data.size(); i++) {
    std::vector<float> p;
    classifier_predict(m, data[i].text, p);
    correct += size_t(std::max_element(p.begin(), p.end()) - p.begin()) == size_t(data[i].label);
  }
  return double(correct) / double(data.size());
}

void save_classifier(const std::string& path, const ClassifierModel& m) {
  const auto& c = m.config;
  uint32_t crc = crc32_update(0, m.emb.data(), m.emb.size() * sizeof(float));
  crc = crc32_update(crc, m.out.data(), m.out.size() * sizeof(float));
  nlohmann::json h = {{"config",
                       {{"dim", c.dim}, {"log2_buckets", c.log2_buckets},
                        {"word_ngrams", c.word_ngrams}, {"minn", c.minn}, {"maxn", c.maxn},
                        {"epochs", c.epochs}, {"lr", c.lr}, {"seed", c.seed},
                        {"max_words", c.max_words}}},
                      {"labels", m.labels},
                      {"crc32", crc}};
  const std::string header = h.dump();
  write_file_atomic(path, [&](std::FILE* f) {
    write_bytes(f, kMagic, 8);
    write_u32le(f, kVersion);
    write_u32le(f, crc32_update(0, header.data(), header.size()));
    write_u64le(f, header.size());
    write_bytes(f, header.data(), header.size());
    write_bytes(f, m.emb.data(), m.emb.size() * sizeof(float));
    write_bytes(f, m.out.data(), m.out.size() * sizeof(float));
  });
}

ClassifierModel load_classifier(const std::string& path) {
  InFile in(path);
  char magic[8];
  DSV3_CHECK(in.size() >= 24, path, ": too short to be a dsv3 classifier (", in.size(),
             " bytes)");
  in.read_at(0, magic, 8);
  DSV3_CHECK(std::memcmp(magic, kMagic, 8) == 0, path,
             " is not a dsv3 classifier (train one with `dsv3 curate train-classifier`); it looks "
             "like ",
             sniff_file_kind(path).empty() ? "an unknown format" : sniff_file_kind(path));
  unsigned char head[16];
  in.read_at(8, head, 16);
  const uint32_t version = load_u32le(head), hcrc = load_u32le(head + 4);
  const uint64_t hlen = load_u64le(head + 8);
  DSV3_CHECK(version == kVersion, path, ": classifier format version ", version,
             " (this build reads ", kVersion, ")");
  DSV3_CHECK(hlen < in.size(), path, ": header length ", hlen, " exceeds the file");
  const std::string header = in.read_string(24, size_t(hlen));
  DSV3_CHECK(crc32_update(0, header.data(), header.size()) == hcrc, path,
             ": header checksum mismatch (corrupt file)");
  ClassifierModel m;
  try {
    const auto h = nlohmann::json::parse(header);
    const auto& c = h.at("config");
    m.config.dim = c.at("dim");
    m.config.log2_buckets = c.at("log2_buckets");
    m.config.word_ngrams = c.at("word_ngrams");
    m.config.minn = c.at("minn");
    m.config.maxn = c.at("maxn");
    m.config.epochs = c.at("epochs");
    m.config.lr = c.at("lr");
    m.config.seed = c.at("seed");
    m.config.max_words = c.at("max_words");
    m.labels = h.at("labels").get<std::vector<std::string>>();
    validate(m.config);
    const uint32_t crc = h.at("crc32");
    const size_t rows = size_t(1) << m.config.log2_buckets, d = size_t(m.config.dim);
    m.emb.resize(rows * d);
    m.out.resize(m.labels.size() * d);
    const uint64_t need = 24 + hlen + (m.emb.size() + m.out.size()) * sizeof(float);
    DSV3_CHECK(in.size() == need, path, ": ", in.size(), " bytes, expected ", need,
               " (truncated or corrupt)");
    in.read_at(24 + hlen, m.emb.data(), m.emb.size() * sizeof(float));
    in.read_at(24 + hlen + m.emb.size() * sizeof(float), m.out.data(),
               m.out.size() * sizeof(float));
    uint32_t got = crc32_update(0, m.emb.data(), m.emb.size() * sizeof(float));
    got = crc32_update(got, m.out.data(), m.out.size() * sizeof(float));
    DSV3_CHECK(got == crc, path, ": payload checksum mismatch (corrupt file)");
  } catch (const nlohmann::json::exception& e) {
    fail(path, ": bad classifier header: ", e.what());
  }
  return m;
}

}  // namespace dsv3::curate

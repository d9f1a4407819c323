// Deduplication (D6), relevance and diversity (D7), the classifier (D4) and the reader (D1) as
// units: MinHash estimates against true Jaccard, the LSH formula against simulation, clusters
// and survivors, k-means selection, TF-IDF ordering, classifier training and its file format,
// compressed inputs, globs and oversized records.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>

#include "core/check.h"
#include "curate/classifier.h"
#include "curate/dedup.h"
#include "curate/kmeans.h"
#include "curate/tfidf.h"
#include "curate/writer.h"
#include "curate_test_util.h"
#include "data/reader.h"

namespace dsv3::curate {
namespace {

using test::jaccard;
using test::shingles;

std::string random_doc(Rng& r, size_t n) {
  std::string s;
  for (size_t i = 0; i < n; i++) {
    if (i) s += ' ';
    for (int c = 0; c < 5; c++) s += char('a' + r.below(26));
  }
  return s;
}

TEST(CurateDedup, ExactHashAndClusters) {
  EXPECT_EQ(exact_hash("abc"), exact_hash("abc"));
  EXPECT_FALSE(exact_hash("abc") == exact_hash("abd"));
  const std::vector<Hash128> h = {exact_hash("a"), exact_hash("b"), exact_hash("a"),
                                  exact_hash("c"), exact_hash("b")};
  EXPECT_EQ(exact_clusters(h), (std::vector<uint32_t>{0, 1, 0, 3, 1}));
}

TEST(CurateDedup, UnionFindKeepsTheFirstAsRoot) {
  UnionFind uf(6);
  uf.unite(4, 2);
  uf.unite(5, 4);
  uf.unite(3, 1);
  EXPECT_EQ(uf.find(5), 2u);
  EXPECT_EQ(uf.find(3), 1u);
  uf.unite(5, 3);
  EXPECT_EQ(uf.find(2), 1u);
  EXPECT_EQ(uf.find(0), 0u);
}

TEST(CurateDedup, SignatureEstimatesJaccard) {
  // Estimated J over pairs of known J: within 4 standard deviations sqrt(J(1-J)/k).
  MinHashConfig c;
  MinHasher mh(c);
  Rng r(3);
  std::vector<uint16_t> sa(size_t(c.num_perm)), sb(size_t(c.num_perm));
  double worst = 0;
  for (int t = 0; t < 60; t++) {
    const std::string a = random_doc(r, 300);
    double j = 0;
    const std::string b = test::near_duplicate(a, 0.2 + 0.75 * (t % 16) / 15.0, r, &j);
    mh.signature(a, sa.data());
    mh.signature(b, sb.data());
    const double est = estimate_jaccard(sa.data(), sb.data(), c.num_perm);
    const double sd = std::sqrt(std::max(j * (1 - j), 0.01) / c.num_perm);
    worst = std::max(worst, std::abs(est - j) / sd);
    EXPECT_NEAR(est, j, 4 * sd) << "true J " << j;
  }
  // identical texts up to case and punctuation: identical signatures
  mh.signature("The cat, the HAT; the bat!", sa.data());
  mh.signature("the cat the hat the bat", sb.data());
  EXPECT_EQ(sa, sb);
}

TEST(CurateDedup, LshCandidateProbabilityMatchesSimulation) {
  // 1 - (1 - J^r)^b for b=32, r=4 against independent Bernoulli rows
  Rng r(5);
  for (double j : {0.5, 0.8}) {
    int hits = 0;
    const int trials = 4000;
    for (int t = 0; t < trials; t++) {
      bool any = false;
      for (int b = 0; b < 32 && !any; b++) {
        bool all = true;
        for (int k = 0; k < 4; k++) all &= r.uniform() < j;
        any = all;
      }
      hits += any;
    }
    EXPECT_NEAR(double(hits) / trials, lsh_candidate_probability(j, 32, 4), 0.03) << j;
  }
  EXPECT_NEAR(lsh_candidate_probability(0.8, 14, 8), 0.924, 0.001);  // datatrove's default
}

TEST(CurateDedup, ClustersMergeNearAndKeepDistant) {
  MinHashConfig c;
  MinHasher mh(c);
  Rng r(11);
  std::vector<std::string> docs;
  std::vector<int> group;
  for (int g = 0; g < 40; g++) {
    const std::string base = random_doc(r, 200);
    docs.push_back(base);
    group.push_back(g);
    double j = 0;
    docs.push_back(test::near_duplicate(base, 0.9, r, &j));  // same cluster
    group.push_back(g);
    docs.push_back(test::near_duplicate(base, 0.3, r, &j));  // its own
    group.push_back(1000 + g);
  }
  std::vector<uint16_t> sigs(docs.size() * size_t(c.num_perm));
  for (size_t i = 0; i < docs.size(); i++) mh.signature(docs[i], &sigs[i * size_t(c.num_perm)]);
  NearDupStats st;
  const auto root = minhash_clusters(sigs, docs.size(), c, &st);
  for (size_t i = 0; i < docs.size(); i++) {
    if (group[i] < 1000 && i % 3 == 1) EXPECT_EQ(root[i], i - 1) << i;  // merged, base survives
    else EXPECT_EQ(root[i], i) << i;
  }
  EXPECT_GT(st.candidate_pairs, 0u);
  // the same clusters whatever the thread count (bands are independent)
  omp_set_num_threads(1);
  EXPECT_EQ(minhash_clusters(sigs, docs.size(), c, nullptr), root);
  omp_set_num_threads(2);
  MinHashConfig bad = c;
  bad.bands = 40;
  EXPECT_THROW(validate(bad), Error);
}

TEST(CurateKmeans, SelectsFromEveryClusterNearestFirst) {
  // three blobs of 100, 30 and 5 points in 2-D
  Rng r(2);
  std::vector<float> x;
  const float centres[3][2] = {{0, 0}, {10, 0}, {0, 10}};
  const int sizes[3] = {100, 30, 5};
  for (int c = 0; c < 3; c++)
    for (int i = 0; i < sizes[c]; i++) {
      x.push_back(centres[c][0] + r.normal() * 0.5f);
      x.push_back(centres[c][1] + r.normal() * 0.5f);
    }
  KMeansConfig kc;
  kc.k = 3;
  const KMeansResult km = kmeans(x.data(), 135, 2, kc);
  // each blob is one cluster
  for (int i = 1; i < 100; i++) EXPECT_EQ(km.assign[size_t(i)], km.assign[0]);
  for (int i = 101; i < 130; i++) EXPECT_EQ(km.assign[size_t(i)], km.assign[100]);
  EXPECT_NE(km.assign[0], km.assign[100]);
  EXPECT_NE(km.assign[0], km.assign[130]);
  const auto sel = select_diverse(km, 15);
  ASSERT_EQ(sel.size(), 15u);
  int per[3] = {0, 0, 0};
  for (uint32_t i : sel) per[i < 100 ? 0 : i < 130 ? 1 : 2]++;
  EXPECT_EQ(per[0], 5);  // round-robin: every blob gets a share, the small one all it has
  EXPECT_EQ(per[1], 5);
  EXPECT_EQ(per[2], 5);
  // within a blob the chosen are the nearest to its centre
  float worst_chosen = 0, best_other = 1e9f;
  for (int i = 0; i < 100; i++) {
    const bool chosen = std::find(sel.begin(), sel.end(), uint32_t(i)) != sel.end();
    if (chosen) worst_chosen = std::max(worst_chosen, km.dist2[size_t(i)]);
    else best_other = std::min(best_other, km.dist2[size_t(i)]);
  }
  EXPECT_LE(worst_chosen, best_other);
  EXPECT_EQ(select_diverse(km, 500).size(), 135u);
}

TEST(CurateTfidf, TargetDomainScoresHigher) {
  const std::vector<std::string> target = {
      "the gradient descent optimizer updates the model weights with the learning rate",
      "training a neural network needs a loss function, gradients and an optimizer"};
  const std::vector<std::string> corpus = {
      "the neural network was trained with stochastic gradient descent and a small learning rate",
      "the recipe needs two eggs, flour, butter and a pinch of salt; bake for twenty minutes",
      "the match ended in a draw after the striker missed a penalty in the final minute"};
  const int L = 16;
  std::vector<uint64_t> df(size_t(1) << L, 0);
  SparseVec v;
  for (const auto& d : corpus) {
    term_counts(d, L, v);
    for (const auto& [b, x] : v) df[b]++;
  }
  const Idf idf = make_idf(df, corpus.size());
  const auto centroid = tfidf_centroid(target, L, idf);
  std::vector<double> score;
  for (const auto& d : corpus) {
    tfidf_vector(d, L, idf, v);
    score.push_back(cosine(v, centroid));
  }
  EXPECT_GT(score[0], 0.2);
  EXPECT_GT(score[0], 3 * score[1]);
  EXPECT_GT(score[0], 3 * score[2]);
  tfidf_vector(target[0], L, idf, v);
  std::vector<float> p(64);
  project(v, 64, p.data());
  double n2 = 0;
  for (float f : p) n2 += double(f) * f;
  EXPECT_NEAR(n2, 1.0, 1e-5);
}

TEST(CurateClassifier, LearnsSeparatesAndRoundTrips) {
  // "hq": encyclopaedic sentences; "lq": spammy boilerplate. Held-out accuracy must be high.
  Rng r(9);
  const char* hq_words[] = {"history", "river", "century", "population", "empire", "science",
                            "university", "published", "research", "government", "language"};
  const char* lq_words[] = {"click", "buy", "now", "free", "cheap", "deal", "subscribe", "win",
                            "offer", "limited", "casino"};
  auto make = [&](const char** w, int n) {
    std::string s;
    for (int i = 0; i < 30; i++) s += std::string(i ? " " : "") + w[r.below(uint64_t(n))];
    return s;
  };
  std::vector<LabelledText> train, valid;
  for (int i = 0; i < 400; i++) {
    auto& dst = i % 5 == 4 ? valid : train;
    dst.push_back({make(hq_words, 11), 0});
    dst.push_back({make(lq_words, 11), 1});
  }
  ClassifierConfig c;
  c.log2_buckets = 14;
  TrainReport rep;
  const ClassifierModel m = train_classifier(train, {"hq", "lq"}, c, &rep);
  EXPECT_GT(rep.train_accuracy, 0.95);
  EXPECT_GT(classifier_accuracy(m, valid), 0.98);
  // deterministic: the same data and seed give the same weights
  const ClassifierModel m2 = train_classifier(train, {"hq", "lq"}, c, nullptr);
  EXPECT_EQ(m.emb, m2.emb);
  // file round trip, and a corrupt file is refused by name
  const auto dir = test::temp_dir("curate_cls");
  const std::string path = (dir / "m.dsv3cls").string();
  save_classifier(path, m);
  const ClassifierModel back = load_classifier(path);
  EXPECT_EQ(back.labels, m.labels);
  EXPECT_EQ(back.emb, m.emb);
  EXPECT_EQ(back.out, m.out);
  std::string bytes = test::read_file_bytes(path);
  bytes[bytes.size() / 2] ^= 1;
  test::write_text(dir / "bad.dsv3cls", bytes);
  EXPECT_THROW(load_classifier((dir / "bad.dsv3cls").string()), Error);
  std::filesystem::remove_all(dir);
}

// --- reader ------------------------------------------------------------------------------------
std::vector<RawRecord> read_all(const std::string& path, const ReaderConfig& cfg) {
  RecordReader rr(path, cfg);
  std::vector<RawRecord> out;
  RawRecord r;
  while (rr.next(r)) out.push_back(r);
  return out;
}

TEST(CurateReader, CompressionUnitsGlobsAndLimits) {
  const auto dir = test::temp_dir("curate_reader");
  const std::string lines = "{\"text\":\"a\"}\n\n{\"text\":\"b\"}\r\n{\"text\":\"c\"}";
  test::write_text(dir / "p.jsonl", lines);
  test::write_gz(dir / "g.jsonl.gz", lines);
  test::write_zst(dir / "z.jsonl.zst", lines);
  for (const char* f : {"p.jsonl", "g.jsonl.gz", "z.jsonl.zst"}) {
    const auto recs = read_all((dir / f).string(), {});
    ASSERT_EQ(recs.size(), 3u) << f;
    EXPECT_EQ(recs[1].data, "{\"text\":\"b\"}") << f;
    EXPECT_EQ(recs[1].line, 3u) << f;
  }
  // a truncated zstd file is an error naming it
  std::string z = test::read_file_bytes((dir / "z.jsonl.zst").string());
  test::write_text(dir / "cut.jsonl.zst", z.substr(0, z.size() - 6));
  EXPECT_THROW(read_all((dir / "cut.jsonl.zst").string(), {}), Error);
  // text units
  test::write_text(dir / "t.txt", "para one\nstill one\n\n\npara two\n");
  ReaderConfig rc;
  EXPECT_EQ(read_all((dir / "t.txt").string(), rc).size(), 1u);
  rc.text_unit = TextUnit::Paragraph;
  auto paras = read_all((dir / "t.txt").string(), rc);
  ASSERT_EQ(paras.size(), 2u);
  EXPECT_EQ(paras[0].data, "para one\nstill one");
  EXPECT_EQ(paras[1].line, 5u);
  rc.text_unit = TextUnit::Line;
  EXPECT_EQ(read_all((dir / "t.txt").string(), rc).size(), 3u);
  // an oversized record is skipped without being held, and the next one is intact
  test::write_text(dir / "big.jsonl", "{\"text\":\"" + std::string(5000, 'x') + "\"}\n{\"text\":\"ok\"}\n");
  ReaderConfig small;
  small.max_doc_bytes = 1000;
  auto big = read_all((dir / "big.jsonl").string(), small);
  ASSERT_EQ(big.size(), 2u);
  EXPECT_TRUE(big[0].too_large);
  EXPECT_TRUE(big[0].data.empty());
  EXPECT_EQ(big[0].bytes, 5011u);
  EXPECT_EQ(big[1].data, "{\"text\":\"ok\"}");
  // globs, directories, order
  std::filesystem::create_directories(dir / "sub" / "deep");
  test::write_text(dir / "sub" / "x.txt", "x");
  test::write_text(dir / "sub" / "deep" / "y.txt", "y");
  test::write_text(dir / "sub" / ".hidden.txt", "h");
  const std::string d = dir.string();
  EXPECT_EQ(expand_inputs({d + "/sub/**/*.txt"}),
            (std::vector<std::string>{d + "/sub/deep/y.txt", d + "/sub/x.txt"}));
  EXPECT_EQ(expand_inputs({d + "/sub/*.txt"}), (std::vector<std::string>{d + "/sub/x.txt"}));
  EXPECT_EQ(expand_inputs({d + "/sub", d + "/sub/x.txt"}),
            (std::vector<std::string>{d + "/sub/deep/y.txt", d + "/sub/x.txt"}));
  EXPECT_THROW(expand_inputs({d + "/nope/*.txt"}), Error);
  EXPECT_TRUE(glob_match("/a/**/b/*.py", "/a/x/y/b/c.py"));
  EXPECT_TRUE(glob_match("/a/**/*.py", "/a/c.py"));
  EXPECT_FALSE(glob_match("/a/*.py", "/a/x/c.py"));
  std::filesystem::remove_all(dir);
}

TEST(CurateReader, ParseRecordReportsEveryProblem) {
  ReaderConfig cfg;
  Document doc;
  std::string detail;
  auto parse = [&](const std::string& s, InputFormat f = InputFormat::Jsonl) {
    RawRecord r;
    r.data = s;
    r.line = 7;
    r.bytes = s.size();
    return parse_record(r, f, cfg, "in.jsonl", doc, detail);
  };
  EXPECT_EQ(parse("{\"text\":\"hi\",\"id\":5,\"src\":\"w\"}"), 0u);
  EXPECT_EQ(doc.text, "hi");
  EXPECT_EQ(doc.id, "5");
  EXPECT_EQ(doc.meta, (nlohmann::json{{"src", "w"}}));
  EXPECT_EQ(parse("{\"text\":\"hi\""), bad_input_bit(BadInput::BrokenJson));
  EXPECT_EQ(doc.id, "in.jsonl:7");
  EXPECT_EQ(parse("[1,2]"), bad_input_bit(BadInput::NotAnObject));
  EXPECT_EQ(parse("{\"txt\":\"hi\"}"), bad_input_bit(BadInput::MissingText));
  EXPECT_EQ(parse("{\"text\":3}"), bad_input_bit(BadInput::TextNotString));
  EXPECT_EQ(parse("{\"text\":\"  \"}"), bad_input_bit(BadInput::Empty));
  EXPECT_EQ(parse("{\"text\":\"a\\u0000b\"}"), bad_input_bit(BadInput::NulBytes));
  EXPECT_EQ(doc.text, "ab");
  EXPECT_EQ(parse("{\"text\":\"caf\xe9\"}"), bad_input_bit(BadInput::InvalidUtf8));
  EXPECT_EQ(doc.text, "caf\xEF\xBF\xBD");
  EXPECT_EQ(parse("plain \xff text", InputFormat::Text), bad_input_bit(BadInput::InvalidUtf8));
  RawRecord big;
  big.too_large = true;
  big.bytes = 1 << 30;
  EXPECT_EQ(parse_record(big, InputFormat::Jsonl, cfg, "in.jsonl", doc, detail),
            bad_input_bit(BadInput::TooLarge));
}

}  // namespace
}  // namespace dsv3::curate

namespace dsv3::curate {
namespace {

TEST(CurateWriter, CuratedRecordIsWhatTheJsonLibraryWrites) {
  Document d;
  d.id = "id \"1\"";
  d.text = std::string("tab\there \"quoted\" back\\slash\nnew\x01\x1f caf\xc3\xa9 \xe4\xb8\xad") + '\x7f';
  d.meta = {{"url", "http://x/\u00e9"}, {"n", 3}};
  d.line = 9;
  d.pii[size_t(PiiType::Email)] = 2;
  d.tfidf = 0.25;
  const std::string line = curated_record(d, "in.jsonl");
  nlohmann::ordered_json want;
  want["id"] = d.id;
  want["text"] = d.text;
  want["n"] = 3;
  want["url"] = "http://x/\u00e9";
  want["curate"] = {{"source", "in.jsonl"}, {"line", 9}, {"pii", {{"email", 2}}}, {"tfidf", 0.25}};
  EXPECT_EQ(line, want.dump() + "\n");
  EXPECT_EQ(nlohmann::json::parse(line)["text"], d.text);
}

}  // namespace
}  // namespace dsv3::curate

// Model-based quality (D4): a fastText-style classifier (Joulin et al. 2017, "Bag of Tricks for
// Efficient Text Classification"). A document is the bag of its hashed features -- words, word
// bigrams and character n-grams of words ("<word>" with boundary marks, as fastText's -minn/-maxn)
// -- each an embedding row; their mean goes through one linear layer and a softmax over the
// labels. Trained with SGD and a linearly decaying learning rate, single-threaded so the same
// data and seed give the same model (fastText's Hogwild threads do not).
//
// File format (.dsv3cls): "DSV3CLS1" magic, u32 version, u32 header CRC, u64 header length,
// JSON header {"config": {...}, "labels": [...], "crc32": payload CRC}, then the payload:
// float32 embedding (buckets, dim) and output (labels, dim), little-endian.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace dsv3::curate {

struct ClassifierConfig {
  int dim = 16;             // embedding size
  int log2_buckets = 18;    // hashed feature rows: 2^18
  int word_ngrams = 2;      // 1: words only; 2: + bigrams
  int minn = 3, maxn = 5;   // character n-grams of words (0 = none)
  int epochs = 5;
  double lr = 0.5;
  uint64_t seed = 1;
  int max_words = 1000;     // features from the first max_words words (long documents)
};
void validate(const ClassifierConfig& c);

struct ClassifierModel {
  ClassifierConfig config;
  std::vector<std::string> labels;
  std::vector<float> emb;  // (2^log2_buckets, dim)
  std::vector<float> out;  // (labels, dim)
  int label_index(const std::string& name) const;  // -1 if absent
};

// Feature rows of a text (with repeats).
void classifier_features(std::string_view text, const ClassifierConfig& c,
                         std::vector<uint32_t>& feats);

struct LabelledText {
  std::string text;
  int label;  // index into the label list
};
struct TrainReport {
  double final_loss = 0;     // mean loss of the last epoch
  double train_accuracy = 0;
};
ClassifierModel train_classifier(const std::vector<LabelledText>& data,
                                 const std::vector<std::string>& labels,
                                 const ClassifierConfig& c, TrainReport* report);

// Probabilities of every label (size = labels).
void classifier_predict(const ClassifierModel& m, std::string_view text, std::vector<float>& p);
double classifier_accuracy(const ClassifierModel& m, const std::vector<LabelledText>& data);

void save_classifier(const std::string& path, const ClassifierModel& m);
ClassifierModel load_classifier(const std::string& path);

}  // namespace dsv3::curate

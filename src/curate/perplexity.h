// Perplexity filter (D4): scores a document with a small dsv3 model (as CCNet does with KenLM
// and the Llama/DCLM pipelines do with small LMs): perplexity = exp(mean next-token loss) over
// the document's first max_tokens tokens. Text is encoded with the model's own tokenizer when one
// sits beside it (tokenizer.dsv3tok / tokenizer.json, as `dsv3 train --data` leaves in its run
// directory), else as byte-level ids (then it is perplexity per byte; vocab must be >= 256).
//
// Model objects keep activation buffers, so each OpenMP thread gets its own copy of the model.
#pragma once
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace dsv3 {
class Model;
}

namespace dsv3::curate {

struct PerplexityConfig {
  std::string model;      // checkpoint file, run directory or HF directory
  double max = 0;         // drop documents above this perplexity (0 = score only)
  double min = 0;         // drop documents below it (machine-generated repetition; 0 = off)
  int max_tokens = 512;   // tokens scored per document
};

class PerplexityScorer {
 public:
  explicit PerplexityScorer(const PerplexityConfig& c);
  ~PerplexityScorer();
  // Thread-safe: uses the calling OpenMP thread's model. NaN for texts under two tokens.
  double score(std::string_view text);
  const std::string& source() const { return source_; }

 private:
  PerplexityConfig c_;
  std::string source_;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dsv3::curate

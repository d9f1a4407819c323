// Perplexity of text under a dsv3 model (D4's perplexity filter, and any scoring of documents):
// exp(mean next-token loss) over the first max_tokens tokens. Text is encoded with the model's
// own tokenizer when one sits beside it (tokenizer.dsv3tok / tokenizer.json, as `dsv3 train
// --data` leaves in its run directory), else as byte-level ids (then it is perplexity per byte;
// vocab must be >= 256). One copy of the weights serves every thread; each OpenMP thread has its
// own forward-only workspace.
#pragma once
#include <memory>
#include <string>
#include <string_view>

#include "optim/precision.h"

namespace dsv3 {

class PerplexityScorer {
 public:
  PerplexityScorer(const std::string& model_path, int max_tokens,
                   Precision precision = Precision::FP32);
  ~PerplexityScorer();
  // Thread-safe: uses the calling OpenMP thread's workspace. NaN for texts under two tokens.
  double score(std::string_view text);
  const std::string& source() const { return source_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string source_;
};

}  // namespace dsv3

// Batched log-likelihood of continuations (E2): log p(continuation | context) summed over the
// continuation's tokens, lm-evaluation-harness's `loglikelihood` request. Requests are sorted
// longest first and packed into micro-batches of up to `batch_tokens` tokens (many rows of one
// padded length per forward; the forward-only workspace is laid out once for the longest);
// each row is context + continuation, cut from the left to the model's max_seq + 1 tokens as
// the harness does. Padding sits after a row's end, so causal attention keeps it out of every
// scored position and a row's result does not depend on what it is batched with (routing is
// per token: no capacity limit in this model).
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "model/weights.h"

namespace dsv3::eval {

struct LoglikRequest {
  std::vector<int32_t> context;       // at least one token
  std::vector<int32_t> continuation;  // at least one token
};


class LoglikScorer {
 public:
  LoglikScorer(const ModelWeights& w, int batch_tokens);
  ~LoglikScorer();
  // progress(done, total) after each micro-batch (optional).
  std::vector<double> score(const std::vector<LoglikRequest>& reqs,
                                  const std::function<void(size_t, size_t)>& progress = {});
  int64_t forwards() const { return forwards_; }
  int64_t tokens() const { return tokens_; }  // padded tokens run through the model

 private:
  const ModelWeights& w_;
  int batch_tokens_;
  int64_t forwards_ = 0, tokens_ = 0;
};

}  // namespace dsv3::eval

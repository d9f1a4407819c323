// Batched log-likelihood of continuations (E2): log p(continuation | context) summed over the
// continuation's tokens, lm-evaluation-harness's `loglikelihood` request. Two ways to the same
// numbers (a test checks they agree):
//
// - shared context (the default on the CPU for dense-attention models): requests are grouped
//   by their exact context tokens; a group's context but its last token runs once into the decode
//   engine's latent KV cache (infer/decode.h), and every continuation of the group is a sequence
//   forked from it (KvCache::fork: the full pages are borrowed, not copied) that runs the
//   context's last token and the continuation but its last token, asking log p of the next token
//   at each of those rows only. A 4-choice item thus costs context + 4 x continuation tokens
//   instead of 4 x (context + continuation), and the vocabulary head runs only where a
//   continuation token is predicted. Groups are scheduled continuously: a step of up to
//   `batch_tokens` new tokens mixes continuations of prefilled contexts with the prefill of the
//   next contexts.
// - rows (CUDA, window/LSH attention, `share_context` off, and a request longer than the model's
//   max_seq + 1): the harness's way, one row context + continuation per request, sorted longest
//   first and packed into micro-batches of up to `batch_tokens` tokens (rows x padded length),
//   one training-forward pass each. Padding sits after a row's end, so causal attention keeps
//   it out of every scored position; a row longer than max_seq + 1 is cut from the left as the
//   harness does.
// Either way a request's result does not depend on what it is batched with (routing is per
// token: no capacity limit in this model).
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

struct LoglikConfig {
  int batch_tokens = 4096;    // tokens per forward (rows: rows x padded length)
  bool share_context = true;  // each context once, its continuations over the KV cache
  int page_tokens = 64;       // KV cache page (shared context)
};

class LoglikScorer {
 public:
  LoglikScorer(const ModelWeights& w, const LoglikConfig& cfg);
  LoglikScorer(const ModelWeights& w, int batch_tokens)
      : LoglikScorer(w, LoglikConfig{batch_tokens}) {}
  ~LoglikScorer();
  // progress(done, total) after each forward (optional).
  std::vector<double> score(const std::vector<LoglikRequest>& reqs,
                            const std::function<void(size_t, size_t)>& progress = {});
  // Whether this model can take the shared-context path (CPU, dense attention) and it is on.
  bool shares_context() const;
  int64_t forwards() const { return forwards_; }  // forward passes / decode steps
  int64_t tokens() const { return tokens_; }      // tokens run through the model (with padding)

 private:
  using Progress = std::function<void(size_t)>;
  void score_rows(const std::vector<LoglikRequest>& reqs, const std::vector<size_t>& which,
                  std::vector<double>& out, const Progress& done);
  void score_shared(const std::vector<LoglikRequest>& reqs, const std::vector<size_t>& which,
                    std::vector<double>& out, const Progress& done);
  const ModelWeights& w_;
  LoglikConfig cfg_;
  int64_t forwards_ = 0, tokens_ = 0;
};

}  // namespace dsv3::eval

#include "eval/perplexity.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "checkpoint/checkpoint.h"
#include "core/check.h"
#include "model/model.h"
#include "tokenizer/text_codec.h"

namespace dsv3 {

struct PerplexityScorer::Impl {
  std::unique_ptr<ModelWeights> weights;
  TextCodec codec;
  int T = 0;
  std::vector<std::unique_ptr<Workspace>> per_thread;
};

PerplexityScorer::PerplexityScorer(const std::string& model_path, int max_tokens,
                                   Precision precision)
    : impl_(std::make_unique<Impl>()) {
  DSV3_CHECK(!model_path.empty(), "perplexity: no model given");
  DSV3_CHECK(max_tokens >= 2, "perplexity tokens must be >= 2, not ", max_tokens);
  const LoadedModel lm = load_model_any(model_path);
  if (const std::string tok = find_tokenizer_for_model(model_path); !tok.empty())
    impl_->codec = TextCodec(tok);
  source_ = lm.source + ", " + impl_->codec.describe();
  DSV3_CHECK(lm.config.vocab >= impl_->codec.vocab_size(), "perplexity model ", model_path,
             " has vocab ", lm.config.vocab, " but its text encoding needs ",
             impl_->codec.vocab_size());
  impl_->weights = std::make_unique<ModelWeights>(lm.config, compute_dtype(precision));
  impl_->weights->load(lm.params);
  impl_->T = std::min(max_tokens, lm.config.max_seq);
  impl_->per_thread.resize(size_t(std::max(1, omp_get_max_threads())));
}

PerplexityScorer::~PerplexityScorer() = default;

double PerplexityScorer::score(std::string_view text) {
  // encode a prefix long enough for T+1 tokens (a token covers at least one byte)
  std::vector<int32_t> tokens =
      impl_->codec.encode(text.substr(0, std::min(text.size(), size_t(impl_->T + 1) * 8)));
  const size_t n = std::min(tokens.size(), size_t(impl_->T) + 1);
  if (n < 2) return NAN;
  const size_t tid = size_t(omp_get_thread_num());
  DSV3_CHECK(tid < impl_->per_thread.size(), "perplexity: thread ", tid, " beyond the pool");
  auto& ws = impl_->per_thread[tid];
  const ModelWeights& w = *impl_->weights;
  if (!ws) {
    WorkspaceConfig wc;
    wc.max = {1, impl_->T};
    wc.backward = false;
    ws = std::make_unique<Workspace>(w.config(), w.dtype(), w.device(), wc);
  }
  ForwardOptions opt;
  opt.mtp = false;
  const LossReport r = forward(w, *ws, TrainingLossConfig{}, {Dims{1, int(n - 1)}, tokens.data()}, opt);
  return std::exp(r.loss);
}

}  // namespace dsv3

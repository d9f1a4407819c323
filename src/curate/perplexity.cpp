#include "curate/perplexity.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <mutex>

#include "checkpoint/checkpoint.h"
#include "core/check.h"
#include "infer/text_codec.h"
#include "model/model.h"

namespace dsv3::curate {

struct PerplexityScorer::Impl {
  LoadedModel lm;
  TextCodec codec;
  int T = 0;
  std::vector<std::unique_ptr<Model>> per_thread;
  std::mutex mu;
};

PerplexityScorer::PerplexityScorer(const PerplexityConfig& c)
    : c_(c), impl_(std::make_unique<Impl>()) {
  DSV3_CHECK(!c.model.empty(), "perplexity stage: perplexity_model is not set");
  DSV3_CHECK(c.max_tokens >= 2, "perplexity_tokens must be >= 2, not ", c.max_tokens);
  impl_->lm = load_model_any(c.model);
  if (const std::string tok = find_tokenizer_for_model(c.model); !tok.empty())
    impl_->codec = TextCodec(tok);
  source_ = impl_->lm.source + ", " + impl_->codec.describe();
  DSV3_CHECK(impl_->lm.config.vocab >= impl_->codec.vocab_size(), "perplexity model ", c.model,
             " has vocab ", impl_->lm.config.vocab, " but its text encoding needs ",
             impl_->codec.vocab_size());
  impl_->T = std::min(c.max_tokens, impl_->lm.config.max_seq);
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
  auto& model = impl_->per_thread[tid];
  if (!model) {
    auto m = std::make_unique<Model>(impl_->lm.config, TrainingLossConfig{}, Dims{1, impl_->T});
    std::copy(impl_->lm.params.begin(), impl_->lm.params.end(), m->params());
    model = std::move(m);
  }
  const LossReport r = model->forward(tokens.data(), Dims{1, int(n - 1)});
  return std::exp(r.loss);
}

}  // namespace dsv3::curate

#include "curate/perplexity.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <mutex>

#include "checkpoint/checkpoint.h"
#include "core/check.h"
#include "model/model.h"

namespace dsv3::curate {

struct PerplexityScorer::Impl {
  LoadedModel lm;
  int T = 0;
  std::vector<std::unique_ptr<Model>> per_thread;
  std::mutex mu;
};

PerplexityScorer::PerplexityScorer(const PerplexityConfig& c)
    : c_(c), impl_(std::make_unique<Impl>()) {
  DSV3_CHECK(!c.model.empty(), "perplexity stage: perplexity_model is not set");
  DSV3_CHECK(c.max_tokens >= 2, "perplexity_tokens must be >= 2, not ", c.max_tokens);
  impl_->lm = load_model_any(c.model);
  source_ = impl_->lm.source;
  DSV3_CHECK(impl_->lm.config.vocab >= 256, "perplexity model ", c.model, " has vocab ",
             impl_->lm.config.vocab, "; byte-level scoring needs >= 256");
  impl_->T = std::min(c.max_tokens, impl_->lm.config.max_seq);
  impl_->per_thread.resize(size_t(std::max(1, omp_get_max_threads())));
}

PerplexityScorer::~PerplexityScorer() = default;

double PerplexityScorer::score(std::string_view text) {
  const size_t n = std::min(text.size(), size_t(impl_->T) + 1);
  if (n < 2) return NAN;
  const size_t tid = size_t(omp_get_thread_num());
  DSV3_CHECK(tid < impl_->per_thread.size(), "perplexity: thread ", tid, " beyond the pool");
  auto& model = impl_->per_thread[tid];
  if (!model) {
    auto m = std::make_unique<Model>(impl_->lm.config, TrainingLossConfig{}, Dims{1, impl_->T});
    std::copy(impl_->lm.params.begin(), impl_->lm.params.end(), m->params());
    model = std::move(m);
  }
  std::vector<int32_t> tokens(n);
  for (size_t i = 0; i < n; i++) tokens[i] = int32_t(static_cast<unsigned char>(text[i]));
  const LossReport r = model->forward(tokens.data(), Dims{1, int(n - 1)});
  return std::exp(r.loss);
}

}  // namespace dsv3::curate

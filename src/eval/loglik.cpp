#include "eval/loglik.h"

#include <algorithm>
#include <numeric>

#include "core/check.h"
#include "model/model.h"

namespace dsv3::eval {

LoglikScorer::LoglikScorer(const ModelWeights& w, int batch_tokens)
    : w_(w), batch_tokens_(batch_tokens) {
  DSV3_CHECK(batch_tokens >= 1, "batch_tokens must be >= 1");
}

LoglikScorer::~LoglikScorer() = default;

std::vector<double> LoglikScorer::score(const std::vector<LoglikRequest>& reqs,
                                        const std::function<void(size_t, size_t)>& progress) {
  const ModelConfig& c = w_.config();
  const size_t n = reqs.size();
  std::vector<double> out(n, 0.0);
  if (n == 0) return out;
  // Each row: the last max_seq + 1 tokens of context + continuation. `len` = positions scored
  // by the forward (the row's tokens - 1); the continuation's are the last ones.
  std::vector<int> len(n), keep_ctx(n);
  for (size_t i = 0; i < n; i++) {
    const auto& r = reqs[i];
    DSV3_CHECK(!r.context.empty() && !r.continuation.empty(),
               "a log-likelihood request needs a context and a continuation (internal error)");
    DSV3_CHECK(int64_t(r.continuation.size()) <= c.max_seq, "a continuation of ",
               r.continuation.size(), " tokens does not fit the model's context (", c.max_seq, ")");
    const int64_t total = int64_t(r.context.size() + r.continuation.size());
    const int64_t cut = std::max<int64_t>(0, total - (c.max_seq + 1));
    keep_ctx[i] = int(int64_t(r.context.size()) - cut);
    len[i] = int(total - cut - 1);
  }
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t(0));
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return len[a] > len[b]; });
  const int T_max = len[order[0]];
  const int rows_max = std::max(1, batch_tokens_ / T_max);
  WorkspaceConfig wc;
  wc.max = {rows_max, T_max};
  wc.backward = false;
  Workspace ws(c, w_.dtype(), w_.device(), wc);
  const int64_t N_max = int64_t(rows_max) * T_max;
  ForwardOptions opt;
  opt.mtp = false;
  std::vector<int32_t> batch;
  std::vector<float> lp;
  const TrainingLossConfig loss;
  for (size_t at = 0; at < n;) {
    const int T = len[order[at]];
    const int B = int(std::min<int64_t>(int64_t(n - at), std::max<int64_t>(1, N_max / T)));
    batch.assign(size_t(B) * (T + 1), 0);  // pad id 0: after each row's end, never attended to
    for (int b = 0; b < B; b++) {
      const auto& r = reqs[order[at + b]];
      int32_t* row = batch.data() + size_t(b) * (T + 1);
      const int k = keep_ctx[order[at + b]];
      std::copy(r.context.end() - k, r.context.end(), row);
      std::copy(r.continuation.begin(), r.continuation.end(), row + k);
    }
    lp.assign(size_t(B) * T, 0.0f);
    opt.token_logprobs = lp.data();
    forward(w_, ws, loss, {Dims{B, T}, batch.data()}, opt);
    for (int b = 0; b < B; b++) {
      const size_t i = order[at + b];
      const int m = int(reqs[i].continuation.size());
      // the continuation's tokens are targets of positions len - m ... len - 1
      double s = 0;
      for (int t = len[i] - m; t < len[i]; t++) s += double(lp[size_t(b) * T + t]);
      out[i] = s;
    }
    forwards_++;
    tokens_ += int64_t(B) * T;
    at += size_t(B);
    if (progress) progress(at, n);
  }
  return out;
}

}  // namespace dsv3::eval

#include "eval/position_loss.h"

#include <algorithm>

#include "core/check.h"

namespace dsv3 {

std::vector<double> loss_by_position(const ModelWeights& w, Workspace& ws,
                                     const std::vector<int32_t>& tokens, Dims d, int max_batches,
                                     int buckets) {
  DSV3_CHECK(tokens.size() >= size_t(d.T) + 1, "evaluation data has ", tokens.size(),
             " tokens; one sequence of ", d.T, " needs ", d.T + 1);
  // the batches of evaluate(): rows of T from the start, T+1 tokens each
  const size_t rows_avail = (tokens.size() - 1) / d.T;
  const Dims e{int(std::min<size_t>(d.B, rows_avail)), d.T};
  const size_t span = size_t(e.B) * e.T;
  size_t nb = (tokens.size() - 1) / span;
  if (max_batches > 0) nb = std::min<size_t>(nb, size_t(max_batches));
  const int n = std::clamp(buckets, 1, e.T);
  std::vector<double> sum(size_t(n), 0.0), count(size_t(n), 0.0);
  std::vector<int32_t> batch(size_t(e.B) * (e.T + 1));
  std::vector<float> lp(span);
  ForwardOptions opt;
  opt.token_logprobs = lp.data();
  opt.mtp = false;
  const TrainingLossConfig loss;
  for (size_t i = 0; i < nb; i++) {
    for (int b = 0; b < e.B; b++)
      std::copy_n(tokens.data() + i * span + size_t(b) * e.T, e.T + 1, batch.data() + size_t(b) * (e.T + 1));
    forward(w, ws, loss, {e, batch.data()}, opt);
    for (size_t r = 0; r < span; r++) {
      const size_t k = (r % size_t(e.T)) * size_t(n) / size_t(e.T);
      sum[k] -= lp[r];
      count[k] += 1;
    }
  }
  for (int k = 0; k < n; k++) sum[size_t(k)] = count[size_t(k)] > 0 ? sum[size_t(k)] / count[size_t(k)] : 0.0;
  return sum;
}

}  // namespace dsv3

#include "eval/eval.h"

#include <algorithm>

#include "core/check.h"

namespace dsv3 {

EvalResult evaluate(Model& model, const std::vector<int32_t>& tokens, Dims d, int max_batches) {
  DSV3_CHECK(tokens.size() >= size_t(d.T) + 1, "evaluation data has ", tokens.size(),
             " tokens; one sequence of ", d.T, " needs ", d.T + 1, " (lower --seq_len)");
  const size_t rows_avail = (tokens.size() - 1) / d.T;
  Dims e{int(std::min<size_t>(d.B, rows_avail)), d.T};
  const size_t span = size_t(e.B) * e.T;
  size_t nb = (tokens.size() - 1) / span;
  if (max_batches > 0) nb = std::min<size_t>(nb, max_batches);
  EvalResult r;
  std::vector<int32_t> batch(size_t(e.B) * (e.T + 1));
  for (size_t i = 0; i < nb; i++) {
    for (int b = 0; b < e.B; b++)
      std::copy_n(tokens.data() + i * span + size_t(b) * e.T, e.T + 1,
                  batch.data() + size_t(b) * (e.T + 1));
    LossReport l = model.forward(batch.data(), e);
    r.loss += l.loss;
    r.mtp_loss += l.mtp_loss;
    r.tokens += l.targets;
    r.batches++;
  }
  if (r.batches > 0) r.loss /= r.batches, r.mtp_loss /= r.batches;
  return r;
}

}  // namespace dsv3

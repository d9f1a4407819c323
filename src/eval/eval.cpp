#include "eval/eval.h"

#include <algorithm>

#include "core/check.h"

namespace dsv3 {

const std::vector<FieldSpec>& eval_fields() {
  using E = EvalConfig;
  static const std::vector<FieldSpec> f = {
      field("eval_every", &E::eval_every, "validate every N steps (0 = only at the end)", at_least(0)),
      field("eval_batches", &E::eval_batches, "validation micro-batches", in_range(0, 1 << 30)),
  };
  return f;
}

void validate(const EvalConfig& e) {
  DSV3_CHECK(e.eval_every >= 0, "eval_every must be >= 0");
  DSV3_CHECK(e.eval_batches >= 0, "eval_batches must be >= 0");
}

EvalResult evaluate(const ModelWeights& w, Workspace& ws, const std::vector<int32_t>& tokens,
                    Dims d, int max_batches) {
  DSV3_CHECK(tokens.size() >= size_t(d.T) + 1, "evaluation data has ", tokens.size(),
             " tokens; one sequence of ", d.T, " needs ", d.T + 1, " (lower --seq_len)");
  const size_t rows_avail = (tokens.size() - 1) / d.T;
  const Dims e{int(std::min<size_t>(d.B, rows_avail)), d.T};
  const size_t span = size_t(e.B) * e.T;
  size_t nb = (tokens.size() - 1) / span;
  if (max_batches > 0) nb = std::min<size_t>(nb, max_batches);
  EvalResult r;
  std::vector<int32_t> batch(size_t(e.B) * (e.T + 1));
  const TrainingLossConfig loss;  // the losses as reported; balance settings do not matter here
  for (size_t i = 0; i < nb; i++) {
    for (int b = 0; b < e.B; b++)
      std::copy_n(tokens.data() + i * span + size_t(b) * e.T, e.T + 1,
                  batch.data() + size_t(b) * (e.T + 1));
    const LossReport l = forward(w, ws, loss, {e, batch.data()});
    r.loss += l.loss;
    r.mtp_loss += l.mtp_loss;
    r.tokens += l.targets;
    r.batches++;
  }
  if (r.batches > 0) r.loss /= r.batches, r.mtp_loss /= r.batches;
  return r;
}

}  // namespace dsv3

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

namespace {
Dims eval_dims(const std::vector<int32_t>& tokens, Dims d) {
  DSV3_CHECK(tokens.size() >= size_t(d.T) + 1, "evaluation data has ", tokens.size(),
             " tokens; one sequence of ", d.T, " needs ", d.T + 1, " (lower --seq_len)");
  const size_t rows_avail = (tokens.size() - 1) / d.T;
  return {int(std::min<size_t>(d.B, rows_avail)), d.T};
}
}  // namespace

int eval_batches_of(const std::vector<int32_t>& tokens, Dims d, int max_batches) {
  const Dims e = eval_dims(tokens, d);
  size_t nb = (tokens.size() - 1) / (size_t(e.B) * e.T);
  if (max_batches > 0) nb = std::min<size_t>(nb, max_batches);
  return int(nb);
}

EvalResult evaluate_part(const ModelWeights& w, Workspace& ws, const std::vector<int32_t>& tokens,
                         Dims d, int max_batches, int part, int parts, int min_passes) {
  const TrainingLossConfig loss;  // the losses as reported; balance settings do not matter here
  return evaluate_part([&](const MicroBatch& mb) { return forward(w, ws, loss, mb); }, tokens, d,
                       max_batches, part, parts, min_passes);
}

EvalResult evaluate_part(const EvalForward& run, const std::vector<int32_t>& tokens, Dims d,
                         int max_batches, int part, int parts, int min_passes) {
  DSV3_CHECK(parts >= 1 && part >= 0 && part < parts, "internal: evaluation part ", part, " of ", parts);
  const Dims e = eval_dims(tokens, d);
  const size_t span = size_t(e.B) * e.T, nb = size_t(eval_batches_of(tokens, d, max_batches));
  EvalResult r;
  std::vector<int32_t> batch(size_t(e.B) * (e.T + 1));
  int passes = 0;
  for (size_t i = size_t(part); i < nb || passes < min_passes; i += size_t(parts), passes++) {
    const bool counted = i < nb;
    const size_t at = counted ? i : 0;  // padding passes repeat the first batch
    for (int b = 0; b < e.B; b++)
      std::copy_n(tokens.data() + at * span + size_t(b) * e.T, e.T + 1,
                  batch.data() + size_t(b) * (e.T + 1));
    const LossReport l = run({e, batch.data()});
    if (!counted) continue;
    r.loss += l.loss;
    r.mtp_loss += l.mtp_loss;
    r.tokens += l.targets;
    r.batches++;
  }
  return r;
}

EvalResult evaluate(const ModelWeights& w, Workspace& ws, const std::vector<int32_t>& tokens,
                    Dims d, int max_batches) {
  EvalResult r = evaluate_part(w, ws, tokens, d, max_batches, 0, 1);
  if (r.batches > 0) r.loss /= r.batches, r.mtp_loss /= r.batches;
  return r;
}

}  // namespace dsv3

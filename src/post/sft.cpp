// Supervised fine-tuning: chat conversations packed into rows, the loss on assistant tokens only
// (MicroBatch::loss_weights: 0 on every other target, so their gradient is exactly zero).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "core/check.h"
#include "core/rng.h"
#include "core/timer.h"
#include "post/data.h"
#include "post/finetune.h"
#include "post/sft.h"

namespace dsv3 {

SftData load_sft_data(const std::string& path, const TextCodec& codec, int T,
                      double eval_fraction, uint64_t seed, int32_t pad_id) {
  SftData d;
  std::vector<Sequence> seqs = read_chat_jsonl(path, codec, d.report);
  size_t n_eval = eval_fraction > 0 && seqs.size() >= 2
                      ? std::max<size_t>(1, size_t(std::floor(eval_fraction * double(seqs.size()))))
                      : 0;
  std::vector<Sequence> eval(seqs.end() - ptrdiff_t(n_eval), seqs.end());
  seqs.resize(seqs.size() - n_eval);
  Rng rng(seed);  // conversations shuffled once before packing
  for (size_t i = seqs.size(); i > 1; i--) std::swap(seqs[i - 1], seqs[rng.below(i)]);
  d.train = pack_sequences(seqs, T, pad_id);
  d.eval = pack_sequences(eval, T, pad_id);
  return d;
}

std::vector<int64_t> epoch_order(int64_t rows, uint64_t seed, int64_t epoch) {
  std::vector<int64_t> o(static_cast<size_t>(rows));
  std::iota(o.begin(), o.end(), 0);
  Rng rng(seed * 1000003u + uint64_t(epoch));
  for (size_t i = o.size(); i > 1; i--) std::swap(o[i - 1], o[rng.below(i)]);
  return o;
}

double masked_loss(const ModelWeights& w, Workspace& ws, const TrainingLossConfig& loss,
                   const PackedRows& rows, int batch) {
  double sum = 0, wsum = 0;
  const int T = rows.T;
  for (int64_t r0 = 0; r0 < rows.rows(); r0 += batch) {
    const int B = int(std::min<int64_t>(batch, rows.rows() - r0));
    MicroBatch mb{{B, T}, rows.tokens.data() + r0 * (T + 1), rows.weights.data() + r0 * T};
    double wb = 0;
    for (int64_t i = r0 * T; i < (r0 + B) * T; i++) wb += rows.weights[size_t(i)];
    if (wb == 0) continue;
    ForwardOptions opt;
    opt.mtp = false;
    sum += forward(w, ws, loss, mb, opt).loss * wb;
    wsum += wb;
  }
  return wsum > 0 ? sum / wsum : NAN;
}

void run_sft(FinetuneSession& s) {
  const FinetuneSpec& spec = s.spec();
  const FinetuneConfig& r = spec.run;
  const int T = r.seq_len, B = r.batch;
  const int32_t pad = std::max(0, s.codec().eos_id());
  const SftData data = load_sft_data(r.data, s.codec(), T, r.eval_fraction, uint64_t(r.seed), pad);
  for (const auto& p : data.report.problems) std::fprintf(stderr, "skipped %s\n", p.c_str());
  std::fprintf(stderr, "sft: %s; %lld train rows, %lld held-out rows of %d tokens (%lld cut to fit)\n",
               data.report.summary().c_str(), (long long)data.train.rows(), (long long)data.eval.rows(),
               T, (long long)(data.train.truncated + data.eval.truncated));
  DSV3_CHECK(data.train.rows() > 0, r.data, ": no training rows");
  auto evaluate = [&](int64_t step) {
    if (data.eval.rows() == 0) return;
    const double l = masked_loss(s.weights(), s.workspace(), spec.loss, data.eval, B);
    s.log({{"kind", "eval"}, {"step", step}, {"loss", l}});
    s.progress().print("step " + std::to_string(step) + ": held-out assistant-token loss " +
                       std::to_string(l));
  };
  evaluate(s.start_step());
  const int64_t per_epoch = std::max<int64_t>(1, data.train.rows() / B);
  std::vector<int64_t> order;
  int64_t order_epoch = -1;
  std::vector<int32_t> tok(size_t(B) * (T + 1));
  std::vector<float> wt(size_t(B) * T);
  const double t0 = now_seconds();
  for (int64_t step = s.start_step(); step < r.steps; step++) {
    const int64_t epoch = step / per_epoch;
    if (epoch != order_epoch) order = epoch_order(data.train.rows(), uint64_t(r.seed), epoch), order_epoch = epoch;
    for (int b = 0; b < B; b++) {  // rows wrap around when the epoch has fewer than B
      const int64_t row = order[size_t(((step % per_epoch) * B + b) % data.train.rows())];
      std::copy_n(data.train.tokens.begin() + row * (T + 1), T + 1, tok.begin() + int64_t(b) * (T + 1));
      std::copy_n(data.train.weights.begin() + row * T, T, wt.begin() + int64_t(b) * T);
    }
    const StepResult res = s.update(step, 1, [&](int) { return MicroBatch{{B, T}, tok.data(), wt.data()}; });
    const double el = now_seconds() - t0;
    const int64_t done = step + 1 - s.start_step();
    s.log({{"kind", "train"}, {"step", step + 1}, {"loss", res.loss.loss}, {"lr", res.lr},
           {"grad_norm", res.grad_norm}, {"targets", res.loss.targets}, {"elapsed_s", el}});
    char line[160];
    std::snprintf(line, sizeof line, "sft step %lld/%lld loss %.4f lr %.2e | %.2f steps/s",
                  (long long)(step + 1), (long long)r.steps, res.loss.loss, res.lr, double(done) / el);
    s.end_step(step, line, el, evaluate);
  }
  s.progress().finish();
  if (r.steps > s.start_step()) evaluate(r.steps);
  s.save(std::max<int64_t>(r.steps, s.start_step()), {});
}

}  // namespace dsv3

#include "post/dpo.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "core/check.h"
#include "core/io.h"
#include "core/timer.h"
#include "post/sft.h"

namespace dsv3 {

namespace {
double log_sigmoid(double x) { return x >= 0 ? -std::log1p(std::exp(-x)) : x - std::log1p(std::exp(x)); }
double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
}  // namespace

DpoTerms dpo_terms(double pc, double pr, double rc, double rr, const DpoConfig& c) {
  DpoTerms t;
  const double h = (pc - rc) - (pr - rr);
  double dh = 0;
  if (c.loss == DpoLoss::Ipo) {
    const double e = h - 1.0 / (2.0 * c.beta);
    t.loss = e * e;
    dh = 2.0 * e;
  } else {
    const double z = c.beta * h, ls = c.label_smoothing;
    t.loss = -(1 - ls) * log_sigmoid(z) - ls * log_sigmoid(-z);
    dh = c.beta * (-(1 - ls) * sigmoid(-z) + ls * sigmoid(z));
  }
  t.d_chosen = dh;
  t.d_rejected = -dh;
  t.chosen_reward = c.beta * (pc - rc);
  t.rejected_reward = c.beta * (pr - rr);
  return t;
}

bool pair_rows(const PreferencePair& p, int T, int32_t pad_id, PairRows& out) {
  out.tokens.assign(size_t(2) * (T + 1), pad_id);
  out.mask.assign(size_t(2) * T, 0.0f);
  int side = 0;
  for (const Sequence* s : {&p.chosen, &p.rejected}) {
    const size_t n = std::min(s->ids.size(), size_t(T) + 1);
    std::copy_n(s->ids.begin(), n, out.tokens.begin() + ptrdiff_t(side) * (T + 1));
    double m = 0;
    for (size_t t = 1; t < n; t++) m += out.mask[size_t(side) * T + t - 1] = float(s->mask[t]);
    if (m == 0) return false;
    side++;
  }
  return true;
}

std::pair<double, double> pair_logprobs(const ModelWeights& w, Workspace& ws,
                                        const TrainingLossConfig& loss, const PairRows& rows,
                                        std::vector<float>* token_logprobs) {
  const int T = int(rows.mask.size() / 2);
  std::vector<float> lp(rows.mask.size());
  ForwardOptions opt;
  opt.mtp = false;
  opt.token_logprobs = lp.data();
  forward(w, ws, loss, MicroBatch{{2, T}, rows.tokens.data()}, opt);
  double s[2] = {0, 0};
  for (int side = 0; side < 2; side++)
    for (int t = 0; t < T; t++) s[side] += double(rows.mask[size_t(side) * T + t]) * lp[size_t(side) * T + t];
  if (token_logprobs) *token_logprobs = lp;
  return {s[0], s[1]};
}

std::vector<float> dpo_coefficients(const PairRows& rows, const DpoTerms& t) {
  // d loss / d CE_token = -d loss / d log p_token = -d_side on the response tokens
  const size_t T = rows.mask.size() / 2;
  std::vector<float> c(rows.mask.size());
  for (size_t i = 0; i < c.size(); i++) c[i] = float(-(i < T ? t.d_chosen : t.d_rejected) * rows.mask[i]);
  return c;
}

MicroBatch dpo_micro_batch(const ModelWeights& w, Workspace& ws, const TrainingLossConfig& loss,
                           const PairRows& rows, double rc, double rr, const DpoConfig& c,
                           std::vector<float>* coef, DpoTerms* terms) {
  const auto [pc, pr] = pair_logprobs(w, ws, loss, rows);
  *terms = dpo_terms(pc, pr, rc, rr, c);
  *coef = dpo_coefficients(rows, *terms);
  MicroBatch mb{{2, int(rows.mask.size() / 2)}, rows.tokens.data()};
  mb.ce_coef = coef->data();
  return mb;
}

namespace {
struct PairSet {
  std::vector<PairRows> rows;
  std::vector<double> ref_chosen, ref_rejected;
};

// Reference log-likelihoods: from the cache in --out (a resumed run), else computed once with
// the starting weights and written there.
void reference_logprobs(FinetuneSession& s, PairSet& train, PairSet& eval) {
  const std::string path = (std::filesystem::path(s.spec().run.out) / "reference_logprobs.json").string();
  const size_t n = train.rows.size() + eval.rows.size();
  if (std::filesystem::exists(path)) {
    const auto j = nlohmann::json::parse(read_file(path));
    if (j.at("pairs").get<size_t>() == n) {
      train.ref_chosen = j.at("train_chosen").get<std::vector<double>>();
      train.ref_rejected = j.at("train_rejected").get<std::vector<double>>();
      eval.ref_chosen = j.at("eval_chosen").get<std::vector<double>>();
      eval.ref_rejected = j.at("eval_rejected").get<std::vector<double>>();
      std::fprintf(stderr, "dpo: reference log-probs from %s\n", path.c_str());
      return;
    }
  }
  DSV3_CHECK(s.start_step() == 0, path, " is missing or stale in a resumed run");
  const double t0 = now_seconds();
  for (PairSet* ps : {&train, &eval}) {
    ps->ref_chosen.clear();
    ps->ref_rejected.clear();
    for (const PairRows& r : ps->rows) {
      const auto [c, rj] = pair_logprobs(s.weights(), s.workspace(), s.spec().loss, r);
      ps->ref_chosen.push_back(c);
      ps->ref_rejected.push_back(rj);
    }
  }
  const nlohmann::json j = {{"pairs", n}, {"train_chosen", train.ref_chosen},
                            {"train_rejected", train.ref_rejected}, {"eval_chosen", eval.ref_chosen},
                            {"eval_rejected", eval.ref_rejected}};
  write_file_atomic(path, [&](std::FILE* f) { const std::string t = j.dump(); write_bytes(f, t.data(), t.size()); });
  std::fprintf(stderr, "dpo: reference log-probs of %zu pairs in %.1f s (cached in %s)\n", n,
               now_seconds() - t0, path.c_str());
}
}  // namespace

void run_dpo(FinetuneSession& s) {
  const FinetuneSpec& spec = s.spec();
  const FinetuneConfig& r = spec.run;
  const int T = r.seq_len, P = r.batch;
  const int32_t pad = std::max(0, s.codec().eos_id());
  JsonlReport rep;
  const auto pairs = read_preference_jsonl(r.data, s.codec(), rep);
  for (const auto& p : rep.problems) std::fprintf(stderr, "skipped %s\n", p.c_str());
  const size_t n_eval = r.eval_fraction > 0 && pairs.size() >= 2
                            ? std::max<size_t>(1, size_t(std::floor(r.eval_fraction * double(pairs.size()))))
                            : 0;
  PairSet train, eval;
  int64_t cut = 0;
  for (size_t i = 0; i < pairs.size(); i++) {
    PairRows pr;
    if (!pair_rows(pairs[i], T, pad, pr)) {
      cut++;
      continue;
    }
    (i + n_eval < pairs.size() ? train : eval).rows.push_back(std::move(pr));
  }
  std::fprintf(stderr, "dpo: %s; %zu train pairs, %zu held out (%lld without response tokens "
               "within --seq_len %d, skipped)\n", rep.summary().c_str(), train.rows.size(),
               eval.rows.size(), (long long)cut, T);
  DSV3_CHECK(!train.rows.empty(), r.data, ": no training pairs");
  reference_logprobs(s, train, eval);
  auto evaluate = [&](int64_t step) {
    if (eval.rows.empty()) return;
    double loss = 0, margin = 0, acc = 0;
    for (size_t i = 0; i < eval.rows.size(); i++) {
      const auto [c, rj] = pair_logprobs(s.weights(), s.workspace(), spec.loss, eval.rows[i]);
      const DpoTerms t = dpo_terms(c, rj, eval.ref_chosen[i], eval.ref_rejected[i], spec.dpo);
      loss += t.loss;
      margin += t.chosen_reward - t.rejected_reward;
      acc += t.chosen_reward > t.rejected_reward ? 1 : 0;
    }
    const double n = double(eval.rows.size());
    s.log({{"kind", "eval"}, {"step", step}, {"loss", loss / n}, {"reward_margin", margin / n},
           {"reward_accuracy", acc / n}, {"pairs", eval.rows.size()}});
    char line[200];
    std::snprintf(line, sizeof line, "step %lld: held-out DPO loss %.4f, reward margin %.4f, "
                  "accuracy %.3f (%zu pairs)", (long long)step, loss / n, margin / n, acc / n,
                  eval.rows.size());
    s.progress().print(line);
  };
  evaluate(s.start_step());
  const int64_t per_epoch = std::max<int64_t>(1, int64_t(train.rows.size()) / P);
  const double t0 = now_seconds();
  for (int64_t step = s.start_step(); step < r.steps; step++) {
    const auto order = epoch_order(int64_t(train.rows.size()), uint64_t(r.seed), step / per_epoch);
    double loss = 0, margin = 0, acc = 0;
    std::vector<float> coef;
    const StepResult res = s.update(step, P, [&](int a) {
      const size_t i = size_t(order[size_t(((step % per_epoch) * P + a) % int64_t(train.rows.size()))]);
      DpoTerms t;
      const MicroBatch mb = dpo_micro_batch(s.weights(), s.workspace(), spec.loss, train.rows[i],
                                            train.ref_chosen[i], train.ref_rejected[i], spec.dpo, &coef, &t);
      loss += t.loss / P;
      margin += (t.chosen_reward - t.rejected_reward) / P;
      acc += (t.chosen_reward > t.rejected_reward ? 1.0 : 0.0) / P;
      return mb;
    });
    const double el = now_seconds() - t0;
    const int64_t done = step + 1 - s.start_step();
    s.log({{"kind", "train"}, {"step", step + 1}, {"loss", loss}, {"reward_margin", margin},
           {"reward_accuracy", acc}, {"lr", res.lr}, {"grad_norm", res.grad_norm}, {"elapsed_s", el}});
    char line[200];
    std::snprintf(line, sizeof line, "dpo step %lld/%lld loss %.4f margin %.3f acc %.2f | %.2f steps/s",
                  (long long)(step + 1), (long long)r.steps, loss, margin, acc, double(done) / el);
    s.end_step(step, line, el, evaluate);
  }
  s.progress().finish();
  if (r.steps > s.start_step()) evaluate(r.steps);
  s.save(std::max<int64_t>(r.steps, s.start_step()), {});
}

}  // namespace dsv3

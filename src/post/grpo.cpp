#include "post/grpo.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "checkpoint/checkpoint.h"
#include "core/check.h"
#include "core/timer.h"
#include "infer/scheduler.h"
#include "post/data.h"
#include "post/reward.h"
#include "post/sft.h"

namespace dsv3 {

std::vector<double> group_advantages(const std::vector<double>& r) {
  const double n = double(r.size());
  DSV3_CHECK(r.size() >= 2, "a group needs at least 2 completions");
  const double mean = std::accumulate(r.begin(), r.end(), 0.0) / n;
  double var = 0;
  for (double x : r) var += (x - mean) * (x - mean);
  const double sd = std::sqrt(var / (n - 1));
  std::vector<double> a;
  for (double x : r) a.push_back((x - mean) / (sd + 1e-4));
  return a;
}

GrpoTerms grpo_objective(const std::vector<CompletionLogprobs>& group, double clip, double beta) {
  GrpoTerms t;
  const double G = double(group.size());
  double tokens = 0;
  for (const auto& c : group) {
    const size_t n = c.logp.size();
    std::vector<double> d(n, 0.0);
    if (n == 0) {
      t.d_logp.push_back(d);
      continue;
    }
    double kl = 0;
    const double A = c.advantage;
    for (size_t k = 0; k < n; k++) {
      const double rho = std::exp(c.logp[k] - c.old_logp[k]);
      const double rc = std::clamp(rho, 1 - clip, 1 + clip);
      const double unclipped = rho * A, clipped = rc * A;
      // the min takes the clipped term (constant in log p) only where it is strictly smaller
      const bool use_clipped = clipped < unclipped;
      const double surrogate = use_clipped ? clipped : unclipped;
      const double dsur = use_clipped ? 0.0 : unclipped;  // d(rho A)/d log p = rho A
      const double x = c.ref_logp[k] - c.logp[k];
      const double klt = std::exp(x) - x - 1;
      const double dkl = 1 - std::exp(x);  // d KL_t / d log p
      t.loss += -(surrogate - beta * klt) / (G * double(n));
      d[k] = -(dsur - beta * dkl) / (G * double(n));
      kl += klt / double(n);
      t.clipped += use_clipped ? 1 : 0;
      tokens++;
    }
    t.kl += kl / G;
    t.d_logp.push_back(std::move(d));
  }
  if (tokens > 0) t.clipped /= tokens;
  return t;
}

namespace {

struct Completion {
  std::vector<int32_t> ids;  // generated (with the stop id when it ended on one)
  std::string text;
};

// n completions of each prompt from the decode engine over the current weights.
std::vector<std::vector<Completion>> sample_groups(FinetuneSession& s, const std::vector<const RlPrompt*>& prompts,
                                                   int n, double temperature, uint64_t seed,
                                                   int64_t* generated) {
  const FinetuneConfig& r = s.spec().run;
  const GrpoConfig& g = s.spec().grpo;
  const ModelConfig& c = s.config();
  const int ctx = std::min(r.seq_len + 1, c.max_seq);
  const int total = int(prompts.size()) * n;
  DecodeConfig dc;
  dc.max_context = ctx;
  dc.max_seqs = std::min(total, 64);
  dc.max_rows = 256;
  dc.kv_cache_bytes = KvCache::latent_bytes_per_token(c, s.weights().dtype(), c.layers) *
                      size_t(dc.max_seqs) * size_t(ctx + 2 * dc.page_tokens);
  DecodeEngine engine(s.weights(), dc);
  SchedulerConfig sc;
  sc.max_running = dc.max_seqs;
  Scheduler sched(engine, sc);
  std::vector<std::vector<Completion>> out(prompts.size(), std::vector<Completion>(size_t(n)));
  const RenderedChat probe = render_chat(s.codec(), {{"user", "x"}}, true);
  const bool stop_on_blank_line = probe.stop_ids.empty();  // the plain template without an eos
  for (size_t p = 0; p < prompts.size(); p++)
    for (int k = 0; k < n; k++) {
      auto req = std::make_unique<GenRequest>();
      req->prompt = prompts[p]->ids;
      req->sampling.temperature = temperature;
      req->sampling.seed = seed * 7919u + p * 131u + uint64_t(k) + 1;
      req->max_tokens = std::max(1, std::min(g.max_tokens, ctx - int(req->prompt.size())));
      req->stop_ids = probe.stop_ids;
      Completion* cm = &out[p][size_t(k)];
      const TextCodec* codec = &s.codec();
      req->on_token = [cm, codec, stop_on_blank_line](int32_t id) {
        cm->ids.push_back(id);
        cm->text += codec->decode(std::span<const int32_t>(&id, 1));
        return !(stop_on_blank_line && cm->text.find("\n\n") != std::string::npos);
      };
      const auto stop = probe.stop_ids;
      req->on_done = [cm, stop](FinishReason why) {
        // a stop id ends the request without being emitted; it was the policy's choice: train on it
        if (why == FinishReason::Stop && !stop.empty() &&
            (cm->ids.empty() || cm->ids.back() != stop[0]) && cm->text.find("\n\n") == std::string::npos)
          cm->ids.push_back(stop[0]);
      };
      const std::string why = sched.check(*req);
      DSV3_CHECK(why.empty(), "grpo: a prompt cannot be generated from: ", why, " (shorten it or "
                 "raise --seq_len)");
      sched.add(std::move(req));
    }
  while (sched.step()) {
  }
  if (generated) *generated += sched.stats().generated_tokens;
  return out;
}

// A group as G rows of T+1 tokens: prompt + completion, the completion's targets masked in.
struct GroupRows {
  std::vector<int32_t> tokens;
  std::vector<float> mask;
};
GroupRows group_rows(const RlPrompt& p, const std::vector<Completion>& cs, int T, int32_t pad) {
  GroupRows g;
  const size_t G = cs.size();
  g.tokens.assign(G * (T + 1), pad);
  g.mask.assign(G * T, 0.0f);
  for (size_t i = 0; i < G; i++) {
    std::vector<int32_t> seq = p.ids;
    seq.insert(seq.end(), cs[i].ids.begin(), cs[i].ids.end());
    const size_t n = std::min(seq.size(), size_t(T) + 1);
    std::copy_n(seq.begin(), n, g.tokens.begin() + ptrdiff_t(i * (T + 1)));
    for (size_t t = p.ids.size(); t < n; t++) g.mask[i * T + t - 1] = 1.0f;
  }
  return g;
}

// Per-row token log-probs of the masked targets under w.
std::vector<std::vector<double>> row_logprobs(const ModelWeights& w, Workspace& ws,
                                              const TrainingLossConfig& loss, const GroupRows& g, int T) {
  const int G = int(g.mask.size()) / T;
  std::vector<float> lp(g.mask.size());
  ForwardOptions opt;
  opt.mtp = false;
  opt.token_logprobs = lp.data();
  forward(w, ws, loss, MicroBatch{{G, T}, g.tokens.data()}, opt);
  std::vector<std::vector<double>> out(static_cast<size_t>(G));
  for (int i = 0; i < G; i++)
    for (int t = 0; t < T; t++)
      if (g.mask[size_t(i) * T + t] > 0) out[size_t(i)].push_back(lp[size_t(i) * T + t]);
  return out;
}

}  // namespace

void run_grpo(FinetuneSession& s) {
  const FinetuneSpec& spec = s.spec();
  const FinetuneConfig& r = spec.run;
  const GrpoConfig& gc = spec.grpo;
  const int T = r.seq_len, P = r.batch, G = gc.group;
  const int32_t pad = std::max(0, s.codec().eos_id());
  const RewardRule rule(gc);
  JsonlReport rep;
  const auto prompts = read_prompt_jsonl(r.data, s.codec(), rep);
  for (const auto& p : rep.problems) std::fprintf(stderr, "skipped %s\n", p.c_str());
  const size_t n_eval = r.eval_fraction > 0 && prompts.size() >= 2
                            ? std::max<size_t>(1, size_t(std::floor(r.eval_fraction * double(prompts.size()))))
                            : 0;
  std::vector<const RlPrompt*> train, eval;
  for (size_t i = 0; i < prompts.size(); i++) {
    DSV3_CHECK(int(prompts[i].ids.size()) < T, r.data, ": prompt ", i + 1, " has ", prompts[i].ids.size(),
               " tokens, no room for a completion within --seq_len ", T);
    (i + n_eval < prompts.size() ? train : eval).push_back(&prompts[i]);
  }
  std::fprintf(stderr, "grpo: %s; %zu train prompts, %zu held out; G=%d, %d prompts a step\n",
               rep.summary().c_str(), train.size(), eval.size(), G, P);
  DSV3_CHECK(!train.empty(), r.data, ": no training prompts");
  // the frozen reference: the starting weights
  ModelWeights ref(s.config(), s.weights().dtype(), s.weights().device());
  ref.load(s.initial_params());
  auto evaluate = [&](int64_t step) {
    if (eval.empty()) return;
    const auto outs = sample_groups(s, eval, 1, 0.0, 0, nullptr);  // greedy
    double acc = 0, reward = 0, len = 0;
    for (size_t i = 0; i < eval.size(); i++) {
      const Completion& c = outs[i][0];
      acc += RewardRule::answer_matches(c.text, eval[i]->answer) ? 1 : 0;
      reward += rule.score(c.text, int(c.ids.size()), eval[i]->answer).total;
      len += double(c.ids.size());
    }
    const double n = double(eval.size());
    s.log({{"kind", "eval"}, {"step", step}, {"accuracy", acc / n}, {"reward", reward / n},
           {"length", len / n}, {"prompts", eval.size()}});
    char line[200];
    std::snprintf(line, sizeof line, "step %lld: held-out exact-match accuracy %.3f (%zu prompts, greedy), "
                  "reward %.3f, length %.1f", (long long)step, acc / n, eval.size(), reward / n, len / n);
    s.progress().print(line);
  };
  evaluate(s.start_step());
  const int64_t per_epoch = std::max<int64_t>(1, int64_t(train.size()) / P);
  const double t0 = now_seconds();
  double gen_s = 0, train_s = 0;
  int64_t samples = 0;
  for (int64_t step = s.start_step(); step < r.steps; step++) {
    const auto order = epoch_order(int64_t(train.size()), uint64_t(r.seed), step / per_epoch);
    std::vector<const RlPrompt*> batch;
    for (int a = 0; a < P; a++)
      batch.push_back(train[size_t(order[size_t(((step % per_epoch) * P + a) % int64_t(train.size()))])]);
    const double tg = now_seconds();
    int64_t gen_tokens = 0;
    const auto groups = sample_groups(s, batch, G, gc.temperature, uint64_t(r.seed) * 1000003u + uint64_t(step), &gen_tokens);
    const double tt = now_seconds();
    gen_s += tt - tg;
    double reward = 0, correct = 0, len = 0, kl = 0, clipped = 0, loss = 0;
    std::vector<float> coef;
    GroupRows rows;
    const StepResult res = s.update(step, P, [&](int a) {
      const RlPrompt& p = *batch[size_t(a)];
      const auto& cs = groups[size_t(a)];
      std::vector<double> rw;
      for (const Completion& c : cs) {
        const auto parts = rule.score(c.text, int(c.ids.size()), p.answer);
        rw.push_back(parts.total);
        correct += parts.correct ? 1.0 / (P * G) : 0;
        len += double(c.ids.size()) / (P * G);
      }
      for (double x : rw) reward += x / (P * G);
      const auto adv = group_advantages(rw);
      rows = group_rows(p, cs, T, pad);
      const auto cur = row_logprobs(s.weights(), s.workspace(), spec.loss, rows, T);
      const auto rf = row_logprobs(ref, s.workspace(), spec.loss, rows, T);
      std::vector<CompletionLogprobs> lp(static_cast<size_t>(G));
      for (int i = 0; i < G; i++)
        lp[size_t(i)] = {cur[size_t(i)], cur[size_t(i)], rf[size_t(i)], adv[size_t(i)]};
      const GrpoTerms t = grpo_objective(lp, gc.clip_ratio, gc.kl_beta);
      kl += t.kl / P;
      clipped += t.clipped / P;
      loss += t.loss / P;
      coef.assign(rows.mask.size(), 0.0f);
      for (int i = 0; i < G; i++) {  // d obj / d CE = -d obj / d log p
        size_t k = 0;
        for (int tt2 = 0; tt2 < T; tt2++)
          if (rows.mask[size_t(i) * T + tt2] > 0) coef[size_t(i) * T + tt2] = float(-t.d_logp[size_t(i)][k++]);
      }
      MicroBatch mb{{G, T}, rows.tokens.data()};
      mb.ce_coef = coef.data();
      return mb;
    });
    train_s += now_seconds() - tt;
    samples += int64_t(P) * G;
    const double el = now_seconds() - t0;
    s.log({{"kind", "train"}, {"step", step + 1}, {"loss", loss}, {"reward", reward}, {"correct", correct},
           {"kl", kl}, {"length", len}, {"clipped", clipped}, {"lr", res.lr}, {"grad_norm", res.grad_norm},
           {"generated_tokens", gen_tokens}, {"generation_s", gen_s}, {"training_s", train_s},
           {"samples_per_s", double(samples) / el}, {"elapsed_s", el}});
    char line[240];
    std::snprintf(line, sizeof line, "grpo step %lld/%lld reward %.3f correct %.2f kl %.4f len %.1f | "
                  "%.1f samples/s, %.0f%% generating", (long long)(step + 1), (long long)r.steps, reward,
                  correct, kl, len, double(samples) / el, 100.0 * gen_s / std::max(1e-9, gen_s + train_s));
    s.end_step(step, line, el, evaluate);
  }
  s.progress().finish();
  if (r.steps > s.start_step()) {
    evaluate(r.steps);
    std::fprintf(stderr, "grpo: %lld samples in %.1f s generating + %.1f s training (%.0f%% generating)\n",
                 (long long)samples, gen_s, train_s, 100.0 * gen_s / std::max(1e-9, gen_s + train_s));
  }
  s.save(std::max<int64_t>(r.steps, s.start_step()), {});
}

}  // namespace dsv3

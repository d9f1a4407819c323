#include "train/trainer.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "core/check.h"
#include "core/timer.h"
#include "data/builtin_corpus.h"
#include "train/train_data.h"
#include "eval/eval.h"
#include "infer/sample.h"
#include "infer/text_codec.h"
#include "ops/gemm.h"
#include "train/metrics.h"
#include "train/step.h"

namespace dsv3 {

namespace {

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

}  // namespace

nlohmann::json run_state_json(const RunSpec& spec, int64_t steps_done,
                              const nlohmann::json& data_state, uint64_t tokens_seen,
                              const Rng& rng) {
  return {{"steps_done", steps_done},
          {"rng", {rng.s[0], rng.s[1], rng.s[2], rng.s[3]}},
          {"data", data_state},
          {"tokens_seen", tokens_seen},
          {"train_config", fields_to_json(train_fields(), &spec.train)},
          {"loss_config", fields_to_json(loss_fields(), &spec.loss)}};
}

RunSpec spec_from_checkpoint(const Checkpoint& ck) {
  RunSpec s;
  s.model = ck.config;
  DSV3_CHECK(ck.train.contains("train_config") && ck.train.contains("loss_config"),
             "checkpoint has no training state (weights only): it cannot be resumed");
  fields_from_json(train_fields(), &s.train, ck.train["train_config"], "checkpoint train_config");
  fields_from_json(loss_fields(), &s.loss, ck.train["loss_config"], "checkpoint loss_config");
  s.train.resume.clear();
  return s;
}

void run_training(const RunSpec& spec, const Checkpoint* resume) {
  const ModelConfig& c = spec.model;
  const TrainConfig& tc = spec.train;
  validate(c);
  validate(tc);
  DSV3_CHECK(parse_device(tc.device) == Device::CPU || cuda::available(),
             "device ", tc.device, " requested but ", cuda::describe());
  const Exec ex{parse_device(tc.device)};
  require_cpu(ex, "training");
  const Dims d = tc.dims();
  std::filesystem::create_directories(tc.out);

  // ---- data
  TrainData data(tc, c);
  if (!data.tokenizer_path().empty())  // sample and eval find it beside the checkpoints
    std::filesystem::copy_file(data.tokenizer_path(), tc.out + "/tokenizer.dsv3tok",
                               std::filesystem::copy_options::overwrite_existing);

  // ---- model and optimizer
  Model model(c, spec.loss, d, tc.recompute, ex);
  AdamW opt(tc.adamw(), model.table());
  int64_t start = 0;
  uint64_t tokens_seen = 0;
  Rng rng(uint64_t(tc.seed) ^ 0x5eed5eed5eedull);
  if (resume) {
    DSV3_CHECK(resume->params.size() == model.num_params(), "checkpoint has ",
               resume->params.size(), " parameters, the model ", model.num_params());
    DSV3_CHECK(!resume->adam_m.empty(), "checkpoint has no optimizer state: cannot resume");
    std::copy(resume->params.begin(), resume->params.end(), model.params());
    opt.m = resume->adam_m;
    opt.v = resume->adam_v;
    start = resume->train.at("steps_done").get<int64_t>();
    data.restore(resume->train.at("data"));
    tokens_seen = resume->train.value("tokens_seen", uint64_t(0));
    const auto& r = resume->train.at("rng");
    DSV3_CHECK(r.is_array() && r.size() == 4, "checkpoint rng state is malformed");
    for (int i = 0; i < 4; i++) rng.s[i] = r[i].get<uint64_t>();
    DSV3_CHECK(start < tc.steps, "checkpoint is at step ", start, " and the run has ", tc.steps,
               " steps: nothing to do (raise --steps)");
  } else {
    init_params(c, model.table(), model.params(), uint64_t(tc.seed));
  }

  const ModelStats ms = model_stats(c, d.T);
  const double peak = tc.peak_gflops > 0 ? tc.peak_gflops : measure_gemm_peak_gflops();
  const double tokens_per_step = double(d.N()) * tc.grad_accum;
  std::fprintf(stderr,
               "dsv3 train: %.2fM params (%.2fM active), %d layers, %d experts top-%d, MTP %d\n"
               "  data: %s\n  batch %d x %d x accum %d = %.0f tokens/step, %lld steps, "
               "%d threads, fp32 GEMM peak %.1f GFLOP/s, activations %.1f MiB\n",
               ms.params / 1e6, ms.active_params / 1e6, c.layers, c.experts, c.topk, c.mtp_depth,
               data.describe().c_str(), d.B, d.T, tc.grad_accum, tokens_per_step, tc.steps,
               omp_get_max_threads(), peak, model.activation_bytes() / 1048576.0);
  if (resume) std::fprintf(stderr, "  resuming at step %lld\n", (long long)start);

  MetricsLog log(tc.out + "/metrics.jsonl");
  ProgressLine progress(tc.steps);
  const StepSettings ss = step_settings(tc.grad_accum, tc.clip, tc.schedule_config(), spec.loss);
  const auto names = model.moe_layer_names();
  double window_time = 0, window_tokens = 0;

  auto run_eval = [&](int64_t step) {
    if (data.val_sets().empty() || tc.eval_batches == 0) return;
    const double t0 = now_seconds();
    std::vector<double> losses;
    double sum = 0;
    int64_t tokens = 0;
    std::string line = "eval step " + std::to_string(step) + ":";
    for (const ValSet& v : data.val_sets()) {
      const EvalResult e = evaluate(model, v.tokens, d, tc.eval_batches);
      losses.push_back(e.loss);
      sum += e.loss * double(e.tokens), tokens += e.tokens;
      nlohmann::json rec = {{"kind", "eval"}, {"step", step}, {"domain", v.domain},
                            {"val_loss", e.loss}, {"val_mtp_loss", e.mtp_loss},
                            {"val_tokens", e.tokens}, {"val_ppl", std::exp(e.loss)}};
      line += " " + v.domain + " " + fmt("%.4f", e.loss);
      if (v.bytes_per_token > 0) {  // bits per byte: nats/token / ln 2 / (bytes/token)
        const double bpb = e.loss / std::log(2.0) / v.bytes_per_token;
        rec["val_bpb"] = bpb;
        line += " (" + fmt("%.3f", bpb) + " bpb)";
      }
      log.write(rec);
    }
    if (data.val_sets().size() > 1)  // the token-weighted mean over domains
      log.write({{"kind", "eval"}, {"step", step}, {"domain", "all"},
                 {"val_loss", tokens > 0 ? sum / double(tokens) : 0.0}, {"val_tokens", tokens}});
    if (const nlohmann::json mix = data.observe_validation(losses); !mix.is_null()) {
      log.write({{"kind", "mixture"}, {"step", step}, {"mixture", mix}});
      line += " | weights " + mix.at("weights").dump();
    }
    progress.print(line + fmt(" (%.1fs)", now_seconds() - t0));
  };
  auto save = [&](int64_t steps_done) {
    const std::string path = checkpoint_path(tc.out, steps_done);
    save_checkpoint(path, c, run_state_json(spec, steps_done, data.state(), tokens_seen, rng),
                    model.params(), opt.m.data(), opt.v.data(), model.num_params());
    prune_checkpoints(tc.out, tc.keep);
    progress.print("saved " + path);
  };

  std::vector<int32_t> split_rows;  // sequence-length warmup buffer
  const double run_t0 = now_seconds();
  for (int64_t step = start; step < tc.steps; step++) {
    const double t0 = now_seconds();
    data.set_step(step, tc.steps);
    // sequence-length warmup: each loader row of T+1 tokens becomes k rows of T/k + 1
    const int k = tc.seq_split(step);
    const Dims ds{d.B * k, d.T / k};
    StepResult r = train_step(model, opt, ss, step, ds, [&](int) {
      const int32_t* batch = data.next();
      if (k == 1) return batch;
      split_rows.resize(size_t(ds.B) * (ds.T + 1));
      for (int b = 0; b < d.B; b++)
        for (int j = 0; j < k; j++)
          std::copy_n(batch + size_t(b) * (d.T + 1) + size_t(j) * ds.T, ds.T + 1,
                      split_rows.data() + (size_t(b) * k + j) * (ds.T + 1));
      return static_cast<const int32_t*>(split_rows.data());
    });
    const double dt = now_seconds() - t0;
    tokens_seen += uint64_t(tokens_per_step);
    DSV3_CHECK(std::isfinite(r.loss.total), "loss is ", r.loss.total, " at step ", step + 1,
               ": training diverged (lower --lr, or check the data)");
    window_time = 0.8 * window_time + dt, window_tokens = 0.8 * window_tokens + tokens_per_step;
    const double tps = tokens_per_step / dt;
    const double mfu = tps * ms.train_flops_per_token / (peak * 1e9);
    double load_max = 0;
    nlohmann::json loads = nlohmann::json::array();
    for (size_t i = 0; i < r.load_max_over_mean.size(); i++) {
      load_max = std::max(load_max, r.load_max_over_mean[i]);
      loads.push_back({{"layer", names[i]}, {"max_over_mean", r.load_max_over_mean[i]}});
    }
    log.write({{"kind", "train"}, {"step", step + 1}, {"loss", r.loss.loss},
               {"mtp_loss", r.loss.mtp_loss}, {"balance_loss", r.loss.balance_loss},
               {"total_loss", r.loss.total}, {"grad_norm", r.grad_norm}, {"lr", r.lr},
               {"tokens_per_s", tps}, {"mfu", mfu}, {"step_s", dt}, {"tokens", tokens_seen},
               {"seq_len", ds.T},
               {"peak_rss_bytes", peak_rss_bytes()}, {"expert_load", loads}});
    const double eta = double(tc.steps - step - 1) * window_time / std::max(1e-9, window_tokens) *
                       tokens_per_step;
    std::string text = "loss " + fmt("%.4f", r.loss.loss);
    if (c.mtp_depth > 0) text += " | mtp " + fmt("%.4f", r.loss.mtp_loss);
    if (c.experts > 0) text += " | bal " + fmt("%.2e", r.loss.balance_loss);
    text += " | gnorm " + fmt("%.3f", r.grad_norm) + " | lr " + fmt("%.2e", r.lr) + " | " +
            fmt("%.0f tok/s", tps) + " | MFU " + fmt("%.1f%%", 100 * mfu);
    if (c.experts > 0) text += " | load max/mean " + fmt("%.2f", load_max);
    progress.update(step + 1, text, eta);
    const bool last = step + 1 == tc.steps;
    if ((tc.eval_every > 0 && (step + 1) % tc.eval_every == 0) || last) run_eval(step + 1);
    if ((tc.save_every > 0 && (step + 1) % tc.save_every == 0) || last) save(step + 1);
  }
  progress.finish();
  std::fprintf(stderr, "done in %s\n", format_duration(now_seconds() - run_t0).c_str());

  if (tc.sample_tokens > 0 && tc.train_data.empty()) {  // known text encoding: show what it learned
    const TextCodec codec = data.tokenizer_path().empty() ? TextCodec() : TextCodec(data.tokenizer_path());
    SampleConfig sc;
    sc.max_tokens = tc.sample_tokens;
    sc.seed = rng.next_u64();
    const std::string prompt = "Once upon a time";
    const auto out = generate(model, codec.encode(prompt), sc);
    std::printf("sample: %s%s\n", prompt.c_str(), codec.decode(out).c_str());
  }
}

}  // namespace dsv3

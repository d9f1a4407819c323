#include "train/trainer.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "core/check.h"
#include "core/timer.h"
#include "data/builtin_corpus.h"
#include "data/token_file.h"
#include "data/token_stream.h"
#include "eval/eval.h"
#include "infer/sample.h"
#include "ops/gemm.h"
#include "train/metrics.h"
#include "train/step.h"

namespace dsv3 {

namespace {

constexpr size_t kBuiltinTrainBytes = 4 << 20, kBuiltinValBytes = 256 << 10;

std::vector<int32_t> load_tokens(const std::string& path, int vocab, const char* what) {
  std::vector<int32_t> t = read_token_file(path);
  for (size_t i = 0; i < t.size(); i++)
    DSV3_CHECK(t[i] < vocab, what, " ", path, ": token ", t[i], " at index ", i,
               " is outside the model's vocabulary (", vocab, ")");
  return t;
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

}  // namespace

nlohmann::json run_state_json(const RunSpec& spec, int64_t steps_done, uint64_t data_pos,
                              uint64_t data_epoch, uint64_t tokens_seen, const Rng& rng) {
  return {{"steps_done", steps_done},
          {"rng", {rng.s[0], rng.s[1], rng.s[2], rng.s[3]}},
          {"data", {{"position", data_pos}, {"epoch", data_epoch}}},
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
  std::vector<int32_t> train_tokens, val_tokens;
  std::string data_desc;
  if (tc.train_data.empty()) {
    DSV3_CHECK(c.vocab >= 256, "the built-in corpus is byte-level: vocab must be >= 256");
    train_tokens = bytes_to_ids(builtin_corpus_text(uint64_t(tc.seed), kBuiltinTrainBytes));
    val_tokens = bytes_to_ids(builtin_corpus_text(uint64_t(tc.seed) + 1000003, kBuiltinValBytes));
    data_desc = "built-in corpus (" + std::to_string(train_tokens.size()) + " byte tokens)";
  } else {
    train_tokens = load_tokens(tc.train_data, c.vocab, "train_data");
    data_desc = tc.train_data + " (" + std::to_string(train_tokens.size()) + " tokens)";
  }
  if (!tc.val_data.empty()) val_tokens = load_tokens(tc.val_data, c.vocab, "val_data");
  TokenStream stream(std::move(train_tokens), d);

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
    stream.seek(resume->train.at("data").at("position").get<uint64_t>());
    stream.set_epoch(resume->train.at("data").at("epoch").get<uint64_t>());
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
               data_desc.c_str(), d.B, d.T, tc.grad_accum, tokens_per_step, tc.steps,
               omp_get_max_threads(), peak, model.activation_bytes() / 1048576.0);
  if (resume) std::fprintf(stderr, "  resuming at step %lld\n", (long long)start);

  MetricsLog log(tc.out + "/metrics.jsonl");
  ProgressLine progress(tc.steps);
  const StepSettings ss = step_settings(tc.grad_accum, tc.clip, tc.schedule_config(), spec.loss);
  const auto names = model.moe_layer_names();
  double window_time = 0, window_tokens = 0;

  auto run_eval = [&](int64_t step) {
    if (val_tokens.empty() || tc.eval_batches == 0) return;
    const double t0 = now_seconds();
    EvalResult e = evaluate(model, val_tokens, d, tc.eval_batches);
    log.write({{"kind", "eval"}, {"step", step}, {"val_loss", e.loss}, {"val_mtp_loss", e.mtp_loss},
               {"val_tokens", e.tokens}, {"val_ppl", std::exp(e.loss)}});
    progress.print("eval step " + std::to_string(step) + ": val loss " + fmt("%.4f", e.loss) +
                   " (ppl " + fmt("%.2f", std::exp(e.loss)) + ", " + std::to_string(e.tokens) +
                   " tokens, " + fmt("%.1fs", now_seconds() - t0) + ")");
  };
  auto save = [&](int64_t steps_done) {
    const std::string path = checkpoint_path(tc.out, steps_done);
    save_checkpoint(path, c, run_state_json(spec, steps_done, stream.position(), stream.epoch(),
                                            tokens_seen, rng),
                    model.params(), opt.m.data(), opt.v.data(), model.num_params());
    prune_checkpoints(tc.out, tc.keep);
    progress.print("saved " + path);
  };

  const double run_t0 = now_seconds();
  for (int64_t step = start; step < tc.steps; step++) {
    const double t0 = now_seconds();
    StepResult r = train_step(model, opt, ss, step, d, [&](int) { return stream.next(); });
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

  if (tc.sample_tokens > 0 && tc.train_data.empty()) {  // byte-level text: show what it learned
    SampleConfig sc;
    sc.max_tokens = tc.sample_tokens;
    sc.seed = rng.next_u64();
    const std::string prompt = "Once upon a time";
    const auto out = generate(model, bytes_to_ids(prompt), sc);
    std::printf("sample: %s%s\n", prompt.c_str(), ids_to_bytes(out).c_str());
  }
}

}  // namespace dsv3

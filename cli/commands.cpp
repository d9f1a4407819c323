#include "commands.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "checkpoint/checkpoint.h"
#include "checkpoint/hf.h"
#include "core/check.h"
#include "core/rng.h"
#include "core/io.h"
#include "core/timer.h"
#include "data/builtin_corpus.h"
#include "data/token_file.h"
#include "eval/eval.h"
#include "flags.h"
#include "infer/sample.h"
#include "infer/text_codec.h"
#include "ops/gemm.h"
#include "train/step.h"
#include "train/train_data.h"
#include "train/trainer.h"

namespace dsv3::cli {

namespace {

std::vector<FieldGroup> run_groups(RunSpec& s) {
  return {{"model", &model_fields(), &s.model},
          {"losses", &loss_fields(), &s.loss},
          {"training", &train_fields(), &s.train}};
}

void print_json(const nlohmann::json& j) { std::printf("%s\n", j.dump().c_str()); }

std::string human(double n) {
  char buf[32];
  if (n >= 1e9) std::snprintf(buf, sizeof buf, "%.2fB", n / 1e9);
  else if (n >= 1e6) std::snprintf(buf, sizeof buf, "%.2fM", n / 1e6);
  else if (n >= 1e3) std::snprintf(buf, sizeof buf, "%.1fK", n / 1e3);
  else std::snprintf(buf, sizeof buf, "%.0f", n);
  return buf;
}

// Parses a run's settings: preset (default `tiny`), config file, flags.
ParsedArgs parse_run(int argc, char** argv, RunSpec& s) {
  s.model = preset("tiny");
  return parse_args(argc, argv, 2, run_groups(s), [&](const std::string& p) { s.model = preset(p); });
}

// Loads a model for eval/sample/export: checkpoint file, run directory or HF directory.
std::unique_ptr<Model> load_for_inference(const std::string& path, Dims d) {
  DSV3_CHECK(!path.empty(), "--model is required (a checkpoint, run directory or HF directory)");
  LoadedModel lm = load_model_any(path);
  d.T = std::min(d.T, lm.config.max_seq);
  auto m = std::make_unique<Model>(lm.config, TrainingLossConfig{}, d);
  std::copy(lm.params.begin(), lm.params.end(), m->params());
  std::fprintf(stderr, "loaded %s\n", lm.source.c_str());
  return m;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
int cmd_train(int argc, char** argv) {
  RunSpec spec;
  ParsedArgs a = parse_run(argc, argv, spec);
  if (a.help) {
    std::printf("%s", help_text("dsv3 train [--preset NAME] [--config FILE] [--key value ...]",
                                "Trains a model. Without --train_data it uses the built-in corpus "
                                "(byte-level ids).\nWrites OUT/metrics.jsonl and OUT/ckpt_*.dsv3; "
                                "--resume OUT continues exactly.",
                                run_groups(spec), true)
                        .c_str());
    return 0;
  }
  const bool vocab_given =
      std::find(a.set_keys.begin(), a.set_keys.end(), "vocab") != a.set_keys.end();
  if (!spec.train.data.empty() && !vocab_given)  // fit the model to the data's tokenizer
    spec.model.vocab = vocab_for_prepared_data(spec.train.data);
  if (spec.train.resume.empty()) {
    run_training(spec, nullptr);
    return 0;
  }
  // Resume: the checkpoint's settings, then the training flags given now (not model ones).
  std::string path = spec.train.resume;
  if (std::filesystem::is_directory(path)) {
    auto list = list_checkpoints(path);
    DSV3_CHECK(!list.empty(), "no checkpoints (ckpt_*.dsv3) in ", path, " to resume from");
    path = list.back();
  }
  Checkpoint ck = load_checkpoint(path);
  RunSpec resumed = spec_from_checkpoint(ck);
  for (const auto& key : a.set_keys) {
    DSV3_CHECK(!find_field(model_fields(), key), "--", key,
               " changes the model, which a resumed run cannot do (drop it or start a new run)");
    auto groups = run_groups(resumed);
    for (const auto& g : groups)
      if (const FieldSpec* f = find_field(*g.fields, key)) {
        const auto& src = run_groups(spec);
        for (const auto& sg : src)
          if (sg.fields == g.fields) f->set(g.target, f->get(sg.target));
      }
  }
  resumed.train.resume = path;
  std::fprintf(stderr, "resuming from %s\n", path.c_str());
  run_training(resumed, &ck);
  return 0;
}

// ---------------------------------------------------------------------------------------------
int cmd_info(int argc, char** argv) {
  RunSpec spec;
  ParsedArgs a = parse_run(argc, argv, spec);
  if (a.help) {
    std::printf("%s", help_text("dsv3 info [--preset NAME] [--key value ...] [--json]",
                                "Parameters, activated parameters, training FLOPs per token and "
                                "training memory\n(fp32 weights, gradients, AdamW moments and "
                                "activations for batch x seq_len).",
                                run_groups(spec), true)
                        .c_str());
    return 0;
  }
  const ModelConfig& c = spec.model;
  validate(c);
  validate(spec.train);
  const ModelStats s = model_stats(c, spec.train.seq_len);
  const double P = double(s.params);
  const double act = double(Model::measure_activation_floats(c, spec.train.dims(),
                                                             spec.train.recompute)) * 4;
  const double weights = P * 4, grads = P * 4, adam = P * 8;
  const double total = weights + grads + adam + act;
  if (a.json) {
    print_json({{"preset", a.preset},
                {"params", s.params},
                {"params_main", s.params_main},
                {"params_mtp", s.params - s.params_main},
                {"active_params", s.active_params},
                {"active_matmul_params", s.active_matmul},
                {"train_flops_per_token", s.train_flops_per_token},
                {"fwd_flops_per_token", s.fwd_flops_per_token},
                {"seq_len", spec.train.seq_len},
                {"memory_bytes",
                 {{"weights", weights}, {"grads", grads}, {"adam", adam}, {"activations", act},
                  {"total", total}}},
                {"config", fields_to_json(model_fields(), &c)}});
    return 0;
  }
  auto gib = [](double b) { return b / (1024.0 * 1024 * 1024); };
  std::printf("model %s: %d layers (%d dense), hidden %d, %d heads, %d routed experts top-%d + %d "
              "shared, MTP %d\n",
              a.preset.empty() ? "(custom)" : a.preset.c_str(), c.layers, c.dense_layers,
              c.hidden, c.heads, c.experts, c.topk, c.shared_experts, c.mtp_depth);
  std::printf("  parameters        %s (%s main model + %s MTP)\n", human(P).c_str(),
              human(double(s.params_main)).c_str(), human(P - double(s.params_main)).c_str());
  std::printf("  activated/token   %s (main model; the embedding lookup excluded, as DeepSeek counts)\n",
              human(double(s.active_params)).c_str());
  std::printf("  train FLOPs/token %s at seq_len %d (6 x %s GEMM params incl. MTP + causal "
              "attention)\n",
              human(s.train_flops_per_token).c_str(), spec.train.seq_len,
              human(double(s.active_matmul)).c_str());
  std::printf("  training memory   %.3f GiB = weights %.3f + grads %.3f + AdamW %.3f + "
              "activations %.3f (batch %d x %d, recompute %s, fp32)\n",
              gib(total), gib(weights), gib(grads), gib(adam), gib(act), spec.train.batch,
              spec.train.seq_len, recompute_name(spec.train.recompute));
  return 0;
}

// ---------------------------------------------------------------------------------------------
namespace {
struct BenchOptions {
  int warmup_steps = 2;
  int timed_steps = 5;
};
const std::vector<FieldSpec>& bench_fields() {
  static const std::vector<FieldSpec> f = {
      field("warmup_steps", &BenchOptions::warmup_steps, "untimed steps first"),
      field("timed_steps", &BenchOptions::timed_steps, "timed steps"),
  };
  return f;
}
}  // namespace

int cmd_bench(int argc, char** argv) {
  RunSpec spec;
  BenchOptions bo;
  spec.model = preset("tiny");
  auto groups = run_groups(spec);
  groups.insert(groups.begin(), {"bench", &bench_fields(), &bo});
  ParsedArgs a = parse_args(argc, argv, 2, groups, [&](const std::string& p) { spec.model = preset(p); });
  if (a.help) {
    std::printf("%s", help_text("dsv3 bench [--preset NAME] [--key value ...] [--json]",
                                "Runs warm-up and timed optimizer steps (AdamW, clipping) on "
                                "synthetic tokens and reports\ntokens/s, MFU against the measured "
                                "fp32 GEMM peak, and peak memory.",
                                groups, true)
                        .c_str());
    return 0;
  }
  validate(spec.model);
  validate(spec.train);
  DSV3_CHECK(bo.warmup_steps >= 0 && bo.timed_steps >= 1, "need timed_steps >= 1");
  const ModelConfig& c = spec.model;
  const TrainConfig& tc = spec.train;
  const Dims d = tc.dims();
  Model model(c, spec.loss, d, tc.recompute, Exec{parse_device(tc.device)});
  init_params(c, model.table(), model.params(), uint64_t(tc.seed));
  AdamW opt(tc.adamw(), model.table());
  Rng rng(uint64_t(tc.seed));
  std::vector<int32_t> tokens(size_t(d.B) * (d.T + 1) * tc.grad_accum);
  for (auto& t : tokens) t = int32_t(rng.below(uint64_t(c.vocab)));
  const StepSettings ss = step_settings(tc.grad_accum, tc.clip, tc.schedule_config(), spec.loss);
  auto micro = [&](int i) { return tokens.data() + size_t(i) * d.B * (d.T + 1); };
  for (int i = 0; i < bo.warmup_steps; i++) train_step(model, opt, ss, i, d, micro);
  const double t0 = now_seconds();
  double loss = 0;
  for (int i = 0; i < bo.timed_steps; i++)
    loss = train_step(model, opt, ss, bo.warmup_steps + i, d, micro).loss.loss;
  const double dt = (now_seconds() - t0) / bo.timed_steps;
  const double peak = tc.peak_gflops > 0 ? tc.peak_gflops : measure_gemm_peak_gflops();
  const ModelStats s = model_stats(c, d.T);
  const double tps = double(d.N()) * tc.grad_accum / dt;
  const double mfu = tps * s.train_flops_per_token / (peak * 1e9);
  const double rss = double(peak_rss_bytes());
  if (a.json) {
    print_json({{"preset", a.preset}, {"batch", d.B}, {"seq_len", d.T},
                {"grad_accum", tc.grad_accum}, {"threads", omp_get_max_threads()},
                {"step_s", dt}, {"tokens_per_s", tps}, {"train_flops_per_token", s.train_flops_per_token},
                {"achieved_gflops", tps * s.train_flops_per_token / 1e9},
                {"peak_gflops", peak}, {"mfu", mfu}, {"peak_rss_bytes", rss}, {"loss", loss}});
  } else {
    std::printf("bench %s: batch %d x %d, %d threads: %.3f s/step, %.0f tokens/s, %.1f GFLOP/s "
                "of %.1f peak = MFU %.1f%%, peak memory %.0f MiB\n",
                a.preset.empty() ? "(custom)" : a.preset.c_str(), d.B, d.T, omp_get_max_threads(),
                dt, tps, tps * s.train_flops_per_token / 1e9, peak, 100 * mfu, rss / 1048576.0);
  }
  return 0;
}

// ---------------------------------------------------------------------------------------------
namespace {
struct EvalOptions {
  std::string model, data, text, tokenizer;
  int batch = 8, seq_len = 256, max_batches = 0;
};
const std::vector<FieldSpec>& eval_fields() {
  using E = EvalOptions;
  static const std::vector<FieldSpec> f = {
      field("model", &E::model, "checkpoint file, run directory or HF directory"),
      field("data", &E::data, "llm.c token file (256 x int32 header, uint16 ids)"),
      field("text", &E::text, "or a text file, encoded with the model's tokenizer"),
      field("tokenizer", &E::tokenizer, "tokenizer for --text (default: the one beside the model)"),
      field("batch", &E::batch, "sequences per batch"),
      field("seq_len", &E::seq_len, "tokens per sequence"),
      field("max_batches", &E::max_batches, "batches to score (0 = all that fit)"),
  };
  return f;
}
}  // namespace

int cmd_eval(int argc, char** argv) {
  EvalOptions o;
  std::vector<FieldGroup> groups = {{"eval", &eval_fields(), &o}};
  const auto a = parse_command(argc, argv, 2, groups, "dsv3 eval --model M --data F [--json]",
                                "Mean next-token loss (nats) and MTP loss of a model over "
                                "non-overlapping batches of a token file.");
  if (!a) return 0;
  DSV3_CHECK(o.data.empty() != o.text.empty(),
             "--data (an llm.c token file) or --text (a text file) is required, not both");
  DSV3_CHECK(o.batch >= 1 && o.seq_len >= 1 && o.max_batches >= 0, "batch and seq_len must be >= 1");
  std::vector<int32_t> tokens;
  double bytes_per_token = 0;  // known for --text: bits per byte
  if (!o.text.empty()) {
    const std::string tok = o.tokenizer.empty() ? find_tokenizer_for_model(o.model) : o.tokenizer;
    const TextCodec codec = tok.empty() ? TextCodec() : TextCodec(tok);
    const std::string text = read_file(o.text);
    tokens = codec.encode(text);
    DSV3_CHECK(!tokens.empty(), o.text, " is empty");
    bytes_per_token = double(text.size()) / double(tokens.size());
    std::fprintf(stderr, "%s: %zu bytes -> %zu tokens (%s)\n", o.text.c_str(), text.size(),
                 tokens.size(), codec.describe().c_str());
  } else {
    tokens = read_token_file(o.data);
  }
  auto model = load_for_inference(o.model, {o.batch, o.seq_len});
  const int V = model->config().vocab;
  for (size_t i = 0; i < tokens.size(); i++)
    DSV3_CHECK(tokens[i] < V, (o.data.empty() ? o.text : o.data), ": token ", tokens[i], " at index ", i,
               " is outside the model's vocabulary (", V, ")");
  const Dims d{o.batch, model->max_context()};
  const double t0 = now_seconds();
  EvalResult r = evaluate(*model, tokens, d, o.max_batches);
  const double dt = now_seconds() - t0;
  if (a->json) {
    nlohmann::json j = {{"loss", r.loss}, {"perplexity", std::exp(r.loss)}, {"tokens", r.tokens},
                        {"batches", r.batches}, {"seq_len", d.T}, {"seconds", dt}};
    if (model->config().mtp_depth > 0) j["mtp_loss"] = r.mtp_loss;
    if (bytes_per_token > 0) j["bits_per_byte"] = r.loss / std::log(2.0) / bytes_per_token;
    print_json(j);
  } else {
    std::printf("loss %.6f (perplexity %.3f)", r.loss, std::exp(r.loss));
    if (model->config().mtp_depth > 0) std::printf(", MTP loss %.6f", r.mtp_loss);
    if (bytes_per_token > 0) std::printf(", %.4f bits/byte", r.loss / std::log(2.0) / bytes_per_token);
    std::printf(" over %lld tokens in %d batches of %d x %d (%.1f s)\n", (long long)r.tokens,
                r.batches, o.batch, d.T, dt);
  }
  return 0;
}

// ---------------------------------------------------------------------------------------------
namespace {
struct SampleOptions {
  std::string model, tokenizer;
  std::string prompt = "Once upon a time";
  int tokens = 200;
  double temperature = 0.8;
  int top_k = 0;
  double top_p = 1.0;
  long long seed = 1;
  int context = 1024;
};
const std::vector<FieldSpec>& sample_fields() {
  using S = SampleOptions;
  static const std::vector<FieldSpec> f = {
      field("model", &S::model, "checkpoint file, run directory or HF directory"),
      field("prompt", &S::prompt, "text to continue"),
      field("tokenizer", &S::tokenizer,
            "tokenizer (default: the one beside the model, else byte-level ids)"),
      field("tokens", &S::tokens, "tokens to generate"),
      field("temperature", &S::temperature, "softmax temperature (0 = greedy)"),
      field("top_k", &S::top_k, "keep the k most likely tokens (0 = off)"),
      field("top_p", &S::top_p, "nucleus sampling mass (1 = off)"),
      field("seed", &S::seed, "sampling seed"),
      field("context", &S::context, "longest context fed to the model"),
  };
  return f;
}
}  // namespace

int cmd_sample(int argc, char** argv) {
  SampleOptions o;
  std::vector<FieldGroup> groups = {{"sample", &sample_fields(), &o}};
  const auto a = parse_command(argc, argv, 2, groups, "dsv3 sample --model M [--prompt TEXT] [--key value ...]",
                                "Generates text, streaming it to stdout.");
  if (!a) return 0;
  DSV3_CHECK(o.tokens >= 0 && o.context >= 1, "tokens must be >= 0 and context >= 1");
  DSV3_CHECK(!o.prompt.empty(), "--prompt must not be empty");
  auto model = load_for_inference(o.model, {1, o.context});
  const std::string tok = o.tokenizer.empty() ? find_tokenizer_for_model(o.model) : o.tokenizer;
  const TextCodec codec = tok.empty() ? TextCodec() : TextCodec(tok);
  std::fprintf(stderr, "text: %s\n", codec.describe().c_str());
  SampleConfig sc{o.temperature, o.top_k, o.top_p, o.tokens, uint64_t(o.seed)};
  std::printf("%s", o.prompt.c_str());
  std::fflush(stdout);
  generate(*model, codec.encode(o.prompt), sc, [&](int32_t id) {
    std::printf("%s", codec.decode(std::span<const int32_t>(&id, 1)).c_str());
    std::fflush(stdout);
  });
  std::printf("\n");
  return 0;
}

// ---------------------------------------------------------------------------------------------
namespace {
struct ExportOptions {
  std::string model, format = "hf", out, dtype = "f32";
};
const std::vector<FieldSpec>& export_fields() {
  using X = ExportOptions;
  static const std::vector<FieldSpec> f = {
      field("model", &X::model, "checkpoint file, run directory or HF directory"),
      field("format", &X::format, "output format (hf)"),
      field("out", &X::out, "output directory"),
      field("dtype", &X::dtype, "tensor dtype: f32 or bf16"),
  };
  return f;
}
struct ImportOptions {
  std::string hf, out;
};
const std::vector<FieldSpec>& import_fields() {
  static const std::vector<FieldSpec> f = {
      field("hf", &ImportOptions::hf, "Hugging Face DeepseekV3 directory"),
      field("out", &ImportOptions::out, "dsv3 checkpoint file to write"),
  };
  return f;
}
}  // namespace

int cmd_export(int argc, char** argv) {
  ExportOptions o;
  std::vector<FieldGroup> groups = {{"export", &export_fields(), &o}};
  const auto a = parse_command(argc, argv, 2, groups, "dsv3 export --model M --format hf --out DIR [--dtype bf16]",
                                "Writes config.json + model.safetensors in the Hugging Face "
                                "DeepseekV3 layout.");
  if (!a) return 0;
  DSV3_CHECK(o.format == "hf", "unknown --format '", o.format, "' (supported: hf)");
  DSV3_CHECK(!o.out.empty(), "--out is required");
  DSV3_CHECK(!o.model.empty(), "--model is required");
  const DType dt = parse_dtype(o.dtype);
  LoadedModel lm = load_model_any(o.model);
  const ParamTable t = build_param_table(lm.config);
  export_hf(o.out, lm.config, t, lm.params.data(), dt);
  std::printf("exported %s to %s (%s)\n", lm.source.c_str(), o.out.c_str(), dtype_name(dt));
  return 0;
}

int cmd_import(int argc, char** argv) {
  ImportOptions o;
  std::vector<FieldGroup> groups = {{"import", &import_fields(), &o}};
  const auto a = parse_command(argc, argv, 2, groups, "dsv3 import --hf DIR --out FILE.dsv3",
                                "Reads a Hugging Face DeepseekV3 directory (config.json + "
                                "safetensors, sharded or not) into a weights-only dsv3 "
                                "checkpoint.");
  if (!a) return 0;
  DSV3_CHECK(!o.hf.empty() && !o.out.empty(), "--hf and --out are required");
  HfModel m = import_hf(o.hf);
  save_checkpoint(o.out, m.config, nlohmann::json::object(), m.params.data(), nullptr, nullptr,
                  m.params.size());
  std::printf("imported %s -> %s (%zu parameters)\n", o.hf.c_str(), o.out.c_str(), m.params.size());
  return 0;
}

}  // namespace dsv3::cli

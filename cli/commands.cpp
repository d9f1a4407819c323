#include "commands.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "checkpoint/checkpoint.h"
#include "checkpoint/gguf.h"
#include "checkpoint/hf.h"
#include "checkpoint/quantized.h"
#include "checkpoint/sharded.h"
#include "dist/agree.h"
#include "dist/comm.h"
#include "core/check.h"
#include "core/io.h"
#include "core/profile.h"
#include "core/rng.h"
#include "core/timer.h"
#include "data/token_file.h"
#include "eval/eval.h"
#include "eval/position_loss.h"
#include "flags.h"
#include "infer/sample.h"
#include "infer/text_stream.h"
#include "ops/gemm.h"
#include "tokenizer/formats.h"
#include "tokenizer/text_codec.h"
#include "train/state.h"
#include "train/step.h"
#include "train/train_data.h"
#include "train/parallel_run.h"
#include "train/trainer.h"

namespace dsv3::cli {

namespace {

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
ParsedArgs parse_run(int argc, char** argv, std::vector<FieldGroup> groups, RunSpec& s) {
  s.model = preset("tiny");
  return parse_args(argc, argv, 2, groups, [&](const std::string& p) { s.model = preset(p); });
}

// The device of eval/sample (--device), checked before anything is loaded: a missing GPU is
// one clear error, and --tf32 is for CUDA only.
Device pick_device(const std::string& name, const PrecisionConfig& pc) {
  const Device d = parse_device(name);
  DSV3_CHECK(backend::available(d), "device ", name, " requested but ", backend::describe(d));
  DSV3_CHECK(!pc.tf32 || (d == Device::CUDA && pc.precision == Precision::FP32),
             "--tf32 needs --device cuda and --precision fp32 (drop it)");
  gemm_allow_tf32(pc.tf32);
  return d;
}

// A model for eval/sample: checkpoint file, run directory, HF directory or int8 model, in
// `precision` (an int8 model's activations and high-precision tensors), on `device`.
// Checkpoints hold fp32 weights whatever device wrote them.
std::unique_ptr<ModelWeights> load_weights(const std::string& path, Precision precision,
                                           Device device) {
  DSV3_CHECK(!path.empty(), "--model is required (a checkpoint, run directory or HF directory)");
  LoadedModel lm = load_model_any(path, /*keep_int8=*/true);
  DSV3_CHECK(lm.int8.scheme == QuantScheme::None || device == Device::CPU, path,
             " is an int8 model: int8 GEMMs run on the CPU only (drop --device cuda)");
  auto w = make_model_weights(lm, compute_dtype(precision), device);
  std::fprintf(stderr, "loaded %s (%s on %s)\n", lm.source.c_str(), precision_name(precision),
               device_name(device));
  if (!lm.note.empty()) std::fprintf(stderr, "%s\n", lm.note.c_str());
  return w;
}

// A resumed run may repeat its model (a preset, the original command line) but not change it.
void check_same_model(const ModelConfig& given, const ModelConfig& ckpt, const std::string& what) {
  std::string diff;
  int n = 0;
  for (const FieldSpec& f : model_fields()) {
    const std::string a = f.get(&given), b = f.get(&ckpt);
    if (a == b) continue;
    if (n++ < 4) diff += (diff.empty() ? "" : ", ") + f.name + " " + a + " vs " + b;
  }
  if (n > 4) diff += " and " + std::to_string(n - 4) + " more";
  DSV3_CHECK(n == 0, what, " describes another model than the checkpoint's (", diff,
             "): a resumed run cannot change the model (drop it or start a new run)");
}

// The groups of `dsv3 train`, `bench` and `info` that a command does not use are not offered.
std::vector<FieldGroup> pick(const std::vector<FieldGroup>& all, std::initializer_list<const char*> titles) {
  std::vector<FieldGroup> out;
  for (const char* t : titles)
    for (const auto& g : all)
      if (g.title == t) out.push_back(g);
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
int cmd_train(int argc, char** argv) {
  // Under mpirun/srun every rank runs this; the settings and the checkpoint are checked on each
  // and agreed on (dist/agree.h), so a bad flag gives one message, not one per rank.
  dist::init(&argc, &argv);
  const dist::Comm& world = dist::world();
  RunSpec spec, run;
  const auto groups = run_groups(spec);
  Checkpoint ck;
  bool help = false;
  try {
    dist::agree(world, [&] {
      ParsedArgs a = parse_run(argc, argv, groups, spec);
      if ((help = a.help)) return;
      const bool vocab_given =
          std::find(a.set_keys.begin(), a.set_keys.end(), "vocab") != a.set_keys.end();
      const std::string& init = spec.compress.init_from;
      if (!init.empty()) {  // the model is the weights' (model flags only where they allow it)
        DSV3_CHECK(spec.checkpoint.resume.empty(), "--init_from starts a new run from weights, "
                   "--resume continues one: give one of them");
        DSV3_CHECK(a.preset.empty(), "--preset does not apply with --init_from: the model's "
                   "config comes from ", init);
        spec.model = init_from_config(load_model_any(init).config, spec.model, a.set_keys);
      } else if (!spec.data.data.empty() && !vocab_given) {  // fit the model to the data's tokenizer
        spec.model.vocab = vocab_for_prepared_data(spec.data.data);
      }
      if (spec.checkpoint.resume.empty()) {
        reject_inapplicable(spec, a.set_keys);
        run = spec;
      } else {
        // Resume: the checkpoint's settings, then the settings given now. Model settings may
        // be repeated (the original command line) but not changed.
        std::string path = spec.checkpoint.resume;
        if (std::filesystem::is_directory(path) && !is_sharded_checkpoint(path)) {
          DSV3_CHECK(std::filesystem::exists(std::filesystem::path(path) / "manifest.json") ||
                         any_checkpoint_step(path) < 0,
                     path, " is an incomplete sharded checkpoint (no manifest.json: the save "
                     "did not finish); resume from its run directory to take the last complete one");
          path = latest_checkpoint(path);
          DSV3_CHECK(!path.empty(), "no complete checkpoints (ckpt_*.dsv3 or ckpt_*.shards) in ",
                     spec.checkpoint.resume, " to resume from");
        }
        ck = is_sharded_checkpoint(path) ? sharded_checkpoint_state(path) : load_checkpoint(path);
        run = spec_from_checkpoint(ck);
        const auto from = run_groups(spec), to = run_groups(run);
        for (const auto& key : a.set_keys) {
          if (key == "resume") continue;
          const FieldGroup *gf = nullptr, *gt = nullptr;
          const FieldSpec* f = find_field(from, key, &gf);
          find_field(to, key, &gt);
          if (gf->title == "model") {
            DSV3_CHECK(f->get(gf->target) == f->get(gt->target), "--", key, " ", f->get(gf->target),
                       " changes the model (the checkpoint has ", f->get(gt->target),
                       "), which a resumed run cannot do (drop it or start a new run)");
            continue;
          }
          f->set(gt->target, f->get(gf->target));
        }
        // the original command line's preset: it must describe this model (after the model flags
        // above, each equal to the checkpoint's, so a difference left is the preset's)
        if (!a.preset.empty()) check_same_model(spec.model, run.model, "--preset " + a.preset);
        run.checkpoint.resume = path;
        // Without --out the run continues beside its checkpoint, wherever the directory was
        // moved (not in the directory the checkpoint's settings name, which may now be
        // another run's).
        if (std::find(a.set_keys.begin(), a.set_keys.end(), "out") == a.set_keys.end()) {
          const std::string dir = std::filesystem::path(path).parent_path().string();
          run.run.out = dir.empty() ? "." : dir;
        }
        reject_inapplicable(run, a.set_keys);
      }
      validate(run);
      validate_parallel(run.parallel, run.distributed, run.model, world.size());
      validate_pipeline_micros(run.parallel, run.distributed, world.size(), run.run.batch,
                               run.run.grad_accum);
    });
  } catch (...) {
    dist::end_agreed_error("train");  // every rank got here: rank 0 says it, then all end
  }
  if (help) {
    if (world.rank() == 0)
      std::printf("%s", help_text("dsv3 train [--preset NAME] [--config FILE] [--key value ...]",
                                  "Trains a model. Without --data or --train_data it uses the "
                                  "built-in corpus (byte-level ids).\nWrites OUT/metrics.jsonl and "
                                  "OUT/ckpt_*.dsv3; --resume OUT continues exactly. Under mpirun "
                                  "or srun: data, expert and pipeline parallel (--dp, --ep, --zero, --pp, ...),\n"
                                  "sharded checkpoints OUT/ckpt_*.shards (docs/parallel.md).",
                                  groups, true)
                          .c_str());
    dist::finalize();
    return 0;
  }
  const bool resuming = !run.checkpoint.resume.empty();
  if (resuming && world.rank() == 0)
    std::fprintf(stderr, "resuming from %s\n", run.checkpoint.resume.c_str());
  try {
    run_training(run, resuming ? &ck : nullptr);
  } catch (const dist::QuietError&) {  // agreed inside training (e.g. the run directory)
    dist::end_agreed_error("train");
  } catch (const dist::AgreedError&) {
    dist::end_agreed_error("train");
  } catch (const Error& e) {
    if (world.size() > 1)  // this rank's own failure: say which (mpirun then stops the others)
      throw Error(cat("rank ", world.rank(), " of ", world.size(), ": ", e.what()));
    throw;
  }
  dist::finalize();
  return 0;
}

// ---------------------------------------------------------------------------------------------
int cmd_info(int argc, char** argv) {
  RunSpec spec;
  const auto groups = pick(run_groups(spec), {"model", "training", "precision"});
  ParsedArgs a = parse_run(argc, argv, groups, spec);
  if (a.help) {
    std::printf("%s", help_text("dsv3 info [--preset NAME] [--key value ...] [--json]",
                                "Parameters, activated parameters, training FLOPs per token and "
                                "training memory\n(weights in the compute precision, fp32 master "
                                "weights, gradients and AdamW moments, activations for batch x "
                                "seq_len).",
                                groups, true)
                        .c_str());
    return 0;
  }
  const ModelConfig& c = spec.model;
  validate(c);
  validate(spec.run);
  const DType dt = compute_dtype(spec.precision.precision);
  const ModelStats s = model_stats(c, spec.run.seq_len);
  const double P = double(s.params);
  WorkspaceConfig wc;
  wc.max = spec.run.dims();
  wc.recompute = spec.run.recompute;
  const double act = double(Workspace::measure_bytes(c, dt, wc));
  const double weights = P * double(dtype_size(dt));
  const double master = dt == DType::F32 ? 0.0 : P * 4, grads = P * 4, adam = P * 8;
  const double total = weights + master + grads + adam + act;
  if (a.json) {
    print_json({{"preset", a.preset},
                {"params", s.params},
                {"params_main", s.params_main},
                {"params_mtp", s.params - s.params_main},
                {"active_params", s.active_params},
                {"active_matmul_params", s.active_matmul},
                {"train_flops_per_token", s.train_flops_per_token},
                {"fwd_flops_per_token", s.fwd_flops_per_token},
                {"seq_len", spec.run.seq_len},
                {"precision", precision_name(spec.precision.precision)},
                {"memory_bytes",
                 {{"weights", weights}, {"master", master}, {"grads", grads}, {"adam", adam},
                  {"activations", act}, {"total", total}}},
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
              human(s.train_flops_per_token).c_str(), spec.run.seq_len,
              human(double(s.active_matmul)).c_str());
  std::printf("  training memory   %.3f GiB = weights %.3f (%s)%s + grads %.3f + AdamW %.3f + "
              "activations %.3f (batch %d x %d, recompute %s)\n",
              gib(total), gib(weights), dtype_name(dt),
              master > 0 ? (" + fp32 master " + std::to_string(gib(master)).substr(0, 5)).c_str() : "",
              gib(grads), gib(adam), gib(act), spec.run.batch, spec.run.seq_len,
              recompute_name(spec.run.recompute));
  return 0;
}

// ---------------------------------------------------------------------------------------------
namespace {
struct BenchOptions {
  int warmup_steps = 2;
  int timed_steps = 5;
  bool profile = false;
};
const std::vector<FieldSpec>& bench_fields() {
  static const std::vector<FieldSpec> f = {
      field("warmup_steps", &BenchOptions::warmup_steps, "untimed steps first", in_range(0, 1000000)),
      field("timed_steps", &BenchOptions::timed_steps, "timed steps", in_range(1, 1000000)),
      field("profile", &BenchOptions::profile, "print the time of every op over the timed steps"),
  };
  return f;
}
}  // namespace

int cmd_bench(int argc, char** argv) {
  RunSpec spec;
  BenchOptions bo;
  auto groups = pick(run_groups(spec),
                     {"model", "losses", "training", "optimizer", "schedule", "precision"});
  groups.insert(groups.begin(), {"bench", &bench_fields(), &bo});
  ParsedArgs a = parse_run(argc, argv, groups, spec);
  if (a.help) {
    std::printf("%s", help_text("dsv3 bench [--preset NAME] [--key value ...] [--json]",
                                "Runs warm-up and timed optimizer steps (AdamW, clipping, routing-"
                                "bias update) on\nrandom tokens and reports tokens/s, MFU against "
                                "the measured fp32 and bf16 GEMM peaks,\nand peak memory.",
                                groups, true)
                        .c_str());
    return 0;
  }
  validate(spec.model);
  validate(spec.run);
  validate(spec.optimizer);
  validate(spec.schedule);
  validate(spec.precision);
  DSV3_CHECK(bo.warmup_steps >= 0 && bo.timed_steps >= 1, "need timed_steps >= 1");
  DSV3_CHECK(spec.run.seq_len <= spec.model.max_seq, "sequence length ", spec.run.seq_len,
             " exceeds max_seq ", spec.model.max_seq);
  const ModelConfig& c = spec.model;
  const RunConfig& rc = spec.run;
  reject_inapplicable(spec, a.set_keys);
  const Device device = parse_device(rc.device);
  DSV3_CHECK(backend::available(device), "device ", rc.device, " requested but ",
             backend::describe(device));
  gemm_allow_tf32(spec.precision.tf32);
  const DType dt = compute_dtype(spec.precision.precision);
  const Dims d = rc.dims();
  ModelWeights weights(c, dt, device);
  TrainState st(weights, spec.optimizer, spec.precision);
  {
    std::vector<float> init(weights.table().total);
    init_params(c, weights.table(), init.data(), uint64_t(rc.seed));
    st.load_weights(init);
  }
  WorkspaceConfig wc;
  wc.max = d;
  wc.recompute = rc.recompute;
  wc.cuda_graphs = rc.cuda_graphs;
  Workspace ws(c, dt, device, wc);
  Rng rng(uint64_t(rc.seed));
  std::vector<int32_t> tokens(size_t(d.B) * (d.T + 1) * rc.grad_accum);
  for (auto& t : tokens) t = int32_t(rng.below(uint64_t(c.vocab)));
  const StepSettings ss = step_settings(rc.grad_accum, spec.schedule, bo.warmup_steps + bo.timed_steps,
                                        spec.loss);
  auto micro = [&](int i) { return MicroBatch{d, tokens.data() + size_t(i) * d.B * (d.T + 1)}; };
  const Exec ex{device};
  // a CPU without bf16 GEMMs (no AVX512-BF16: oneDNN refuses) has no bf16 peak; fp32 runs go on
  auto peak_bf16 = [&] {
    try {
      return measure_gemm_peak_gflops(device, DType::BF16);
    } catch (const std::exception&) {
      return 0.0;
    }
  };
  double peak32 = measure_gemm_peak_gflops(device, DType::F32);
  double peak16 = peak_bf16();
  for (int i = 0; i < bo.warmup_steps; i++) train_step(st, ws, spec.loss, ss, i, micro);
  if (bo.profile) {
    profile::reset();
    profile::enable(true);
  }
  backend::reset_peak(device);
  backend::synchronize(ex);  // the GPU's queue is empty when the clock starts and stops
  const double t0 = now_seconds();
  double loss = 0;
  for (int i = 0; i < bo.timed_steps; i++)
    loss = train_step(st, ws, spec.loss, ss, bo.warmup_steps + i, micro).loss.loss;
  backend::synchronize(ex);
  const double dt_step = (now_seconds() - t0) / bo.timed_steps;
  // the peaks again after the timed steps: a shared machine's slow spell during one measurement
  // would otherwise inflate MFU; the better of the two is the machine's rate
  peak32 = std::max(peak32, measure_gemm_peak_gflops(device, DType::F32));
  peak16 = std::max(peak16, peak_bf16());
  if (bo.profile) {
    profile::enable(false);
    std::fprintf(stderr, "%s", profile::report(dt_step * bo.timed_steps).c_str());
  }
  const double peak = rc.peak_gflops > 0 ? rc.peak_gflops : (dt == DType::BF16 ? peak16 : peak32);
  const ModelStats s = model_stats(c, d.T);
  const double tps = double(d.N()) * rc.grad_accum / dt_step;
  const double achieved = tps * s.train_flops_per_token / 1e9;
  const double mfu = achieved / peak;
  const double rss = double(peak_rss_bytes());
  const backend::MemoryStats mem = backend::memory_stats(device);
  if (mfu > 1 && rc.peak_gflops == 0)
    std::fprintf(stderr, "warning: achieved %.1f GFLOP/s exceeds the measured peak %.1f: the "
                 "peak measurement was disturbed (set --peak_gflops)\n", achieved, peak);
  if (a.json) {
    print_json({{"preset", a.preset}, {"precision", precision_name(spec.precision.precision)},
                {"device", backend::describe(device)}, {"cuda_graphs", rc.cuda_graphs},
                {"peak_device_bytes", mem.peak}, {"reserved_device_bytes", mem.reserved},
                {"batch", d.B}, {"seq_len", d.T}, {"grad_accum", rc.grad_accum},
                {"recompute", recompute_name(rc.recompute)}, {"threads", omp_get_max_threads()},
                {"step_s", dt_step}, {"tokens_per_s", tps},
                {"train_flops_per_token", s.train_flops_per_token}, {"achieved_gflops", achieved},
                {"peak_gflops", peak}, {"peak_gflops_fp32", peak32}, {"peak_gflops_bf16", peak16},
                {"mfu", mfu}, {"mfu_fp32_peak", achieved / peak32},
                {"peak_rss_bytes", rss}, {"peak_alloc_bytes", mem.peak}, {"loss", loss}});
  } else {
    std::printf("bench %s %s on %s: batch %d x %d, %d threads, recompute %s: %.3f s/step, %.0f "
                "tokens/s, %.1f GFLOP/s = MFU %.1f%% of the %s peak %.1f (fp32 peak %.1f, bf16 "
                "%.1f), peak memory %.0f MiB (device: %.0f MiB)\n",
                a.preset.empty() ? "(custom)" : a.preset.c_str(),
                precision_name(spec.precision.precision), device_name(device), d.B, d.T,
                omp_get_max_threads(), recompute_name(rc.recompute), dt_step, tps, achieved,
                100 * mfu, dtype_name(dt), peak, peak32, peak16, rss / 1048576.0,
                mem.peak / 1048576.0);
  }
  return 0;
}

// ---------------------------------------------------------------------------------------------
namespace {
struct EvalOptions {
  std::string model, data, text, tokenizer, device = "cpu";
  int batch = 8, seq_len = 256, max_batches = 0, position_buckets = 0;
};
const std::vector<FieldSpec>& eval_command_fields() {
  using E = EvalOptions;
  static const std::vector<FieldSpec> f = {
      field("model", &E::model, "checkpoint file, run directory or HF directory"),
      field("data", &E::data, "llm.c token file (256 x int32 header, uint16 ids)"),
      field("text", &E::text, "or a text file, encoded with the model's tokenizer"),
      field("tokenizer", &E::tokenizer, "tokenizer for --text (default: the one beside the model)"),
      field("batch", &E::batch, "sequences per batch", in_range(1, 1 << 20)),
      field("seq_len", &E::seq_len, "tokens per sequence", in_range(1, 1 << 24)),
      field("max_batches", &E::max_batches, "batches to score (0 = all that fit)", at_least(0)),
      field("position_buckets", &E::position_buckets, "also report the loss by position in the "
            "sequence, in this many equal buckets (long-context validation)", in_range(0, 4096)),
      field("device", &E::device, "cpu or cuda"),
  };
  return f;
}
}  // namespace

int cmd_eval(int argc, char** argv) {
  EvalOptions o;
  PrecisionConfig pc;
  std::vector<FieldGroup> groups = {{"eval", &eval_command_fields(), &o},
                                    {"precision", &precision_fields(), &pc}};
  const auto a = parse_command(argc, argv, 2, groups, "dsv3 eval --model M --data F [--json]",
                                "Mean next-token loss (nats) and MTP loss of a model over "
                                "non-overlapping batches of a token file.");
  if (!a) return 0;
  for (const auto& k : a->set_keys)
    DSV3_CHECK(k != "loss_scale" && k != "loss_scale_window", "--", k,
               " is a training setting; eval only takes --precision");
  DSV3_CHECK(o.data.empty() != o.text.empty(),
             "--data (an llm.c token file) or --text (a text file) is required, not both");
  const Device device = pick_device(o.device, pc);
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
  auto weights = load_weights(o.model, pc.precision, device);
  const ModelConfig& c = weights->config();
  const int V = c.vocab;
  for (size_t i = 0; i < tokens.size(); i++)
    DSV3_CHECK(tokens[i] < V, (o.data.empty() ? o.text : o.data), ": token ", tokens[i], " at index ", i,
               " is outside the model's vocabulary (", V, ")");
  DSV3_CHECK(o.seq_len <= c.max_seq, "seq_len ", o.seq_len, " exceeds the model's max_seq ",
             c.max_seq, " (positions it was built for): lower --seq_len");
  const Dims d{o.batch, o.seq_len};
  WorkspaceConfig wc;
  wc.max = d;
  wc.backward = false;
  Workspace ws(c, weights->dtype(), weights->device(), wc);
  const double t0 = now_seconds();
  EvalResult r = evaluate(*weights, ws, tokens, d, o.max_batches);
  const std::vector<double> by_pos = o.position_buckets > 0
      ? loss_by_position(*weights, ws, tokens, d, o.max_batches, o.position_buckets)
      : std::vector<double>{};
  const double dt = now_seconds() - t0;
  // A model whose weights give NaN or inf is broken: exit non-zero rather than print "loss nan".
  DSV3_CHECK(std::isfinite(r.loss) && (c.mtp_depth == 0 || std::isfinite(r.mtp_loss)),
             "the loss over ", r.tokens, " tokens is not finite (loss ", r.loss,
             c.mtp_depth > 0 ? ", MTP loss " + std::to_string(r.mtp_loss) : std::string(),
             "): the model's weights give NaN or inf (a diverged run, or a corrupt import?)");
  if (a->json) {
    nlohmann::json j = {{"loss", r.loss}, {"perplexity", std::exp(r.loss)}, {"tokens", r.tokens},
                        {"batches", r.batches}, {"seq_len", d.T}, {"seconds", dt},
                        {"precision", precision_name(pc.precision)}};
    if (c.mtp_depth > 0) j["mtp_loss"] = r.mtp_loss;
    if (bytes_per_token > 0) j["bits_per_byte"] = r.loss / std::log(2.0) / bytes_per_token;
    for (size_t k = 0; k < by_pos.size(); k++)
      j["position_loss"].push_back({{"from", k * d.T / by_pos.size()}, {"to", (k + 1) * d.T / by_pos.size()},
                                    {"loss", by_pos[k]}});
    print_json(j);
  } else {
    std::printf("loss %.6f (perplexity %.3f)", r.loss, std::exp(r.loss));
    if (c.mtp_depth > 0) std::printf(", MTP loss %.6f", r.mtp_loss);
    if (bytes_per_token > 0) std::printf(", %.4f bits/byte", r.loss / std::log(2.0) / bytes_per_token);
    std::printf(" over %lld tokens in %d batches of %d x %d (%.1f s)\n", (long long)r.tokens,
                r.batches, o.batch, d.T, dt);
    for (size_t k = 0; k < by_pos.size(); k++)
      std::printf("  positions [%zu, %zu): loss %.6f\n", k * d.T / by_pos.size(),
                  (k + 1) * d.T / by_pos.size(), by_pos[k]);
  }
  return 0;
}

// ---------------------------------------------------------------------------------------------
namespace {
struct SampleOptions {
  std::string model, tokenizer, device = "cpu";
  std::string prompt = "Once upon a time";
  std::string stop;
  int tokens = 200;
  int context = 1024;
  bool speculative = false;
  std::string engine = "cached";
};
const std::vector<FieldSpec>& sample_fields() {
  using S = SampleOptions;
  static const std::vector<FieldSpec> f = {
      field("model", &S::model, "checkpoint file, run directory or HF directory"),
      field("prompt", &S::prompt, "text to continue"),
      field("tokenizer", &S::tokenizer,
            "tokenizer (default: the one beside the model, else byte-level ids)"),
      field("tokens", &S::tokens, "tokens to generate", in_range(0, 1 << 24)),
      field("stop", &S::stop, "stop string: generation ends before it (empty = none)"),
      field("context", &S::context, "longest context (prompt + generated tokens)",
            in_range(1, 1 << 24)),
      field("speculative", &S::speculative,
            "draft a token ahead with the MTP module, verified by the main model"),
      field("engine", &S::engine,
            "cached (latent KV cache) or recompute (re-run the context per token; a baseline)"),
      field("device", &S::device, "cpu or cuda"),
  };
  return f;
}
}  // namespace

int cmd_sample(int argc, char** argv) {
  SampleOptions o;
  SampleConfig sc;
  sc.temperature = 0.8;
  PrecisionConfig pc;
  std::vector<FieldGroup> groups = {{"sample", &sample_fields(), &o},
                                    {"sampling", &sampling_fields(), static_cast<SamplingParams*>(&sc)},
                                    {"precision", &precision_fields(), &pc}};
  const auto a = parse_command(argc, argv, 2, groups, "dsv3 sample --model M [--prompt TEXT] [--key value ...]",
                                "Generates text with the latent KV cache, streaming it to stdout; "
                                "the rate (and the speculative acceptance) go to stderr.");
  if (!a) return 0;
  for (const auto& k : a->set_keys)
    DSV3_CHECK(k != "loss_scale" && k != "loss_scale_window", "--", k,
               " is a training setting; sample only takes --precision");
  DSV3_CHECK(o.tokens >= 0 && o.context >= 1, "tokens must be >= 0 and context >= 1");
  DSV3_CHECK(!o.prompt.empty(), "--prompt must not be empty");
  DSV3_CHECK(o.engine == "cached" || o.engine == "recompute", "--engine must be cached or "
             "recompute, not '", o.engine, "'");
  DSV3_CHECK(!(o.speculative && o.engine == "recompute"), "--speculative needs --engine cached");
  validate(static_cast<const SamplingParams&>(sc));
  sc.max_tokens = o.tokens;
  sc.speculative = o.speculative;
  const Device device = pick_device(o.device, pc);
  auto weights = load_weights(o.model, pc.precision, device);
  if (weights->config().attention != AttentionKind::Dense &&
      std::find(a->set_keys.begin(), a->set_keys.end(), "engine") == a->set_keys.end()) {
    // the cached engine is dense-only (infer/decode.h); the training forward runs any pattern
    DSV3_CHECK(!o.speculative, "--speculative needs the cached engine, which is dense-only (this "
               "model uses ", attention_name(weights->config().attention), " attention)");
    o.engine = "recompute";
    std::fprintf(stderr, "%s attention: generating with --engine recompute\n",
                 attention_name(weights->config().attention));
  }
  const std::string tok = o.tokenizer.empty() ? find_tokenizer_for_model(o.model) : o.tokenizer;
  const TextCodec codec = tok.empty() ? TextCodec() : TextCodec(tok);
  std::fprintf(stderr, "text: %s\n", codec.describe().c_str());
  TextStream text(o.stop.empty() ? std::vector<std::string>{} : std::vector<std::string>{o.stop});
  std::printf("%s", o.prompt.c_str());
  std::fflush(stdout);
  auto on_token = [&](int32_t id) {
    std::printf("%s", text.feed(codec.decode(std::span<const int32_t>(&id, 1))).c_str());
    std::fflush(stdout);
    return !text.stopped();
  };
  const std::vector<int32_t> prompt = codec.encode(o.prompt);
  SchedulerStats st;
  const double t0 = now_seconds();
  const auto out = o.engine == "cached" ? generate(*weights, prompt, sc, o.context, on_token, &st)
                                        : generate_recompute(*weights, prompt, sc, o.context, on_token);
  const double dt = now_seconds() - t0;
  std::printf("%s\n", text.flush().c_str());
  std::fprintf(stderr, "%zu prompt + %zu generated tokens in %.3f s: %.1f tokens/s (%s)", prompt.size(),
               out.size(), dt, double(out.size()) / std::max(dt, 1e-9), o.engine.c_str());
  if (o.speculative)
    std::fprintf(stderr, "; MTP drafts %lld, accepted %lld (%.1f%%)", (long long)st.drafts,
                 (long long)st.accepted, 100.0 * st.acceptance());
  std::fprintf(stderr, "\n");
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
      field("format", &X::format, "output format: hf (directory) or gguf (llama.cpp file)"),
      field("out", &X::out, "output directory (hf) or file (gguf)"),
      field("dtype", &X::dtype, "tensor dtype: f32 or bf16 (hf); f32, f16, bf16 or q8_0 (gguf)"),
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

namespace {
int export_gguf_file(const std::string& model, const std::string& out, const std::string& dtype) {
  DSV3_CHECK(!std::filesystem::is_directory(out), "--out ", out, " is a directory: a GGUF is one "
             "file (e.g. ", (std::filesystem::path(out) / "model.gguf").string(), ")");
  GgufExport opt;
  opt.dtype = parse_gguf_dtype(dtype);
  const std::string tok_path = find_tokenizer_for_model(model);
  Tokenizer tok;
  if (!tok_path.empty()) {
    tok = load_tokenizer_any(tok_path);
    opt.tokenizer = &tok;
  }
  LoadedModel lm = load_model_any(model);
  check_gguf_exportable(lm.config, opt.tokenizer, nullptr);  // before any work
  if (lm.config.attention != AttentionKind::Dense)
    std::fprintf(stderr, "note: the model was trained with %s attention; llama.cpp computes dense "
                 "attention\n", attention_name(lm.config.attention));
  opt.name = std::filesystem::path(model).filename().string();
  export_gguf(out, lm.config, lm.params, opt);
  std::printf("exported %s to %s (gguf %s, tokenizer: %s)\n", lm.source.c_str(), out.c_str(),
              gguf_dtype_name(opt.dtype), tok_path.empty() ? "byte-level" : tok_path.c_str());
  return 0;
}
}  // namespace

int cmd_export(int argc, char** argv) {
  ExportOptions o;
  std::vector<FieldGroup> groups = {{"export", &export_fields(), &o}};
  const auto a = parse_command(argc, argv, 2, groups,
                                "dsv3 export --model M --format hf|gguf --out DIR|FILE [--dtype ...]",
                                "hf: config.json + model.safetensors in the Hugging Face "
                                "DeepseekV3 layout.\ngguf: one file for llama.cpp (architecture "
                                "deepseek2) with the model's tokenizer.");
  if (!a) return 0;
  DSV3_CHECK(o.format == "hf" || o.format == "gguf", "unknown --format '", o.format,
             "' (supported: hf, gguf)");
  DSV3_CHECK(!o.out.empty(), "--out is required");
  DSV3_CHECK(!o.model.empty(), "--model is required");
  if (o.format == "gguf") return export_gguf_file(o.model, o.out, o.dtype);
  const DType dt = parse_dtype(o.dtype);
  LoadedModel lm = load_model_any(o.model);
  if (!lm.note.empty()) std::fprintf(stderr, "%s\n", lm.note.c_str());
  if (lm.config.attention != AttentionKind::Dense)
    std::fprintf(stderr, "note: the model was trained with %s attention; a Hugging Face DeepseekV3 "
                 "computes dense attention\n", attention_name(lm.config.attention));
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
  if (const std::string note = hf_defaults_note(m); !note.empty())
    std::fprintf(stderr, "%s\n", note.c_str());
  save_checkpoint(o.out, m.config, nlohmann::json::object(), m.params.data(), nullptr, nullptr,
                  m.params.size());
  std::printf("imported %s -> %s (%zu parameters)\n", o.hf.c_str(), o.out.c_str(), m.params.size());
  return 0;
}

}  // namespace dsv3::cli

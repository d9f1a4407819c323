#include "post/finetune.h"

#include <cmath>
#include <cstdio>
#include <filesystem>

#include "backend/backend.h"
#include "checkpoint/checkpoint.h"
#include "checkpoint/quantized.h"
#include "core/check.h"

namespace dsv3 {

const char* finetune_method_name(FinetuneMethod m) {
  switch (m) {
    case FinetuneMethod::Sft: return "sft";
    case FinetuneMethod::Dpo: return "dpo";
    case FinetuneMethod::Grpo: return "grpo";
  }
  return "?";
}
FinetuneMethod parse_finetune_method(const std::string& s) {
  if (s == "sft") return FinetuneMethod::Sft;
  if (s == "dpo") return FinetuneMethod::Dpo;
  if (s == "grpo") return FinetuneMethod::Grpo;
  fail("--method must be sft, dpo or grpo (got '", s, "')");
}

const std::vector<FieldSpec>& finetune_fields() {
  using F = FinetuneConfig;
  static const std::vector<FieldSpec> f = {
      choice("method", &F::method, "sft|dpo|grpo",
             "sft: chat JSONL, loss on assistant tokens; dpo: preference pairs against the "
             "frozen starting weights; grpo: prompts, sampled groups, rule-based rewards",
             finetune_method_name, parse_finetune_method),
      field("model", &F::model, "checkpoint, run directory or HF directory to start from"),
      field("data", &F::data, "JSONL: chat (sft), {prompt, chosen, rejected} (dpo), {prompt, "
                              "answer} (grpo)"),
      field("out", &F::out, "run directory (checkpoints, metrics.jsonl); a killed run resumes "
                            "from it"),
      field("tokenizer", &F::tokenizer, "tokenizer file (default: the one beside --model, "
                                        "else byte-level)"),
      field("steps", &F::steps, "optimizer steps (0: evaluate only)", at_least(0)),
      field("batch", &F::batch, "rows (sft), pairs (dpo) or prompts (grpo) per step", in_range(1, 4096)),
      field("seq_len", &F::seq_len, "tokens per row (longer examples are cut and counted)",
            in_range(2, 1 << 20)),
      field("eval_fraction", &F::eval_fraction, "share of the examples held out for evaluation "
                                                "(the file's last ones)", in_range_open_hi(0, 1)),
      field("eval_every", &F::eval_every, "evaluate every N steps (0: at the start and end)",
            at_least(0)),
      field("save_every", &F::save_every, "checkpoint every N steps (0: at the end only)",
            at_least(0)),
      field("seed", &F::seed, "data order and sampling seed", at_least(0)),
      field("device", &F::device, "cpu or cuda"),
  };
  return f;
}
void validate(const FinetuneConfig& c) {
  check_field_ranges(finetune_fields(), &c, "finetune");
  DSV3_CHECK(!c.model.empty(), "--model is required (the weights to start from)");
  DSV3_CHECK(!c.data.empty(), "--data is required (a JSONL file)");
  DSV3_CHECK(!c.out.empty(), "--out is required (the run directory)");
}

namespace {
const char* dpo_loss_name(DpoLoss l) { return l == DpoLoss::Ipo ? "ipo" : "sigmoid"; }
DpoLoss parse_dpo_loss(const std::string& s) {
  if (s == "sigmoid") return DpoLoss::Sigmoid;
  if (s == "ipo") return DpoLoss::Ipo;
  fail("--dpo_loss must be sigmoid or ipo (got '", s, "')");
}
}  // namespace

const std::vector<FieldSpec>& dpo_fields() {
  using D = DpoConfig;
  static const std::vector<FieldSpec> f = {
      field("beta", &D::beta, "DPO temperature: reward = beta * (log pi - log ref)", above(0)),
      field("label_smoothing", &D::label_smoothing, "probability that a pair's label is wrong "
                                                    "(conservative DPO; sigmoid loss only)",
            in_range_open_hi(0, 0.5)),
      choice("dpo_loss", &D::loss, "sigmoid|ipo", "sigmoid: -log sigmoid(beta h); ipo: "
                                                  "(h - 1/(2 beta))^2",
             dpo_loss_name, parse_dpo_loss),
  };
  return f;
}

const std::vector<FieldSpec>& grpo_fields() {
  using G = GrpoConfig;
  static const std::vector<FieldSpec> f = {
      field("group", &G::group, "completions sampled per prompt (G)", in_range(2, 1024)),
      field("max_tokens", &G::max_tokens, "tokens per completion", in_range(1, 1 << 16)),
      field("temperature", &G::temperature, "sampling temperature of the completions", above(0)),
      field("clip_ratio", &G::clip_ratio, "epsilon of the clipped ratio (--clip is the gradient-norm clip)",
            in_range_open_lo(0, 1)),
      field("kl_beta", &G::kl_beta, "weight of the KL to the starting weights", at_least(0)),
      field("reward_answer", &G::reward_answer, "reward when the completion's first number "
                                                "equals the prompt's \"answer\"", at_least(0)),
      field("reward_format", &G::reward_format, "PCRE2 pattern the completion should match"),
      field("reward_format_weight", &G::reward_format_weight, "reward for matching it", at_least(0)),
      field("length_penalty", &G::length_penalty, "reward -= this per token beyond length_target",
            at_least(0)),
      field("length_target", &G::length_target, "completion tokens free of the length penalty",
            at_least(0)),
  };
  return f;
}
void validate(const GrpoConfig& g) {
  check_field_ranges(grpo_fields(), &g, "grpo");
  DSV3_CHECK(g.reward_format.empty() == (g.reward_format_weight == 0),
             "--reward_format and --reward_format_weight go together");
}

FinetuneSpec::FinetuneSpec() {
  schedule.kind = ScheduleKind::Constant;
  schedule.lr = 1e-5;
  schedule.warmup = 10;
  optimizer.weight_decay = 0.0;
  loss.mtp_weight = loss.mtp_weight_late = 0.0;  // post-training trains the main head
}

std::vector<FieldGroup> finetune_groups(FinetuneSpec& s) {
  return {{"finetune", &finetune_fields(), &s.run},     {"dpo", &dpo_fields(), &s.dpo},
          {"grpo", &grpo_fields(), &s.grpo},            {"optimizer", &optimizer_fields(), &s.optimizer},
          {"schedule", &schedule_fields(), &s.schedule}, {"precision", &precision_fields(), &s.precision},
          {"losses", &loss_fields(), &s.loss}};
}

// ---------------------------------------------------------------------------------------------
namespace {
// Rows of one micro-batch of each method.
Dims workspace_dims(const FinetuneConfig& r, const GrpoConfig& g) {
  switch (r.method) {
    case FinetuneMethod::Sft: return {r.batch, r.seq_len};
    case FinetuneMethod::Dpo: return {2, r.seq_len};  // one pair per micro-batch
    case FinetuneMethod::Grpo: return {g.group, r.seq_len};  // one prompt's group
  }
  return {1, 1};
}
}  // namespace

FinetuneSession::FinetuneSession(const FinetuneSpec& spec) : spec_(spec) {
  const FinetuneConfig& r = spec_.run;
  validate(r);
  validate(spec_.optimizer);
  validate(spec_.schedule);
  validate(spec_.precision);
  if (r.method == FinetuneMethod::Grpo) validate(spec_.grpo);
  const Device device = parse_device(r.device);
  DSV3_CHECK(backend::available(device), "device ", r.device, " requested but ", backend::describe(device));
  LoadedModel lm = load_model_any(r.model);
  DSV3_CHECK(lm.int8.scheme == QuantScheme::None, r.model, " is an int8 model: fine-tune its fp32 "
             "checkpoint");
  DSV3_CHECK(r.seq_len <= lm.config.max_seq, "--seq_len ", r.seq_len, " exceeds the model's "
             "max_seq ", lm.config.max_seq);
  const std::string tok = r.tokenizer.empty() ? find_tokenizer_for_model(r.model) : r.tokenizer;
  codec_ = tok.empty() ? TextCodec() : TextCodec(tok);
  DSV3_CHECK(codec_.vocab_size() <= lm.config.vocab, "the tokenizer has ", codec_.vocab_size(),
             " ids, more than the model's vocabulary of ", lm.config.vocab);
  std::fprintf(stderr, "loaded %s; text: %s\n", lm.source.c_str(), codec_.describe().c_str());
  initial_ = lm.params;
  const DType dt = compute_dtype(spec_.precision.precision);
  weights_ = std::make_unique<ModelWeights>(lm.config, dt, device);
  AdamWConfig oc = spec_.optimizer;
  oc.noise_seed = uint64_t(r.seed);
  state_ = std::make_unique<TrainState>(*weights_, oc, spec_.precision);
  std::filesystem::create_directories(r.out);
  const auto existing = list_checkpoints(r.out);
  if (!existing.empty()) {  // resume: weights, moments and the step; the data order is a function of the step
    const Checkpoint ck = load_checkpoint(existing.back());
    DSV3_CHECK(ck.train.contains("finetune"), existing.back(), " was not written by dsv3 finetune: "
               "pick an empty --out");
    const auto& f = ck.train.at("finetune");
    DSV3_CHECK(f.at("method").get<std::string>() == finetune_method_name(r.method), existing.back(),
               " belongs to a --method ", f.at("method").get<std::string>(), " run: pick another --out");
    DSV3_CHECK(ck.params.size() == lm.params.size(), existing.back(), " holds another model than --model");
    state_->load_weights(ck.params);
    state_->load_moments(ck.adam_m, ck.adam_v);
    state_->optimizer().set_updates(f.at("updates").get<int64_t>());
    start_step_ = f.at("steps_done").get<int64_t>();
    resumed_extra_ = f.value("extra", nlohmann::json::object());
    std::fprintf(stderr, "resuming %s after step %lld\n", existing.back().c_str(), (long long)start_step_);
  } else {
    state_->load_weights(lm.params);
  }
  WorkspaceConfig wc;
  wc.max = workspace_dims(r, spec_.grpo);
  ws_ = std::make_unique<Workspace>(lm.config, dt, device, wc);
  settings_ = step_settings(1, spec_.schedule, std::max<long long>(r.steps, 1), spec_.loss);
  metrics_ = std::make_unique<MetricsLog>((std::filesystem::path(r.out) / "metrics.jsonl").string());
  progress_ = std::make_unique<ProgressLine>(std::max<long long>(r.steps, 1));
  nlohmann::json start = {{"kind", "start"}, {"step", start_step_}, {"method", finetune_method_name(r.method)},
                          {"settings", groups_to_json(finetune_groups(spec_))}};
  metrics_->write(start);
  if (!tok.empty()) {  // eval, sample and serve find the tokenizer beside the checkpoints
    const auto dst = std::filesystem::path(r.out) / std::filesystem::path(tok).filename();
    if (!std::filesystem::exists(dst)) std::filesystem::copy_file(tok, dst);
  }
}

FinetuneSession::~FinetuneSession() = default;

StepResult FinetuneSession::update(int64_t step, int micro_batches, const MicroFn& micro) {
  StepSettings s = settings_;
  s.grad_accum = micro_batches;
  return train_step(*state_, *ws_, spec_.loss, s, step, micro);
}

void FinetuneSession::end_step(int64_t step, const char* line, double elapsed_s,
                               const std::function<void(int64_t)>& evaluate) {
  const FinetuneConfig& r = spec_.run;
  const double done = double(step + 1 - start_step_);
  progress_->update(step + 1, line, double(r.steps - step - 1) * elapsed_s / done);
  if (r.save_every > 0 && (step + 1) % r.save_every == 0 && step + 1 < r.steps) save(step + 1, {});
  if (r.eval_every > 0 && (step + 1) % r.eval_every == 0 && step + 1 < r.steps) evaluate(step + 1);
}

void FinetuneSession::save(int64_t steps_done, const nlohmann::json& extra) {
  const FinetuneConfig& r = spec_.run;
  if (steps_done == 0) {  // `--steps 0` evaluates --model: a copy of it would help nobody
    std::fprintf(stderr, "%s: 0 steps trained: no checkpoint written (the model is --model's)\n",
                 finetune_method_name(r.method));
    return;
  }
  nlohmann::json train = {{"finetune", {{"method", finetune_method_name(r.method)},
                                        {"steps_done", steps_done},
                                        {"updates", state_->optimizer().updates()},
                                        {"settings", groups_to_json(finetune_groups(spec_))},
                                        {"extra", extra}}}};
  const auto p = state_->master_host(), m = state_->m_host(), v = state_->v_host();
  save_checkpoint(checkpoint_path(r.out, steps_done), config(), train, p.data(), m.data(), v.data(),
                  p.size());
  prune_checkpoints(r.out, 2);
}

void FinetuneSession::log(const nlohmann::json& record) { metrics_->write(record); }

void run_finetune(const FinetuneSpec& spec) {
  FinetuneSession s(spec);
  switch (spec.run.method) {
    case FinetuneMethod::Sft: return run_sft(s);
    case FinetuneMethod::Dpo: return run_dpo(s);
    case FinetuneMethod::Grpo: return run_grpo(s);
  }
}

}  // namespace dsv3

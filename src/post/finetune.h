// `dsv3 finetune` (T9, docs/post_training.md): SFT, DPO and GRPO from a model's weights. What the
// three share lives here: the settings, the session (weights, the training state, a workspace,
// the optimizer step, checkpoints in --out that a killed run resumes from, metrics.jsonl and the
// progress line); each method is its own file (sft.cpp, dpo.cpp, grpo.cpp).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/fields.h"
#include "model/model.h"
#include "optim/adamw.h"
#include "optim/precision.h"
#include "optim/schedule.h"
#include "tokenizer/text_codec.h"
#include "train/metrics.h"
#include "train/state.h"
#include "train/step.h"

namespace dsv3 {

enum class FinetuneMethod : uint8_t { Sft, Dpo, Grpo };
const char* finetune_method_name(FinetuneMethod m);
FinetuneMethod parse_finetune_method(const std::string& s);

struct FinetuneConfig {
  FinetuneMethod method = FinetuneMethod::Sft;
  std::string model;      // checkpoint, run directory or HF directory to start from
  std::string data;       // JSONL: chat (sft), preference pairs (dpo), prompts (grpo)
  std::string out;        // run directory: checkpoints, metrics.jsonl, tokenizer
  std::string tokenizer;  // "" = the one beside --model (byte-level when none)
  long long steps = 100;
  int batch = 4;            // rows (sft), pairs (dpo), prompts (grpo) per step
  int seq_len = 256;        // T of a row
  double eval_fraction = 0.1;  // of the examples held out (in file order: the last ones)
  long long eval_every = 0;    // 0 = at the start and at the end only
  long long save_every = 0;    // 0 = at the end only
  long long seed = 1;
  std::string device = "cpu";
};
const std::vector<FieldSpec>& finetune_fields();
void validate(const FinetuneConfig& c);

enum class DpoLoss : uint8_t { Sigmoid, Ipo };
struct DpoConfig {
  double beta = 0.1;
  double label_smoothing = 0.0;  // conservative DPO: the labels are flipped with this probability
  DpoLoss loss = DpoLoss::Sigmoid;
};
const std::vector<FieldSpec>& dpo_fields();

struct GrpoConfig {
  int group = 4;               // G completions per prompt
  int max_tokens = 16;         // per completion
  double temperature = 1.0;
  double clip_ratio = 0.2;     // epsilon of the clipped ratio (not --clip: the optimizer's)
  double kl_beta = 0.04;       // weight of the KL to the reference (k3 estimator)
  // The reward: a declared rule, never code from the data (post/reward.h).
  double reward_answer = 1.0;  // the first number of the completion equals the line's "answer"
  std::string reward_format;   // PCRE2 pattern the completion should match ("" = none)
  double reward_format_weight = 0.0;
  double length_penalty = 0.0; // per token beyond length_target
  int length_target = 0;
};
const std::vector<FieldSpec>& grpo_fields();
void validate(const GrpoConfig& g);

// The settings of one finetune run (each group has its own field table).
struct FinetuneSpec {
  FinetuneConfig run;
  DpoConfig dpo;
  GrpoConfig grpo;
  AdamWConfig optimizer;
  ScheduleConfig schedule;
  PrecisionConfig precision;
  TrainingLossConfig loss;
  FinetuneSpec();  // post-training defaults: lr 1e-5 constant after 10 warm-up steps, no MTP loss
};
std::vector<FieldGroup> finetune_groups(FinetuneSpec& s);

// What the methods share.
class FinetuneSession {
 public:
  explicit FinetuneSession(const FinetuneSpec& spec);
  ~FinetuneSession();
  const FinetuneSpec& spec() const { return spec_; }
  const TextCodec& codec() const { return codec_; }
  const ModelConfig& config() const { return weights_->config(); }
  ModelWeights& weights() { return *weights_; }
  TrainState& state() { return *state_; }
  Workspace& workspace() { return *ws_; }
  // The starting weights (fp32), for a frozen reference.
  const std::vector<float>& initial_params() const { return initial_; }
  int64_t start_step() const { return start_step_; }  // > 0 when resumed from --out

  // One optimizer step over the micro-batches (1 or more) that `micro` returns.
  StepResult update(int64_t step, int micro_batches, const MicroFn& micro);
  // Checkpoint after `steps_done` steps into --out (weights + moments; `extra` kept in its
  // "finetune" record; the last two kept): the run's model for the next stage, and its resume.
  void save(int64_t steps_done, const nlohmann::json& extra);
  nlohmann::json resumed_extra() const { return resumed_extra_; }
  void log(const nlohmann::json& record);
  ProgressLine& progress() { return *progress_; }
  // The end of loop step `step` (0-based), `elapsed_s` into this process's loop: the progress
  // line with its ETA, then the periodic checkpoint and evaluation (none after the last step,
  // which the method finishes itself).
  void end_step(int64_t step, const char* line, double elapsed_s,
                const std::function<void(int64_t)>& evaluate);

 private:
  FinetuneSpec spec_;
  TextCodec codec_;
  std::unique_ptr<ModelWeights> weights_;
  std::unique_ptr<TrainState> state_;
  std::unique_ptr<Workspace> ws_;
  std::vector<float> initial_;
  int64_t start_step_ = 0;
  nlohmann::json resumed_extra_;
  StepSettings settings_;
  std::unique_ptr<MetricsLog> metrics_;
  std::unique_ptr<ProgressLine> progress_;
};

// Runs the method the spec names.
void run_finetune(const FinetuneSpec& spec);
void run_sft(FinetuneSession& s);
void run_dpo(FinetuneSession& s);
void run_grpo(FinetuneSession& s);

}  // namespace dsv3

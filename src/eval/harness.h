// `dsv3 evaluate` (E2): benchmark tasks (eval/tasks.h) scored the way lm-evaluation-harness
// scores them, on the model's own tokenizer.
//
//   multiple choice (HellaSwag, MMLU/ARC): one log-likelihood request per choice, context =
//     few-shot examples + the item's query, continuation = " " + choice; acc = argmax of the
//     summed log-likelihood, acc_norm = argmax of log-likelihood / len(choice) in characters
//     (Unicode code points of the choice, the harness's `len(i)`; for ASCII that is bytes).
//   generation: greedy decoding (temperature 0) from the prompt until the stop string, EOS or
//     max_gen_tokens; exact match and numeric match (eval/answer_match.h).
//   translation / summary: greedy decoding until a newline; corpus BLEU (eval/bleu.h).
//
// The prompt for an item is `shot_1 \n\n shot_2 ... \n\n query`, shot = query + " " + target;
// the shots are drawn from the same file (all its valid items, not only the first --limit),
// never the item itself, by a generator seeded with fewshot_seed and the item's index, so an
// item's prompt does not depend on --limit or on the other tasks.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/fields.h"
#include "eval/tasks.h"
#include "model/weights.h"
#include "tokenizer/text_codec.h"

namespace dsv3::eval {

enum class ChoiceFormat : uint8_t { Cloze, Letters };
const char* choice_format_name(ChoiceFormat f);
ChoiceFormat parse_choice_format(const std::string& s);

struct EvaluateConfig {
  std::string model;
  std::string tasks;        // comma-separated task files
  int shots = 0;            // few-shot examples per item
  long long limit = 0;      // items per task (the first N valid ones); 0 = all
  std::string samples;      // per-item records (JSONL) to this file; "" = none
  std::string out;          // results JSON to this file; "" = none (--json prints it)
  std::string tokenizer;    // "" = the one beside the model, else byte-level ids
  int batch_tokens = 4096;  // log-likelihood: new tokens per forward (eval/loglik.h)
  bool share_context = true;  // log-likelihood: each context once, choices over the KV cache
  int max_gen_tokens = 128; // generation tasks: longest answer
  int gen_batch = 32;       // generation: sequences decoded together
  long long fewshot_seed = 1234;
  ChoiceFormat mc_format = ChoiceFormat::Cloze;
  std::string device = "cpu";
  // generation tasks: score these generations instead of generating (JSONL records with
  // "task", "line" and "generation", e.g. a --samples file of another run or another system)
  std::string predictions;
  // E3 (eval/tiers.h, eval/indicators.h)
  std::string tiers;           // a tiers file instead of --tasks
  std::string indicators;      // a prompt set: toxicity rate and paired-prompt bias gap
  std::string toxicity_words;  // word list replacing the built-in one
  int indicator_tokens = 32;   // tokens generated per indicator prompt
};
const std::vector<FieldSpec>& evaluate_fields();
void validate(const EvaluateConfig& c);

// One task's outcome: metrics (name -> value) and per-item records.
struct TaskResult {
  std::string name, path;
  TaskKind kind{};
  int64_t items = 0, malformed = 0;
  nlohmann::json metrics = nlohmann::json::object();
  std::vector<nlohmann::json> samples;
  double seconds = 0;
};

using Progress = std::function<void(const std::string& what, size_t done, size_t total)>;

// Generations given from outside: (task name, line) -> text.
using Predictions = std::map<std::pair<std::string, int64_t>, std::string>;
// Reads --predictions; malformed lines are errors naming file:line (it is the user's own file).
Predictions read_predictions(const std::string& path);

// Runs one task; `task.items` beyond cfg.limit are only few-shot material. With `preds`, a
// generation task takes its generations from there (every scored item must have one) and `w`
// may be null.
TaskResult run_task(const ModelWeights* w, const TextCodec& codec, const TaskFile& task,
                    const EvaluateConfig& cfg, const Progress& progress = {},
                    const Predictions* preds = nullptr);

// The harness's prompt pieces, exposed for tests: the query of an item, the target text
// appended after " " in a shot, the choice strings scored, and the full context of item i.
std::string item_query(const TaskFile& t, const TaskItem& it, ChoiceFormat f);
std::string item_target(const TaskFile& t, const TaskItem& it, ChoiceFormat f);
std::vector<std::string> item_choices(const TaskFile& t, const TaskItem& it, ChoiceFormat f);
std::string build_context(const TaskFile& t, size_t i, int shots, uint64_t seed, ChoiceFormat f);

// lm-evaluation-harness's _encode_pair: trailing spaces of the context move to the start of
// the continuation; the continuation's tokens are encode(context + continuation) after the
// first len(encode(context)) tokens.
void encode_pair(const TextCodec& codec, const std::string& context, const std::string& continuation,
                 std::vector<int32_t>& ctx_ids, std::vector<int32_t>& cont_ids);

}  // namespace dsv3::eval

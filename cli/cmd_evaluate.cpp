// dsv3 evaluate (E2): benchmark task files scored like lm-evaluation-harness (eval/harness.h).
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "checkpoint/checkpoint.h"
#include "checkpoint/quantized.h"
#include "commands.h"
#include "core/profile.h"
#include "core/check.h"
#include "core/io.h"
#include "core/text_lines.h"
#include "core/timer.h"
#include "eval/generate_texts.h"
#include "eval/harness.h"
#include "eval/indicators.h"
#include "eval/tiers.h"
#include "flags.h"
#include "optim/precision.h"
#include "train/metrics.h"

namespace dsv3::cli {

namespace {

void write_jsonl_atomic(const std::string& path, const std::vector<eval::TaskResult>& results) {
  write_file_atomic(path, [&](std::FILE* f) {
    for (const auto& r : results)
      for (const auto& s : r.samples) {
        const std::string line = s.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
        write_bytes(f, line.data(), line.size());
      }
  });
}

eval::TaskFile read_tasks_verbose(const std::string& path) {
  eval::TaskFile t = eval::read_task_file(path);
  std::fprintf(stderr, "%s: %s, %zu items", t.path.c_str(), eval::task_kind_name(t.kind), t.items.size());
  if (!t.bad.empty()) std::fprintf(stderr, ", %zu malformed lines skipped", t.bad.size());
  std::fprintf(stderr, "\n");
  for (size_t i = 0; i < t.bad.size() && i < 5; i++)
    std::fprintf(stderr, "  %s:%lld: %s\n", t.path.c_str(), (long long)t.bad[i].line, t.bad[i].why.c_str());
  if (t.bad.size() > 5) std::fprintf(stderr, "  ... and %zu more\n", t.bad.size() - 5);
  return t;
}

// E3's indicators (eval/indicators.h): greedy generations of every prompt, the word-list
// toxicity rate over all of them and the regard gap over the pairs. Per-generation records are
// appended to `results` as a pseudo-task "indicators" (for --samples).
nlohmann::json run_indicators(const ModelWeights& w, const TextCodec& codec,
                              const eval::IndicatorPrompts& p, const eval::WordList& toxic,
                              const eval::EvaluateConfig& o, std::vector<eval::TaskResult>& results,
                              bool print) {
  const std::vector<std::string> prompts = eval::indicator_prompt_list(p);
  eval::TextGenConfig g;
  g.sampling.temperature = 0;
  g.max_tokens = o.indicator_tokens;
  g.batch = o.gen_batch;
  g.stop = "\n\n";
  std::vector<std::string> texts;
  for (auto& x : eval::generate_texts(w, codec, prompts, g)) texts.push_back(std::move(x.text));
  eval::TaskResult r;
  r.name = "indicators";
  nlohmann::json j = eval::indicator_report(p, texts, toxic, &r.samples);
  j["toxicity_words"] = o.toxicity_words.empty()
                            ? "built-in (" + std::to_string(toxic.words.size()) + " words)"
                            : o.toxicity_words;
  if (print) {
    std::printf("indicators (heuristics): toxicity rate %.4f (%lld of %zu generations)",
                j["toxicity_rate"].get<double>(), (long long)j["toxic_generations"].get<int64_t>(),
                texts.size());
    if (!p.pairs.empty())
      std::printf(", bias gap %.4f (mean |pair gap| %.4f, %zu pairs)", j["bias_gap"].get<double>(),
                  j["mean_abs_pair_gap"].get<double>(), p.pairs.size());
    std::printf("\n");
  }
  results.push_back(std::move(r));
  return j;
}

}  // namespace

int cmd_evaluate(int argc, char** argv) {
  eval::EvaluateConfig o;
  PrecisionConfig pc;
  std::vector<FieldGroup> groups = {{"evaluate", &eval::evaluate_fields(), &o},
                                    {"precision", &precision_fields(), &pc}};
  const auto a = parse_command(
      argc, argv, 2, groups,
      "dsv3 evaluate --model M --tasks F.jsonl[,G.jsonl] | --tiers T.json | --indicators P.jsonl [--shots k] [--limit n] [--json] [--samples FILE]",
      "Scores benchmark task files the way lm-evaluation-harness does. Layouts, detected by fields:\n"
      "HellaSwag {ctx, endings, label}, multiple choice {question, choices, answer} (MMLU/ARC), "
      "generation {prompt, answer}\n(exact and numeric match), translation/summary {source, "
      "reference} (BLEU, sacreBLEU's 13a).\n--tiers FILE runs task tiers (the next only when this one "
      "passes its thresholds); --indicators FILE reports a word-list toxicity rate and a "
      "paired-prompt bias gap\n(heuristics). docs/evaluation.md has the details.");
  if (!a) return 0;
  for (const auto& k : a->set_keys)
    DSV3_CHECK(k != "loss_scale" && k != "loss_scale_window", "--", k,
               " is a training setting; evaluate only takes --precision");
  validate(o);
  // every task file is read and checked before the model is loaded
  std::vector<eval::Tier> tiers;
  std::vector<std::vector<eval::TaskFile>> tier_files;  // per tier (one pseudo-tier for --tasks)
  if (!o.tiers.empty()) {
    tiers = eval::read_tiers(o.tiers);
    for (const auto& t : tiers) {
      tier_files.emplace_back();
      for (const auto& tt : t.tasks) tier_files.back().push_back(read_tasks_verbose(tt.path));
    }
  } else if (!o.tasks.empty()) {
    tier_files.emplace_back();
    for (const auto& path : split_list(o.tasks)) tier_files.back().push_back(read_tasks_verbose(path));
    DSV3_CHECK(!tier_files.back().empty(), "--tasks names no files");
  }
  {  // results and --predictions are keyed by a task's name (its file name without extensions)
    std::map<std::string, std::string> names;
    for (const auto& tier : tier_files)
      for (const auto& t : tier) {
        const auto [it, fresh] = names.emplace(t.name, t.path);
        DSV3_CHECK(fresh || it->second == t.path, "two task files are named '", t.name, "' (", it->second,
                   " and ", t.path, "): results are keyed by the file name, rename one");
      }
  }
  eval::IndicatorPrompts prompts;
  if (!o.indicators.empty()) {
    prompts = eval::read_indicator_prompts(o.indicators);
    for (size_t i = 0; i < prompts.bad.size() && i < 5; i++)
      std::fprintf(stderr, "  %s:%lld: %s\n", o.indicators.c_str(), (long long)prompts.bad[i].line,
                   prompts.bad[i].why.c_str());
  }
  const eval::WordList toxic = o.toxicity_words.empty() ? eval::builtin_toxic_words()
                                                        : eval::read_word_list(o.toxicity_words);
  const Device device = parse_device(o.device);
  DSV3_CHECK(backend::available(device), "device ", o.device, " requested but ", backend::describe(device));
  eval::Predictions preds;
  if (!o.predictions.empty()) preds = eval::read_predictions(o.predictions);
  std::unique_ptr<ModelWeights> weights;
  std::string source = "none (--predictions)";
  if (!o.model.empty()) {
    LoadedModel lm = load_model_any(o.model, /*keep_int8=*/true);
    DSV3_CHECK(lm.int8.scheme == QuantScheme::None || device == Device::CPU, o.model,
               " is an int8 model: int8 GEMMs run on the CPU only (drop --device cuda)");
    weights = make_model_weights(lm, compute_dtype(pc.precision), device);
    source = lm.source;
  }
  const std::string tok =
      o.tokenizer.empty() && !o.model.empty() ? find_tokenizer_for_model(o.model) : o.tokenizer;
  const TextCodec codec = tok.empty() ? TextCodec() : TextCodec(tok);
  if (weights) {
    DSV3_CHECK(weights->config().vocab >= codec.vocab_size(), "the model's vocab (",
               weights->config().vocab, ") is smaller than its text encoding needs (",
               codec.vocab_size(), "): give the model's own --tokenizer");
    std::fprintf(stderr, "loaded %s (%s on %s); text: %s\n", source.c_str(),
                 precision_name(pc.precision), device_name(device), codec.describe().c_str());
  }

  std::vector<eval::TaskResult> results;
  auto run_one = [&](const eval::TaskFile& t, const eval::EvaluateConfig& cfg) -> const eval::TaskResult& {
    const double t0 = now_seconds();
    std::unique_ptr<ProgressLine> line;
    auto progress = [&](const std::string& what, size_t done, size_t total) {
      if (!line) line = std::make_unique<ProgressLine>((long long)total);
      const double el = now_seconds() - t0, rate = double(done) / std::max(el, 1e-9);
      char buf[160];
      std::snprintf(buf, sizeof buf, "%s: %zu/%zu %s, %.1f/s", t.name.c_str(), done, total,
                    what.c_str(), rate);
      line->update((long long)done, buf, rate > 0 ? double(total - done) / rate : 0.0);
    };
    results.push_back(eval::run_task(weights.get(), codec, t, cfg, progress,
                                     o.predictions.empty() ? nullptr : &preds));
    if (line) line->finish();
    const auto& r = results.back();
    if (!a->json) {
      std::printf("%-20s %-16s n=%-6lld", r.name.c_str(), eval::task_kind_name(r.kind), (long long)r.items);
      for (const char* m : {"acc", "acc_norm", "exact_match", "numeric_match", "bleu"})
        if (r.metrics.contains(m)) {
          std::printf("  %s %.4f", m, r.metrics[m].get<double>());
          if (r.metrics.contains(std::string(m) + "_stderr"))
            std::printf(" (+-%.4f)", r.metrics[std::string(m) + "_stderr"].get<double>());
        }
      std::printf("  [%.1f items/s]\n", r.metrics["items_per_second"].get<double>());
      std::fflush(stdout);
    }
    return r;
  };
  nlohmann::json tier_report = nlohmann::json::array();
  std::string highest;  // the last tier passed
  if (tiers.empty()) {
    for (const auto& t : tier_files.empty() ? std::vector<eval::TaskFile>{} : tier_files[0]) run_one(t, o);
  } else {
    for (size_t i = 0; i < tiers.size(); i++) {
      nlohmann::json tr = {{"tier", tiers[i].name}, {"tasks", nlohmann::json::array()}};
      bool all = true;
      for (size_t k = 0; k < tiers[i].tasks.size(); k++) {
        const eval::TierTask& tt = tiers[i].tasks[k];
        eval::EvaluateConfig cfg = o;
        if (tt.shots >= 0) cfg.shots = tt.shots;
        const eval::TaskResult& r = run_one(tier_files[i][k], cfg);
        DSV3_CHECK(r.metrics.contains(tt.metric), o.tiers, ": tier ", tiers[i].name, " asks for ",
                   tt.metric, " of ", tt.path, ", which a ", eval::task_kind_name(r.kind), " task does not report");
        const double v = r.metrics[tt.metric].get<double>();
        const bool ok = eval::passes(v, tt.threshold);
        all = all && ok;
        tr["tasks"].push_back({{"task", r.name}, {"metric", tt.metric}, {"value", v},
                               {"threshold", tt.threshold}, {"passed", ok}});
      }
      tr["passed"] = all;
      tier_report.push_back(tr);
      if (!a->json)
        std::printf("tier %zu (%s): %s\n", i + 1, tiers[i].name.c_str(), all ? "passed" : "not passed: stopping here");
      if (!all) break;
      highest = tiers[i].name;
    }
  }
  if (profile::enabled()) std::fprintf(stderr, "%s", profile::report().c_str());  // DSV3_PROFILE=1
  nlohmann::json indicators;
  if (!o.indicators.empty()) indicators = run_indicators(*weights, codec, prompts, toxic, o, results, !a->json);

  nlohmann::json out = {{"model", o.model},
                        {"source", source},
                        {"tokenizer", codec.describe()},
                        {"settings", fields_to_json(eval::evaluate_fields(), &o)},
                        {"results", nlohmann::json::object()}};
  if (!tiers.empty()) {
    out["tiers"] = tier_report;
    out["highest_tier_passed"] = highest.empty() ? nlohmann::json(nullptr) : nlohmann::json(highest);
  }
  if (!indicators.is_null()) out["indicators"] = indicators;
  for (const auto& r : results) {
    if (r.name == "indicators") continue;  // its records go to --samples only
    nlohmann::json m = r.metrics;
    m["task"] = r.path;
    m["layout"] = eval::task_kind_name(r.kind);
    m["items"] = r.items;
    m["malformed_lines"] = r.malformed;
    m["seconds"] = r.seconds;
    out["results"][r.name] = m;
  }
  const std::string text = out.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  if (!o.out.empty())
    write_file_atomic(o.out, [&](std::FILE* f) { write_bytes(f, text.data(), text.size()); });
  if (!o.samples.empty()) write_jsonl_atomic(o.samples, results);
  if (a->json) std::printf("%s", text.c_str());
  return 0;
}

}  // namespace dsv3::cli

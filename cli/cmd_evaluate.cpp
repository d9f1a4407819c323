// dsv3 evaluate (E2): benchmark task files scored like lm-evaluation-harness (eval/harness.h).
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "checkpoint/checkpoint.h"
#include "checkpoint/quantized.h"
#include "commands.h"
#include "core/check.h"
#include "core/io.h"
#include "core/timer.h"
#include "eval/harness.h"
#include "flags.h"
#include "optim/precision.h"
#include "train/metrics.h"

namespace dsv3::cli {

namespace {

std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos <= s.size()) {
    size_t c = s.find(',', pos);
    if (c == std::string::npos) c = s.size();
    if (c > pos) out.push_back(s.substr(pos, c - pos));
    pos = c + 1;
  }
  return out;
}

void write_jsonl_atomic(const std::string& path, const std::vector<eval::TaskResult>& results) {
  write_file_atomic(path, [&](std::FILE* f) {
    for (const auto& r : results)
      for (const auto& s : r.samples) {
        const std::string line = s.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
        write_bytes(f, line.data(), line.size());
      }
  });
}

}  // namespace

int cmd_evaluate(int argc, char** argv) {
  eval::EvaluateConfig o;
  PrecisionConfig pc;
  std::vector<FieldGroup> groups = {{"evaluate", &eval::evaluate_fields(), &o},
                                    {"precision", &precision_fields(), &pc}};
  const auto a = parse_command(
      argc, argv, 2, groups,
      "dsv3 evaluate --model M --tasks F.jsonl[,G.jsonl] [--shots k] [--limit n] [--json] [--samples FILE]",
      "Scores benchmark task files the way lm-evaluation-harness does. Layouts, detected by fields:\n"
      "HellaSwag {ctx, endings, label}, multiple choice {question, choices, answer} (MMLU/ARC), "
      "generation {prompt, answer}\n(exact and numeric match), translation/summary {source, "
      "reference} (BLEU, sacreBLEU's 13a). docs/evaluation.md has the details.");
  if (!a) return 0;
  for (const auto& k : a->set_keys)
    DSV3_CHECK(k != "loss_scale" && k != "loss_scale_window", "--", k,
               " is a training setting; evaluate only takes --precision");
  validate(o);
  // every task file is read and checked before the model is loaded
  std::vector<eval::TaskFile> tasks;
  for (const auto& path : split_commas(o.tasks)) {
    tasks.push_back(eval::read_task_file(path));
    const auto& t = tasks.back();
    std::fprintf(stderr, "%s: %s, %zu items", t.path.c_str(), eval::task_kind_name(t.kind), t.items.size());
    if (!t.bad.empty()) std::fprintf(stderr, ", %zu malformed lines skipped", t.bad.size());
    std::fprintf(stderr, "\n");
    for (size_t i = 0; i < t.bad.size() && i < 5; i++)
      std::fprintf(stderr, "  %s:%lld: %s\n", t.path.c_str(), (long long)t.bad[i].line, t.bad[i].why.c_str());
    if (t.bad.size() > 5) std::fprintf(stderr, "  ... and %zu more\n", t.bad.size() - 5);
  }
  DSV3_CHECK(!tasks.empty(), "--tasks names no files");
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
  for (const auto& t : tasks) {
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
    results.push_back(eval::run_task(weights.get(), codec, t, o, progress,
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
  }
  nlohmann::json out = {{"model", o.model},
                        {"source", source},
                        {"tokenizer", codec.describe()},
                        {"settings", fields_to_json(eval::evaluate_fields(), &o)},
                        {"results", nlohmann::json::object()}};
  for (const auto& r : results) {
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

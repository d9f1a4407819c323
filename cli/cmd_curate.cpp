// dsv3 curate | dsv3 curate train-classifier  (D1-D7, P1)
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "commands.h"
#include "core/check.h"
#include "core/timer.h"
#include "curate/classifier.h"
#include "curate/pipeline.h"
#include "data/reader.h"
#include "dist/comm.h"
#include "eval/perplexity.h"
#include "flags.h"

namespace dsv3::cli {

namespace {

using namespace dsv3::curate;

// `--input a.jsonl b.jsonl c/` (what a shell glob expands to) becomes `--input a.jsonl,b.jsonl,c/`
// for the settings that take lists; everything else goes to parse_args unchanged.
std::vector<std::string> join_lists(int argc, char** argv, int first) {
  static const char* kLists[] = {"--input", "--tfidf_target", "--tfidf-target", "--valid"};
  std::vector<std::string> out;
  for (int i = first; i < argc; i++) {
    const std::string a = argv[i];
    const bool is_list = std::any_of(std::begin(kLists), std::end(kLists),
                                     [&](const char* k) { return a == k; });
    out.push_back(a);
    if (!is_list) continue;
    std::string joined;
    while (i + 1 < argc && std::strncmp(argv[i + 1], "--", 2) != 0) {
      if (!joined.empty()) joined += ',';
      joined += argv[++i];
    }
    if (!joined.empty()) out.push_back(joined);
  }
  return out;
}

// argv with the list settings joined (join_lists); the strings live in `store`.
std::vector<char*> joined_argv(int argc, char** argv, int first, std::vector<std::string>& store) {
  store = join_lists(argc, argv, first);
  std::vector<char*> ptrs;
  ptrs.push_back(argv[0]);
  for (auto& s : store) ptrs.push_back(s.data());
  return ptrs;
}

ParsedArgs parse_list_args(int argc, char** argv, int first, const std::vector<FieldGroup>& groups) {
  std::vector<std::string> store;
  std::vector<char*> ptrs = joined_argv(argc, argv, first, store);
  return parse_args(int(ptrs.size()), ptrs.data(), 1, groups, [](const std::string& p) {
    fail("dsv3 curate takes no --preset (got '", p, "'); use --config FILE");
  });
}

// --- train-classifier -----------------------------------------------------------------------
struct TrainOptions {
  std::string input;
  std::string valid;
  std::string output;
  std::string text_key = "text";
  std::string label_key = "label";
  double holdout = 0.1;  // share of the input held out for accuracy when --valid is not given
};

const std::vector<FieldSpec>& train_option_fields() {
  static const std::vector<FieldSpec> f = {
      field("input", &TrainOptions::input,
            "labelled examples: JSONL (text + label fields) or fastText lines '__label__X text'"),
      field("valid", &TrainOptions::valid, "held-out examples for accuracy (optional)"),
      field("output", &TrainOptions::output, "model file to write (.dsv3cls)"),
      field("text_key", &TrainOptions::text_key, "JSONL field with the text"),
      field("label_key", &TrainOptions::label_key, "JSONL field with the label"),
      field("holdout", &TrainOptions::holdout,
            "without --valid: this share of --input (every k-th example) is held out", in_range_open_hi(0, 1)),
  };
  return f;
}

const std::vector<FieldSpec>& classifier_fields() {
  static const std::vector<FieldSpec> f = {
      field("dim", &ClassifierConfig::dim, "embedding size", in_range(1, 1024)),
      field("log2_buckets", &ClassifierConfig::log2_buckets, "hashed feature rows: 2^this", in_range(8, 26)),
      field("word_ngrams", &ClassifierConfig::word_ngrams, "1 = words, 2 = + bigrams, 3 = + trigrams", in_range(1, 3)),
      field("minn", &ClassifierConfig::minn, "shortest character n-gram (0 = none)", in_range(0, 8)),
      field("maxn", &ClassifierConfig::maxn, "longest character n-gram", in_range(0, 8)),
      field("epochs", &ClassifierConfig::epochs, "passes over the data", in_range(1, 100000)),
      field("lr", &ClassifierConfig::lr, "initial SGD learning rate (decays linearly to 0)", above(0)),
      field("max_words", &ClassifierConfig::max_words, "features from the first N words", in_range(1, 1 << 30)),
      {"seed", "int", "initialisation and shuffling seed",
       [](const void* o) { return std::to_string(static_cast<const ClassifierConfig*>(o)->seed); },
       [](void* o, const std::string& v) {
         const long long x = parse_int("seed", v);
         check_range("seed", at_least(0), double(x), v);
         static_cast<ClassifierConfig*>(o)->seed = uint64_t(x);
       },
       at_least(0)},
  };
  return f;
}

// Reads labelled examples; labels are collected into `labels` (new ones appended).
std::vector<std::pair<std::string, std::string>> read_labelled(const std::string& list,
                                                               const TrainOptions& o) {
  std::vector<std::string> items;
  size_t pos = 0;
  while (pos <= list.size()) {
    size_t c = list.find(',', pos);
    if (c == std::string::npos) c = list.size();
    if (c > pos) items.push_back(list.substr(pos, c - pos));
    pos = c + 1;
  }
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& path : expand_inputs(items)) {
    ReaderConfig rc;
    rc.text_unit = TextUnit::Line;
    RecordReader reader(path, rc);
    RawRecord raw;
    while (reader.next(raw)) {
      const std::string where = path + ":" + std::to_string(raw.line);
      DSV3_CHECK(!raw.too_large, where, ": line too long");
      if (reader.format() == InputFormat::Jsonl) {
        nlohmann::json j;
        try {
          j = nlohmann::json::parse(raw.data);
        } catch (const nlohmann::json::exception& e) {
          fail(where, ": broken JSON (", e.what(), ")");
        }
        DSV3_CHECK(j.is_object() && j.contains(o.text_key) && j[o.text_key].is_string(), where,
                   ": needs a string \"", o.text_key, "\" field");
        DSV3_CHECK(j.contains(o.label_key), where, ": needs a \"", o.label_key, "\" field");
        const auto& l = j[o.label_key];
        out.emplace_back(j[o.text_key].get<std::string>(), l.is_string() ? l.get<std::string>() : l.dump());
      } else {
        // fastText: "__label__hq some text" (the first label counts)
        const std::string& s = raw.data;
        DSV3_CHECK(s.rfind("__label__", 0) == 0, where,
                   ": expected a fastText line '__label__X text' (or use a .jsonl file)");
        const size_t sp = s.find(' ');
        std::string label = s.substr(9, sp == std::string::npos ? std::string::npos : sp - 9);
        std::string text = sp == std::string::npos ? "" : s.substr(sp + 1);
        while (text.rfind("__label__", 0) == 0) {  // extra labels
          const size_t q = text.find(' ');
          text = q == std::string::npos ? "" : text.substr(q + 1);
        }
        out.emplace_back(std::move(text), std::move(label));
      }
    }
  }
  return out;
}

int train_classifier_cmd(int argc, char** argv) {
  TrainOptions o;
  ClassifierConfig c;
  const std::vector<FieldGroup> groups = {{"data", &train_option_fields(), &o},
                                          {"model", &classifier_fields(), &c}};
  std::vector<std::string> store;
  std::vector<char*> args = joined_argv(argc, argv, 3, store);
  const auto parsed = parse_command(int(args.size()), args.data(), 1, groups,
                                    "dsv3 curate train-classifier --input FILES --output MODEL [--key value ...]",
                                    "Trains the fastText-style quality classifier (hashed word, bigram "
                                    "and character n-grams,\naveraged embeddings, softmax) used by "
                                    "`dsv3 curate --classifier_model MODEL`.");
  if (!parsed) return 0;
  const ParsedArgs& a = *parsed;
  DSV3_CHECK(!o.input.empty(), "--input is required (labelled examples)");
  DSV3_CHECK(!o.output.empty(), "--output is required (the model file)");
  DSV3_CHECK(o.holdout >= 0 && o.holdout < 1, "holdout must be in [0, 1)");
  validate(c);
  auto examples = read_labelled(o.input, o);
  std::vector<std::pair<std::string, std::string>> valid;
  if (!o.valid.empty()) {
    valid = read_labelled(o.valid, o);
  } else if (o.holdout > 0 && examples.size() >= 10) {
    // every k-th example: deterministic and spread over the file
    const size_t k = std::max<size_t>(2, size_t(1.0 / o.holdout));
    std::vector<std::pair<std::string, std::string>> train;
    for (size_t i = 0; i < examples.size(); i++)
      (i % k == k - 1 ? valid : train).push_back(std::move(examples[i]));
    examples.swap(train);
  }
  std::vector<std::string> labels;
  for (const auto& e : examples)
    if (std::find(labels.begin(), labels.end(), e.second) == labels.end()) labels.push_back(e.second);
  std::sort(labels.begin(), labels.end());
  auto to_data = [&](std::vector<std::pair<std::string, std::string>>& v) {
    std::vector<LabelledText> d;
    for (auto& [text, label] : v) {
      const auto it = std::find(labels.begin(), labels.end(), label);
      if (it == labels.end()) continue;  // a validation label never seen in training
      d.push_back({std::move(text), int(it - labels.begin())});
    }
    return d;
  };
  const std::vector<LabelledText> train = to_data(examples), val = to_data(valid);
  const double t0 = now_seconds();
  TrainReport rep;
  const ClassifierModel m = train_classifier(train, labels, c, &rep);
  const double secs = now_seconds() - t0;
  const double val_acc = val.empty() ? NAN : classifier_accuracy(m, val);
  save_classifier(o.output, m);
  nlohmann::json j = {{"model", o.output},     {"labels", labels},
                      {"train_examples", train.size()}, {"valid_examples", val.size()},
                      {"train_loss", rep.final_loss},   {"train_accuracy", rep.train_accuracy},
                      {"seconds", secs}};
  if (!val.empty()) j["valid_accuracy"] = val_acc;
  if (a.json) {
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("trained %s: %zu examples, labels", o.output.c_str(), train.size());
    for (const auto& l : labels) std::printf(" %s", l.c_str());
    std::printf("; train accuracy %.4f, loss %.4f", rep.train_accuracy, rep.final_loss);
    if (!val.empty()) std::printf("; held-out accuracy %.4f on %zu", val_acc, val.size());
    std::printf(" (%.1fs)\n", secs);
  }
  return 0;
}

}  // namespace

int cmd_curate(int argc, char** argv) {
  if (argc >= 3 && std::string(argv[2]) == "train-classifier") return train_classifier_cmd(argc, argv);
  dist::init(&argc, &argv);
  CurateConfig cfg;
  const std::vector<FieldGroup> groups = {{"curate", &curate_fields(), &cfg}};
  ParsedArgs a = parse_list_args(argc, argv, 2, groups);
  if (a.help) {
    if (dist::world().rank() == 0)
      std::printf("%s", help_text("dsv3 curate --input FILES --output DIR [--config FILE] [--key value ...]\n"
                                  "       dsv3 curate train-classifier --help",
                                  "Curates text: normalisation, Gopher/C4/FineWeb filters, PII "
                                  "scrubbing, exact and MinHash\ndeduplication, optional classifier, "
                                  "perplexity, TF-IDF relevance and k-means diversity.\nInputs: "
                                  "JSONL or text, plain, .gz or .zst; directories and globs. Under "
                                  "mpirun the inputs\nare split across ranks and deduplication is "
                                  "global. Writes DIR/data/*.jsonl.zst, DIR/rejects/,\n"
                                  "DIR/summary.json and DIR/report.md. See docs/curation.md.",
                                  groups, false)
                              .c_str());
    dist::finalize();
    return 0;
  }
  CurateOutcome out;
  try {
    // the perplexity stage scores with a dsv3 model: the CLI, which knows every layer, wires it
    out = run_curate(cfg, [](const PerplexityConfig& pc) {
      auto scorer = std::make_shared<PerplexityScorer>(pc.model, pc.max_tokens);
      return PerplexityModel{[scorer](std::string_view t) { return scorer->score(t); },
                             scorer->source()};
    });
  } catch (...) {
    dist::finalize();
    throw;
  }
  if (dist::world().rank() == 0) {
    const nlohmann::json& bad = out.summary["stats"]["bad_input"];
    if (bad.is_object() && bad.contains("read_error"))  // only with --skip_unreadable
      std::fprintf(stderr, "warning: %lld input(s) could not be read and were skipped "
                   "(read_error in %s/report.md)\n",
                   bad["read_error"].get<long long>(), cfg.output.c_str());
    if (a.json) {
      std::printf("%s\n", out.summary.dump().c_str());
    } else {
      const auto& s = out.summary["stats"];
      const auto& t = out.summary["throughput"];
      std::printf("curated %lld of %lld records (%.2f of %.2f MB) into %s/data; %lld rejected "
                  "(see %s/rejects, report.md); %.1f MB/s, %.2f MB/s per core\n",
                  s["docs_written"].get<long long>(), s["docs_read"].get<long long>(),
                  s["bytes_written"].get<double>() / 1e6, s["bytes_read"].get<double>() / 1e6,
                  cfg.output.c_str(), s["docs_rejected"].get<long long>(), cfg.output.c_str(),
                  t["mb_per_s"].get<double>(), t["mb_per_s_per_core"].get<double>());
    }
  }
  dist::finalize();
  return 0;
}

}  // namespace dsv3::cli

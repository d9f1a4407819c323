// dsv3 synth | dsv3 augment (D11): controllable synthetic text from seed prompts, generated with
// the decode engine and curated; rule-based augmentation of existing text.
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "checkpoint/checkpoint.h"
#include "checkpoint/quantized.h"
#include "commands.h"
#include "core/check.h"
#include "core/io.h"
#include "core/timer.h"
#include "curate/augment.h"
#include "curate/pipeline.h"
#include "curate/synth.h"
#include "data/reader.h"
#include "dist/comm.h"
#include "eval/generate_texts.h"
#include "eval/perplexity.h"
#include "flags.h"
#include "infer/sampler.h"
#include "train/metrics.h"

namespace dsv3::cli {

namespace {

void write_text_atomic(const std::string& path, const std::string& text) {
  write_file_atomic(path, [&](std::FILE* f) { write_bytes(f, text.data(), text.size()); });
}

std::string dump_line(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

}  // namespace

int cmd_synth(int argc, char** argv) {
  curate::SynthConfig o;
  SamplingParams sp;
  sp.temperature = 0.9;
  sp.top_p = 0.95;
  std::vector<FieldGroup> groups = {{"synth", &curate::synth_fields(), &o}, {"sampling", &sampling_fields(), &sp}};
  const auto a = parse_command(
      argc, argv, 2, groups, "dsv3 synth --model M --seeds prompts.jsonl --per_seed n --out DIR [--key value ...]",
      "Generates synthetic text from seed prompts with topic/style/length controls (a template per\n"
      "generation), then curates it: generations that duplicate a seed are dropped, and the curation\n"
      "pipeline (quality filters, exact and MinHash dedup among the generations, perplexity) runs over\n"
      "the rest. Writes DIR/generated.jsonl, DIR/curated/ (data, rejects, report) and DIR/summary.json.");
  if (!a) return 0;
  validate(o);
  validate(sp);
  int64_t bad = 0;
  std::string first_bad;
  const auto seeds = curate::read_synth_seeds(o.seeds, &bad, &first_bad);
  if (bad) std::fprintf(stderr, "%lld malformed seed lines skipped (first: %s)\n", (long long)bad, first_bad.c_str());
  const auto jobs = curate::plan_synth(o, seeds);
  // the curation settings are read before the long generation, so a bad file fails at once
  curate::CurateConfig cc;
  if (!o.curate_config.empty()) {
    std::vector<std::string> keys;
    apply_config_file(o.curate_config, {{"curate", &curate::curate_fields(), &cc}}, &keys);
  }
  namespace fs = std::filesystem;
  fs::create_directories(o.out);
  cc.input = (fs::path(o.out) / "candidates.jsonl").string();
  cc.output = (fs::path(o.out) / "curated").string();
  cc.resume = false;
  cc.perplexity.model = o.ppl_model.empty() ? o.model : o.ppl_model;
  cc.perplexity.max = o.ppl_max;
  cc.perplexity.min = o.ppl_min;
  curate::validate(cc);

  LoadedModel lm = load_model_any(o.model, /*keep_int8=*/true);
  auto weights = make_model_weights(lm, DType::F32, Device::CPU);
  const std::string tok = o.tokenizer.empty() ? find_tokenizer_for_model(o.model) : o.tokenizer;
  const TextCodec codec = tok.empty() ? TextCodec() : TextCodec(tok);
  DSV3_CHECK(weights->config().vocab >= codec.vocab_size(), "the model's vocab (", weights->config().vocab,
             ") is smaller than its text encoding needs (", codec.vocab_size(), "): give its --tokenizer");
  std::fprintf(stderr, "loaded %s; text: %s; %zu seeds x %d = %zu generations\n", lm.source.c_str(),
               codec.describe().c_str(), seeds.size(), o.per_seed, jobs.size());

  // 1. generate, one batch per token budget (each job keeps its own)
  std::vector<std::string> prompts(jobs.size()), texts(jobs.size());
  std::vector<int64_t> ntok(jobs.size());
  const double t0 = now_seconds();
  ProgressLine line((long long)jobs.size());
  size_t done = 0;
  std::vector<int> budgets;
  for (const auto& j : jobs)
    if (std::find(budgets.begin(), budgets.end(), j.max_tokens) == budgets.end()) budgets.push_back(j.max_tokens);
  for (int budget : budgets) {
    std::vector<size_t> idx;
    std::vector<std::string> ps;
    for (size_t i = 0; i < jobs.size(); i++)
      if (jobs[i].max_tokens == budget) idx.push_back(i), ps.push_back(jobs[i].prompt);
    eval::TextGenConfig g;
    g.sampling = sp;
    g.sampling.seed = sp.seed + idx[0];  // generate_texts adds the prompt's index
    g.max_tokens = budget;
    g.stop = o.stop;
    g.batch = o.batch;
    const auto gen = eval::generate_texts(*weights, codec, ps, g, [&](size_t) {
      const double el = now_seconds() - t0, rate = double(++done) / std::max(el, 1e-9);
      char buf[96];
      std::snprintf(buf, sizeof buf, "generated %zu/%zu, %.2f/s", done, jobs.size(), rate);
      line.update((long long)done, buf, double(jobs.size() - done) / std::max(rate, 1e-9));
    });
    for (size_t k = 0; k < idx.size(); k++) texts[idx[k]] = gen[k].text, ntok[idx[k]] = gen[k].tokens;
  }
  line.finish();
  const double gen_seconds = now_seconds() - t0;
  int64_t gen_tokens = 0;
  for (auto n : ntok) gen_tokens += n;

  // 2. generations that repeat a seed go; the rest are the curation pass's input
  std::vector<std::string> seed_texts;
  for (const auto& s : seeds) seed_texts.push_back(s.prompt);
  const auto dup = curate::duplicates_of_seeds(seed_texts, texts, cc.minhash);
  std::string generated, candidates;
  int64_t dup_n = 0, empty_n = 0;
  for (size_t i = 0; i < jobs.size(); i++) {
    const auto& j = jobs[i];
    char id[64];
    std::snprintf(id, sizeof id, "synth-%05zu-%03d", j.seed, j.k);
    nlohmann::json rec = {{"id", id}, {"text", texts[i]}, {"prompt", j.prompt}, {"seed_line", seeds[j.seed].line},
                          {"topic", j.topic}, {"style", j.style}, {"length", j.length}, {"tokens", ntok[i]}};
    if (dup[i] >= 0) rec["duplicate_of_seed_line"] = seeds[size_t(dup[i])].line;
    generated += dump_line(rec);
    if (dup[i] >= 0) {
      dup_n++;
      continue;
    }
    if (texts[i].find_first_not_of(" \t\r\n") == std::string::npos) {
      empty_n++;
      continue;
    }
    rec.erase("duplicate_of_seed_line");
    candidates += dump_line(rec);
  }
  write_text_atomic((fs::path(o.out) / "generated.jsonl").string(), generated);
  write_text_atomic(cc.input, candidates);

  // 3. the curation pipeline: quality filters, dedup among the generations, perplexity
  nlohmann::json cur = nullptr;
  int64_t kept = 0;
  if (!candidates.empty()) {
    dist::init(&argc, &argv);
    curate::CurateOutcome out;
    try {
      out = curate::run_curate(cc, [](const curate::PerplexityConfig& pc) {
        auto scorer = std::make_shared<PerplexityScorer>(pc.model, pc.max_tokens);
        return curate::PerplexityModel{[scorer](std::string_view t) { return scorer->score(t); }, scorer->source()};
      });
    } catch (...) {
      dist::finalize();
      throw;
    }
    dist::finalize();
    cur = out.summary;
    kept = out.summary["stats"]["docs_written"].get<int64_t>();
  }
  nlohmann::json rejected = nlohmann::json::object();
  if (!cur.is_null())
    for (const auto& [stage, st] : cur["stats"]["stages"].items())
      for (const auto& [rule, r] : st["rules"].items()) rejected[stage + "/" + rule] = r["docs"];
  nlohmann::json summary = {
      {"model", o.model},
      {"seeds", seeds.size()},
      {"malformed_seed_lines", bad},
      {"generated", jobs.size()},
      {"generated_tokens", gen_tokens},
      {"generation_seconds", gen_seconds},
      {"duplicates_of_seeds", dup_n},
      {"empty", empty_n},
      {"curated_in", jobs.size() - size_t(dup_n + empty_n)},
      {"kept", kept},
      {"kept_share", jobs.empty() ? 0.0 : double(kept) / double(jobs.size())},
      {"rejected_by", rejected},
      {"kept_files", (fs::path(cc.output) / "data").string()},
      {"settings", groups_to_json(groups)},
  };
  write_text_atomic((fs::path(o.out) / "summary.json").string(), summary.dump(2) + "\n");
  if (a->json) {
    std::printf("%s\n", summary.dump().c_str());
  } else {
    std::printf("generated %zu texts (%lld tokens, %.1f tokens/s); %lld repeat a seed, %lld empty; "
                "curated %lld: kept %lld (%.1f%%) in %s\n",
                jobs.size(), (long long)gen_tokens, double(gen_tokens) / std::max(gen_seconds, 1e-9),
                (long long)dup_n, (long long)empty_n, (long long)(jobs.size() - size_t(dup_n + empty_n)),
                (long long)kept, 100.0 * summary["kept_share"].get<double>(),
                summary["kept_files"].get<std::string>().c_str());
    for (const auto& [k, v] : rejected.items()) std::printf("  rejected by %s: %lld\n", k.c_str(), v.get<long long>());
  }
  return 0;
}

int cmd_augment(int argc, char** argv) {
  curate::AugmentConfig o;
  std::vector<FieldGroup> groups = {{"augment", &curate::augment_fields(), &o}};
  const auto a = parse_command(
      argc, argv, 2, groups, "dsv3 augment --input F --output OUT.jsonl [--rate 0.2] [--ops synonym,reorder]",
      "Rewrites a share of the sentences of each document: synonym replacement (a small built-in\n"
      "table, or --synonyms FILE) and clause reordering (leading/trailing adverbial clauses); prints\n"
      "the rates. See docs/curation.md \"Augmentation\".");
  if (!a) return 0;
  validate(o);
  curate::Augmenter aug(o, o.synonyms.empty() ? curate::builtin_synonyms() : curate::read_synonyms(o.synonyms));
  ReaderConfig rc;
  rc.text_key = o.text_key;
  rc.text_unit = TextUnit::Line;
  std::string out;
  int64_t bad = 0;
  for (const auto& path : expand_inputs({o.input})) {
    RecordReader reader(path, rc);
    RawRecord raw;
    while (reader.next(raw)) {
      Record rec;
      std::string detail;
      const uint32_t problems = parse_record(raw, reader.format(), rc, path, rec, detail);
      if (problems & ~(bad_input_bit(BadInput::InvalidUtf8) | bad_input_bit(BadInput::NulBytes))) {
        if (bad++ < 5) std::fprintf(stderr, "%s:%llu: skipped (%s)\n", path.c_str(), (unsigned long long)raw.line, detail.c_str());
        continue;
      }
      nlohmann::json j = rec.meta.is_object() ? rec.meta : nlohmann::json::object();
      j["id"] = rec.id;
      j[o.text_key] = aug.augment(rec.text);
      out += dump_line(j);
    }
  }
  write_file_atomic(o.output, [&](std::FILE* f) { write_bytes(f, out.data(), out.size()); });
  const auto& s = aug.stats();
  const double n = double(std::max<int64_t>(1, s.sentences));
  nlohmann::json r = {{"documents", s.documents}, {"sentences", s.sentences}, {"chosen", s.chosen},
                      {"chosen_rate", s.chosen / n}, {"synonym_sentences", s.synonym_sentences},
                      {"synonym_rate", s.synonym_sentences / n}, {"words_replaced", s.words_replaced},
                      {"reordered", s.reordered}, {"reorder_rate", s.reordered / n},
                      {"unchanged_chosen", s.unchanged}, {"skipped_records", bad},
                      {"synonyms", o.synonyms.empty() ? "built-in table (docs/curation.md)" : o.synonyms}};
  if (a->json) {
    std::printf("%s\n", r.dump().c_str());
  } else {
    std::printf("%lld documents, %lld sentences: %lld chosen (%.1f%%), %lld with synonyms (%.1f%%, %lld words), "
                "%lld reordered (%.1f%%), %lld chosen but unchanged; wrote %s\n",
                (long long)s.documents, (long long)s.sentences, (long long)s.chosen, 100 * s.chosen / n,
                (long long)s.synonym_sentences, 100 * s.synonym_sentences / n, (long long)s.words_replaced,
                (long long)s.reordered, 100 * s.reordered / n, (long long)s.unchanged, o.output.c_str());
  }
  return 0;
}

}  // namespace dsv3::cli

#include "eval/harness.h"

#include <algorithm>
#include <cmath>

#include "core/check.h"
#include "core/io.h"
#include "core/text_lines.h"
#include "core/rng.h"
#include "core/timer.h"
#include "eval/answer_match.h"
#include "eval/bleu.h"
#include "eval/generate_texts.h"
#include "eval/loglik.h"

namespace dsv3::eval {

using nlohmann::json;

const char* choice_format_name(ChoiceFormat f) { return f == ChoiceFormat::Cloze ? "cloze" : "letters"; }
ChoiceFormat parse_choice_format(const std::string& s) {
  if (s == "cloze") return ChoiceFormat::Cloze;
  if (s == "letters") return ChoiceFormat::Letters;
  fail("mc_format must be cloze or letters, not '", s, "'");
}

const std::vector<FieldSpec>& evaluate_fields() {
  using E = EvaluateConfig;
  static const std::vector<FieldSpec> f = {
      field("model", &E::model, "checkpoint file, run directory or HF directory"),
      field("tasks", &E::tasks, "task files (JSONL, .gz/.zst), comma-separated"),
      field("shots", &E::shots, "few-shot examples per item, drawn from the same file", in_range(0, 64)),
      field("limit", &E::limit, "score the first N valid items of each task (0 = all)", at_least(0)),
      field("samples", &E::samples, "write per-item records (JSONL) to this file"),
      field("out", &E::out, "write the results JSON to this file"),
      field("tokenizer", &E::tokenizer, "tokenizer file (default: the one beside the model, else bytes)"),
      field("batch_tokens", &E::batch_tokens, "log-likelihood: tokens per forward (rows x padded "
            "length, or new tokens per step with share_context)", in_range(1, 1 << 22)),
      field("share_context", &E::share_context, "log-likelihood: run each context once and score "
            "its choices over the KV cache (CPU, dense attention; false: one full forward per "
            "choice, as the harness)"),
      field("max_gen_tokens", &E::max_gen_tokens, "generation tasks: longest answer in tokens", in_range(1, 1 << 20)),
      field("gen_batch", &E::gen_batch, "generation tasks: sequences decoded together", in_range(1, 4096)),
      field("fewshot_seed", &E::fewshot_seed, "seed of the few-shot draw", at_least(0)),
      choice("mc_format", &E::mc_format, "cloze|letters",
             "multiple choice: score the answer texts (ARC style) or the letters A, B, ... after "
             "listing the choices (MMLU style)", choice_format_name, parse_choice_format),
      field("device", &E::device, "cpu or cuda"),
      field("predictions", &E::predictions,
            "generation tasks: score these generations (JSONL: task, line, generation) instead "
            "of generating; --model is then optional"),
      field("tiers", &E::tiers, "a tiers file (JSON) to run instead of --tasks: the next tier only "
            "when every task of this one reaches its threshold"),
      field("indicators", &E::indicators, "prompt set (JSONL: prompt, or prompt_a + prompt_b): "
            "word-list toxicity rate and paired-prompt bias gap of the generations (heuristics)"),
      field("toxicity_words", &E::toxicity_words, "word list (one per line) replacing the built-in toxicity list"),
      field("indicator_tokens", &E::indicator_tokens, "tokens generated per indicator prompt", in_range(1, 1 << 16)),
  };
  return f;
}

void validate(const EvaluateConfig& c) {
  check_field_ranges(evaluate_fields(), &c, "evaluate: ");
  DSV3_CHECK(!c.model.empty() || !c.predictions.empty(),
             "--model is required (a checkpoint, run directory or HF directory)");
  DSV3_CHECK(!c.tasks.empty() || !c.tiers.empty() || !c.indicators.empty(),
             "--tasks is required (task JSONL files, comma-separated), or --tiers FILE, or --indicators FILE");
  DSV3_CHECK(c.tasks.empty() || c.tiers.empty(), "--tasks and --tiers are two ways to name the "
             "tasks: give one of them");
  DSV3_CHECK(!c.indicators.empty() || c.toxicity_words.empty(), "--toxicity_words needs --indicators");
  DSV3_CHECK(c.indicators.empty() || !c.model.empty(), "--indicators needs --model (it generates)");
}

// ---------------------------------------------------------------------------------------------
std::string item_query(const TaskFile& t, const TaskItem& it, ChoiceFormat f) {
  if (t.kind != TaskKind::MultipleChoice) return it.context;
  if (f == ChoiceFormat::Cloze) return "Question: " + it.context + "\nAnswer:";
  // MMLU: the question, the lettered choices, "Answer:"
  std::string q = it.context;
  auto ws = [](char c) { return c == ' ' || (c >= '\t' && c <= '\r'); };  // Python's strip()
  while (!q.empty() && ws(q.back())) q.pop_back();
  while (!q.empty() && ws(q.front())) q.erase(0, 1);
  for (size_t k = 0; k < it.choices.size(); k++)
    q += "\n" + std::string(1, char('A' + k)) + ". " + it.choices[k];
  return q + "\nAnswer:";
}

std::vector<std::string> item_choices(const TaskFile& t, const TaskItem& it, ChoiceFormat f) {
  if (t.kind == TaskKind::MultipleChoice && f == ChoiceFormat::Letters) {
    std::vector<std::string> l;
    for (size_t k = 0; k < it.choices.size(); k++) l.emplace_back(1, char('A' + k));
    return l;
  }
  return it.choices;
}

std::string item_target(const TaskFile& t, const TaskItem& it, ChoiceFormat f) {
  if (t.kind == TaskKind::HellaSwag || t.kind == TaskKind::MultipleChoice)
    return item_choices(t, it, f)[size_t(it.gold)];
  return it.references.empty() ? std::string() : it.references[0];
}

std::string build_context(const TaskFile& t, size_t i, int shots, uint64_t seed, ChoiceFormat f) {
  const size_t n = t.items.size();
  std::string ctx;
  if (shots > 0 && n > 1) {
    // distinct items != i, in the order drawn
    Rng rng(seed * 0x9E3779B97F4A7C15ull + i);
    std::vector<size_t> picked;
    const size_t k = std::min<size_t>(size_t(shots), n - 1);
    if (k == n - 1) {
      for (size_t j = 0; j < n; j++)
        if (j != i) picked.push_back(j);
      for (size_t a = picked.size(); a > 1; a--) std::swap(picked[a - 1], picked[rng.below(a)]);
    } else {
      while (picked.size() < k) {
        const size_t j = size_t(rng.below(n));
        if (j != i && std::find(picked.begin(), picked.end(), j) == picked.end()) picked.push_back(j);
      }
    }
    for (size_t j : picked)
      ctx += item_query(t, t.items[j], f) + " " + item_target(t, t.items[j], f) + "\n\n";
  }
  return ctx + item_query(t, t.items[i], f);
}

void encode_pair(const TextCodec& codec, const std::string& context_in,
                 const std::string& continuation_in, std::vector<int32_t>& ctx_ids,
                 std::vector<int32_t>& cont_ids) {
  std::string context = context_in, continuation = continuation_in;
  size_t keep = context.size();
  while (keep > 0 && (context[keep - 1] == ' ' || (context[keep - 1] >= '\t' && context[keep - 1] <= '\r'))) keep--;
  if (keep < context.size()) {
    continuation = context.substr(keep) + continuation;
    context.resize(keep);
  }
  const std::vector<int32_t> whole = codec.encode(context + continuation);
  ctx_ids = codec.encode(context);
  DSV3_CHECK(!ctx_ids.empty(), "an item's context encodes to no tokens");
  const size_t m = std::min(ctx_ids.size(), whole.size());
  cont_ids.assign(whole.begin() + std::ptrdiff_t(m), whole.end());
  DSV3_CHECK(!cont_ids.empty(), "a continuation encodes to no tokens: '", continuation_in, "'");
}

namespace {

size_t code_points(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

// mean and the standard error of the mean (sample standard deviation / sqrt(n)), as the
// harness reports it
void put_mean(json& m, const char* name, const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  const double mean = v.empty() ? 0.0 : s / double(v.size());
  double var = 0;
  for (double x : v) var += (x - mean) * (x - mean);
  m[name] = mean;
  m[std::string(name) + "_stderr"] =
      v.size() > 1 ? std::sqrt(var / double(v.size() - 1) / double(v.size())) : 0.0;
}

size_t argmax(const std::vector<double>& v) {
  return size_t(std::max_element(v.begin(), v.end()) - v.begin());  // first of equal maxima
}

void run_choice(const ModelWeights& w, const TextCodec& codec, const TaskFile& t, size_t n,
                const EvaluateConfig& cfg, TaskResult& r, const Progress& progress) {
  std::vector<LoglikRequest> reqs;
  std::vector<size_t> first(n + 1, 0);
  std::vector<std::string> contexts(n);
  for (size_t i = 0; i < n; i++) {
    first[i] = reqs.size();
    contexts[i] = build_context(t, i, cfg.shots, uint64_t(cfg.fewshot_seed), cfg.mc_format);
    for (const auto& ch : item_choices(t, t.items[i], cfg.mc_format)) {
      LoglikRequest q;
      encode_pair(codec, contexts[i], " " + ch, q.context, q.continuation);
      reqs.push_back(std::move(q));
    }
  }
  first[n] = reqs.size();
  LoglikConfig lc;
  lc.batch_tokens = cfg.batch_tokens;
  lc.share_context = cfg.share_context;
  LoglikScorer scorer(w, lc);
  const auto ll = scorer.score(reqs, [&](size_t d, size_t tot) {
    if (progress) progress("requests", d, tot);
  });
  std::vector<double> acc, acc_norm;
  for (size_t i = 0; i < n; i++) {
    const TaskItem& it = t.items[i];
    const auto choices = item_choices(t, it, cfg.mc_format);
    std::vector<double> lls(ll.begin() + std::ptrdiff_t(first[i]), ll.begin() + std::ptrdiff_t(first[i + 1]));
    std::vector<double> norm(lls.size());
    for (size_t k = 0; k < lls.size(); k++) norm[k] = lls[k] / double(std::max<size_t>(1, code_points(choices[k])));
    const size_t pred = argmax(lls), pred_norm = argmax(norm);
    acc.push_back(pred == size_t(it.gold));
    acc_norm.push_back(pred_norm == size_t(it.gold));
    r.samples.push_back({{"task", t.name}, {"line", it.line}, {"context", contexts[i]},
                         {"choices", choices}, {"loglik", lls}, {"gold", it.gold}, {"pred", pred},
                         {"pred_norm", pred_norm}, {"acc", acc.back()}, {"acc_norm", acc_norm.back()}});
  }
  put_mean(r.metrics, "acc", acc);
  put_mean(r.metrics, "acc_norm", acc_norm);
  r.metrics["requests"] = reqs.size();
  r.metrics["forwards"] = scorer.forwards();
  r.metrics["tokens_run"] = scorer.tokens();
  r.metrics["shared_context"] = scorer.shares_context();
}

void run_generation(const ModelWeights* w, const TextCodec& codec, const TaskFile& t, size_t n,
                    const EvaluateConfig& cfg, TaskResult& r, const Progress& progress,
                    const Predictions* preds) {
  std::vector<std::string> prompts(n);
  for (size_t i = 0; i < n; i++) prompts[i] = build_context(t, i, cfg.shots, uint64_t(cfg.fewshot_seed), cfg.mc_format);
  TextGenConfig g;
  g.sampling.temperature = 0;  // greedy
  g.max_tokens = cfg.max_gen_tokens;
  g.batch = cfg.gen_batch;
  // one answer: a generation task stops at a blank line (the shot separator), a translation at
  // the end of its line
  g.stop = t.kind == TaskKind::Translation ? "\n" : "\n\n";
  std::vector<GeneratedText> gen(n);
  if (preds) {
    for (size_t i = 0; i < n; i++) {
      const auto it = preds->find({t.name, t.items[i].line});
      DSV3_CHECK(it != preds->end(), "--predictions has no generation for task ", t.name,
                 " line ", t.items[i].line);
      gen[i].text = it->second;
    }
  } else {
    DSV3_CHECK(w, "no model to generate with (internal error)");
    size_t finished = 0;
    gen = generate_texts(*w, codec, prompts, g, [&](size_t) {
      if (progress) progress("generations", ++finished, n);
    });
  }
  std::vector<double> em, num;
  BleuStats bleu;
  int64_t gen_tokens = 0;
  for (size_t i = 0; i < n; i++) {
    const TaskItem& it = t.items[i];
    // the answer: what follows the prompt, leading spaces (the target delimiter) dropped
    std::string answer = gen[i].text;
    answer.erase(0, std::min(answer.find_first_not_of(' '), answer.size()));
    gen_tokens += gen[i].tokens;
    json s = {{"task", t.name}, {"line", it.line}, {"context", prompts[i]}, {"generation", answer},
              {"references", it.references}, {"tokens", gen[i].tokens}};
    if (t.kind == TaskKind::Generation) {
      em.push_back(exact_match(answer, it.references[0]));
      s["exact_match"] = em.back();
      if (const auto want = extract_number(it.references[0])) {
        const auto got = extract_number(answer);
        num.push_back(got && *got == *want);
        s["numeric_match"] = num.back();
        s["number"] = got ? json(*got) : json(nullptr);
      }
    } else {
      const BleuStats b = bleu_stats(answer, it.references);
      bleu += b;
      s["sentence_bleu_stats"] = {{"sys_len", b.sys_len}, {"ref_len", b.ref_len},
                                  {"correct", b.correct}, {"total", b.total}};
    }
    r.samples.push_back(std::move(s));
  }
  if (t.kind == TaskKind::Generation) {
    put_mean(r.metrics, "exact_match", em);
    if (!num.empty()) put_mean(r.metrics, "numeric_match", num);
    r.metrics["numeric_items"] = num.size();
  } else {
    const BleuScore b = bleu_from_stats(bleu);
    r.metrics["bleu"] = b.score;
    r.metrics["brevity_penalty"] = b.brevity_penalty;
    r.metrics["precisions"] = b.precisions;
    r.metrics["sys_len"] = b.sys_len;
    r.metrics["ref_len"] = b.ref_len;
  }
  r.metrics["generated_tokens"] = gen_tokens;
}

}  // namespace

Predictions read_predictions(const std::string& path) {
  const std::string text = read_file(path);
  Predictions p;
  for_each_line(text, [&](int64_t line, std::string_view l) {
    if (is_blank(l)) return;
    const json j = json::parse(l, nullptr, false);
    DSV3_CHECK(j.is_object() && j.contains("task") && j["task"].is_string() && j.contains("line") &&
                   j["line"].is_number_integer() && j.contains("generation") && j["generation"].is_string(),
               path, ":", line, ": a prediction is a JSON object with \"task\" (string), \"line\" "
               "(integer) and \"generation\" (string)");
    p[{j["task"].get<std::string>(), j["line"].get<int64_t>()}] = j["generation"].get<std::string>();
  });
  return p;
}

TaskResult run_task(const ModelWeights* w, const TextCodec& codec, const TaskFile& task,
                    const EvaluateConfig& cfg, const Progress& progress, const Predictions* preds) {
  TaskResult r;
  r.name = task.name, r.path = task.path, r.kind = task.kind;
  r.malformed = int64_t(task.bad.size());
  const size_t n = cfg.limit > 0 ? std::min<size_t>(task.items.size(), size_t(cfg.limit)) : task.items.size();
  r.items = int64_t(n);
  const double t0 = now_seconds();
  if (task.kind == TaskKind::HellaSwag || task.kind == TaskKind::MultipleChoice) {
    DSV3_CHECK(w, "task ", task.path, " is multiple choice: it needs --model");
    run_choice(*w, codec, task, n, cfg, r, progress);
  } else {
    run_generation(w, codec, task, n, cfg, r, progress, preds);
  }
  r.seconds = now_seconds() - t0;
  r.metrics["items_per_second"] = r.seconds > 0 ? double(n) / r.seconds : 0.0;
  return r;
}

}  // namespace dsv3::eval

#include "curate/synth.h"

#include <filesystem>
#include <map>

#include <nlohmann/json.hpp>

#include "core/check.h"
#include "core/io.h"
#include "core/text_lines.h"

namespace dsv3::curate {

namespace {

std::map<std::string, int> length_budgets(const std::string& spec) {
  std::map<std::string, int> m;
  for (const auto& e : split_list(spec)) {
    const size_t eq = e.find('=');
    DSV3_CHECK(eq != std::string::npos && eq > 0, "length_tokens entry '", e, "' is not name=tokens");
    const long long v = parse_int("length_tokens", e.substr(eq + 1));
    DSV3_CHECK(v >= 1 && v <= (1 << 20), "length_tokens: ", e, " must give 1..1048576 tokens");
    m[e.substr(0, eq)] = int(v);
  }
  return m;
}

}  // namespace

const std::vector<FieldSpec>& synth_fields() {
  using S = SynthConfig;
  static const std::vector<FieldSpec> f = {
      field("model", &S::model, "checkpoint file, run directory or HF directory to generate with"),
      field("seeds", &S::seeds, "seed prompts, JSONL: {\"prompt\" (or \"text\"), optional \"topic\", \"style\", \"length\"}"),
      field("out", &S::out, "output directory"),
      field("per_seed", &S::per_seed, "generations per seed", in_range(1, 100000)),
      field("topics", &S::topics, "topics, comma-separated, cycled over each seed's generations"),
      field("styles", &S::styles, "styles, comma-separated (e.g. formal,casual,technical)"),
      field("lengths", &S::lengths, "length names, comma-separated (names of --length_tokens)"),
      field("length_tokens", &S::length_tokens, "token budget of each length name: name=tokens,..."),
      field("max_tokens", &S::max_tokens, "token budget when no length is set", in_range(1, 1 << 20)),
      field("template", &S::template_text,
            "prompt template with {prompt} {topic} {style} {length} (default: a 'Topic: ...' "
            "header line per control, a blank line, the seed prompt)"),
      field("stop", &S::stop, "stop string (default: EOS or the token budget)"),
      field("batch", &S::batch, "sequences decoded together", in_range(1, 4096)),
      field("curate_config", &S::curate_config, "dsv3 curate settings (key = value file) for the curation pass"),
      field("ppl_max", &S::ppl_max, "perplexity filter: drop generations above this (0 = score only)", at_least(0)),
      field("ppl_min", &S::ppl_min, "perplexity filter: drop generations below this (repetition; 0 = off)", at_least(0)),
      field("ppl_model", &S::ppl_model, "model of the perplexity filter (default: --model)"),
      field("tokenizer", &S::tokenizer, "tokenizer file (default: the one beside the model)"),
  };
  return f;
}

void validate(const SynthConfig& c) {
  check_field_ranges(synth_fields(), &c, "synth: ");
  DSV3_CHECK(!c.model.empty(), "--model is required (the model that generates)");
  DSV3_CHECK(!c.seeds.empty(), "--seeds is required (a JSONL file of seed prompts)");
  DSV3_CHECK(!c.out.empty(), "--out is required (the output directory)");
  const auto budgets = length_budgets(c.length_tokens);
  for (const auto& l : split_list(c.lengths))
    DSV3_CHECK(budgets.count(l), "length '", l, "' has no budget in --length_tokens (", c.length_tokens, ")");
  if (!c.template_text.empty()) render_template(c.template_text, SynthJob{});  // names check
}

std::vector<SynthSeed> read_synth_seeds(const std::string& path, int64_t* bad, std::string* first_bad) {
  DSV3_CHECK(std::filesystem::is_regular_file(path), "seed file ", path, " does not exist");
  const std::string text = read_file(path);
  std::vector<SynthSeed> out;
  *bad = 0;
  for_each_line(text, [&](int64_t line, std::string_view l) {
    auto reject = [&](const std::string& why) {
      if ((*bad)++ == 0) *first_bad = path + ":" + std::to_string(line) + ": " + why;
    };
    if (is_blank(l)) return;
    const auto j = nlohmann::json::parse(l, nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
      reject("not a JSON object");
      return;
    }
    const char* key = j.contains("prompt") ? "prompt" : "text";
    if (!j.contains(key) || !j[key].is_string() || j[key].get<std::string>().empty()) {
      reject("needs a non-empty \"prompt\" or \"text\" string");
      return;
    }
    SynthSeed s;
    s.line = line;
    s.prompt = j[key].get<std::string>();
    bool ok = true;
    for (auto [k, dst] : {std::pair{"topic", &s.topic}, {"style", &s.style}, {"length", &s.length}}) {
      if (!j.contains(k)) continue;
      if (!j[k].is_string()) {
        ok = false;
        reject(std::string("\"") + k + "\" is not a string");
        break;
      }
      *dst = j[k].get<std::string>();
    }
    if (ok) out.push_back(std::move(s));
  });
  DSV3_CHECK(!out.empty(), path, ": no valid seed (", *bad, " malformed lines",
             *bad ? "; first: " + *first_bad : std::string(), ")");
  return out;
}

std::vector<SynthJob> plan_synth(const SynthConfig& c, const std::vector<SynthSeed>& seeds) {
  const auto topics = split_list(c.topics), styles = split_list(c.styles), lengths = split_list(c.lengths);
  const auto budgets = length_budgets(c.length_tokens);
  const size_t T = std::max<size_t>(1, topics.size()), S = std::max<size_t>(1, styles.size()),
               L = std::max<size_t>(1, lengths.size());
  std::vector<SynthJob> jobs;
  for (size_t s = 0; s < seeds.size(); s++)
    for (int k = 0; k < c.per_seed; k++) {
      SynthJob j;
      j.seed = s, j.k = k;
      const size_t u = size_t(k);
      j.topic = !seeds[s].topic.empty() ? seeds[s].topic : topics.empty() ? "" : topics[u % T];
      j.style = !seeds[s].style.empty() ? seeds[s].style : styles.empty() ? "" : styles[(u / T) % S];
      j.length = !seeds[s].length.empty() ? seeds[s].length : lengths.empty() ? "" : lengths[(u / (T * S)) % L];
      j.max_tokens = c.max_tokens;
      if (!j.length.empty()) {
        const auto it = budgets.find(j.length);
        DSV3_CHECK(it != budgets.end(), "seed line ", seeds[s].line, ": length '", j.length,
                   "' has no budget in --length_tokens (", c.length_tokens, ")");
        j.max_tokens = it->second;
      }
      j.prompt = seeds[s].prompt;
      if (c.template_text.empty()) {
        std::string head;
        if (!j.topic.empty()) head += "Topic: " + j.topic + "\n";
        if (!j.style.empty()) head += "Style: " + j.style + "\n";
        if (!j.length.empty()) head += "Length: " + j.length + "\n";
        j.prompt = head.empty() ? j.prompt : head + "\n" + j.prompt;
      } else {
        j.prompt = render_template(c.template_text, j);
      }
      jobs.push_back(std::move(j));
    }
  return jobs;
}

std::string render_template(const std::string& tpl, const SynthJob& j) {
  std::string out;
  for (size_t i = 0; i < tpl.size(); i++) {
    if (tpl[i] != '{') {
      out += tpl[i];
      continue;
    }
    const size_t close = tpl.find('}', i);
    DSV3_CHECK(close != std::string::npos, "template: '{' at ", i, " is not closed");
    const std::string name = tpl.substr(i + 1, close - i - 1);
    if (name == "prompt") out += j.prompt;
    else if (name == "topic") out += j.topic;
    else if (name == "style") out += j.style;
    else if (name == "length") out += j.length;
    else fail("template: unknown placeholder {", name, "} (use {prompt} {topic} {style} {length})");
    i = close;
  }
  return out;
}

std::vector<int> duplicates_of_seeds(const std::vector<std::string>& seeds,
                                     const std::vector<std::string>& gens, const MinHashConfig& cfg) {
  const size_t n = seeds.size() + gens.size();
  std::vector<Hash128> hashes;
  hashes.reserve(n);
  const MinHasher mh(cfg);
  std::vector<uint16_t> sigs(n * size_t(mh.num_perm()));
  for (size_t i = 0; i < n; i++) {
    const std::string& t = i < seeds.size() ? seeds[i] : gens[i - seeds.size()];
    hashes.push_back(exact_hash(t));
    mh.signature(t, sigs.data() + i * size_t(mh.num_perm()));
  }
  // seeds first: a cluster holding a seed has a seed as its first document
  const auto exact = exact_clusters(hashes);
  const auto near = minhash_clusters(sigs, n, cfg, nullptr);
  std::vector<int> out(gens.size(), -1);
  for (size_t g = 0; g < gens.size(); g++) {
    const size_t i = seeds.size() + g;
    if (exact[i] < seeds.size()) out[g] = int(exact[i]);
    else if (near[i] < seeds.size()) out[g] = int(near[i]);
  }
  return out;
}

}  // namespace dsv3::curate

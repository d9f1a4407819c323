#include "curate/config.h"

#include <algorithm>
#include <set>

#include "core/check.h"

namespace dsv3::curate {

const char* stage_name(Stage s) {
  switch (s) {
    case Stage::Normalize: return "normalize";
    case Stage::GopherQuality: return "gopher_quality";
    case Stage::GopherRepetition: return "gopher_repetition";
    case Stage::C4: return "c4";
    case Stage::FineWeb: return "fineweb";
    case Stage::Classifier: return "classifier";
    case Stage::Perplexity: return "perplexity";
    case Stage::Pii: return "pii";
    case Stage::ExactDedup: return "exact_dedup";
    case Stage::MinhashDedup: return "minhash_dedup";
    case Stage::Tfidf: return "tfidf";
    case Stage::Diversity: return "diversity";
    case Stage::Count_: break;
  }
  return "?";
}

Stage parse_stage(const std::string& s) {
  std::string all;
  for (int i = 0; i < int(Stage::Count_); i++) {
    if (s == stage_name(Stage(i))) return Stage(i);
    all += (i ? ", " : "") + std::string(stage_name(Stage(i)));
  }
  fail("unknown stage '", s, "' (stages: ", all, ")");
}

bool stage_is_local(Stage s) { return int(s) < int(Stage::ExactDedup); }

namespace {

using C = CurateConfig;

// A FieldSpec over a member reached through `get` (the stage configs are nested structs).
template <typename T, typename Get>
FieldSpec ref(const char* name, const char* help, Get get, Range range = {}) {
  FieldSpec f;
  f.name = name;
  f.help = help;
  f.range = range;
  if constexpr (std::is_same_v<T, bool>) {
    f.type = "bool";
    f.get = [get](const void* o) {
      return std::string(get(*const_cast<C*>(static_cast<const C*>(o))) ? "true" : "false");
    };
    f.set = [get, name](void* o, const std::string& v) { get(*static_cast<C*>(o)) = parse_bool(name, v); };
  } else if constexpr (std::is_same_v<T, double>) {
    f.type = "float";
    f.get = [get](const void* o) { return format_float(get(*const_cast<C*>(static_cast<const C*>(o)))); };
    f.set = [get, name, range](void* o, const std::string& v) {
      const double x = parse_float(name, v);
      check_range(name, range, x, v);
      get(*static_cast<C*>(o)) = x;
    };
  } else if constexpr (std::is_same_v<T, std::string>) {
    f.type = "string";
    f.get = [get](const void* o) { return get(*const_cast<C*>(static_cast<const C*>(o))); };
    f.set = [get](void* o, const std::string& v) { get(*static_cast<C*>(o)) = v; };
  } else {
    f.type = "int";
    f.get = [get](const void* o) { return std::to_string(get(*const_cast<C*>(static_cast<const C*>(o)))); };
    f.set = [get, name, range](void* o, const std::string& v) {
      const long long x = parse_int(name, v);
      using V = std::remove_reference_t<decltype(get(*static_cast<C*>(o)))>;
      if constexpr (sizeof(V) == 4)
        DSV3_CHECK(x >= -2147483647LL && x <= 2147483647LL, "'", name, "' is out of range: ", v);
      check_range(name, range, double(x), v);
      get(*static_cast<C*>(o)) = V(x);
    };
  }
  return f;
}

#define R(T, name, help, expr, range) ref<T>(name, help, [](C& c) -> T& { return expr; }, range)
#define RI(name, help, expr, range) ref<int>(name, help, [](C& c) -> int& { return expr; }, range)
#define RD(name, help, expr, range) ref<double>(name, help, [](C& c) -> double& { return expr; }, range)
#define RB(name, help, expr) ref<bool>(name, help, [](C& c) -> bool& { return expr; })
#define RS(name, help, expr) ref<std::string>(name, help, [](C& c) -> std::string& { return expr; })

template <typename E>
FieldSpec choice_ref(const char* name, const char* choices, const char* help, E C::*m,
                     const char* (*to_text)(E), E (*from_text)(const std::string&)) {
  return choice(name, m, choices, help, to_text, from_text);
}

}  // namespace

const std::vector<FieldSpec>& curate_fields() {
  static const std::vector<FieldSpec> f = {
      RS("input", "input files, directories or globs (comma-separated; ** recurses)", c.input),
      RS("output", "output directory (data/, rejects/, summary.json, report.md)", c.output),
      RS("stages", "comma-separated stages in order, or 'auto' (see docs/curation.md)", c.stages),
      RS("skip", "comma-separated stages to leave out", c.skip),
      RB("strict", "make any bad input record fatal (reported as file:line)", c.strict),
      RB("skip_unreadable",
         "an input that cannot be read (corrupt or cut .gz/.zst, unreadable file) is counted as "
         "read_error and the run goes on, instead of stopping",
         c.skip_unreadable),
      RB("resume", "reuse inputs an earlier run of the same settings finished", c.resume),
      RB("keep_work", "keep OUT/work (per-input state) after a successful run", c.keep_work),
      RI("threads", "OpenMP threads (0 = all)", c.threads, in_range(0, 65536)),
      choice_ref<Compression>("compression", "zstd|gzip|none", "output compression",
                              &C::compression, compression_name, parse_compression),
      RI("compression_level", "zstd 1-19 / gzip 1-9", c.compression_level, in_range(1, 19)),
      RI("examples_per_rule", "example ids kept per drop rule in the summary", c.examples_per_rule, in_range(0, 1000000)),
      RI("part_mb", "pack inputs into parts (one output file each) of about this many MB; 0 = one per input",
         c.part_mb, in_range(0, 1 << 30)),
      // reader
      {"input_format", "auto|jsonl|text", "auto: .jsonl/.json/.ndjson are JSONL, others text",
       [](const void* o) { return std::string(input_format_name(static_cast<const C*>(o)->reader.format)); },
       [](void* o, const std::string& v) { static_cast<C*>(o)->reader.format = parse_input_format(v); },
       Range{}},
      RS("text_key", "JSONL field holding the text", c.reader.text_key),
      RS("id_key", "JSONL field holding the id (else path:line)", c.reader.id_key),
      {"text_unit", "file|paragraph|line", "what one document is in a text file",
       [](const void* o) { return std::string(text_unit_name(static_cast<const C*>(o)->reader.text_unit)); },
       [](void* o, const std::string& v) { static_cast<C*>(o)->reader.text_unit = parse_text_unit(v); },
       Range{}},
      R(int64_t, "max_doc_bytes", "records longer than this are rejected as too_large", c.reader.max_doc_bytes, in_range(1, 1ll << 40)),
      // normalize
      RB("nfc", "Unicode NFC", c.normalize.nfc),
      RB("strip_controls", "remove control characters", c.normalize.controls),
      RB("fix_whitespace", "normalise spaces, line ends and blank lines", c.normalize.whitespace),
      // gopher quality
      RI("gopher_min_words", "Gopher: minimum words", c.gopher.min_doc_words, at_least(0)),
      RI("gopher_max_words", "Gopher: maximum words", c.gopher.max_doc_words, at_least(0)),
      RD("gopher_min_avg_word_length", "Gopher: minimum mean word length", c.gopher.min_avg_word_length, at_least(0)),
      RD("gopher_max_avg_word_length", "Gopher: maximum mean word length", c.gopher.max_avg_word_length, at_least(0)),
      RD("gopher_max_symbol_word_ratio", "Gopher: maximum '#' or ellipsis per word", c.gopher.max_symbol_word_ratio, at_least(0)),
      RD("gopher_max_bullet_lines_ratio", "Gopher: maximum share of bullet lines", c.gopher.max_bullet_lines_ratio, in_range(0, 1)),
      RD("gopher_max_ellipsis_lines_ratio", "Gopher: maximum share of lines ending in ...", c.gopher.max_ellipsis_lines_ratio, in_range(0, 1)),
      RD("gopher_min_alpha_words_ratio", "Gopher: minimum share of words with a letter", c.gopher.min_alpha_words_ratio, in_range(0, 1)),
      RI("gopher_min_stop_words", "Gopher: minimum distinct stop words", c.gopher.min_stop_words, in_range(0, 8)),
      // gopher repetition
      RD("rep_dup_line_frac", "Gopher repetition: duplicate lines", c.repetition.dup_line_frac, in_range(0, 1)),
      RD("rep_dup_para_frac", "Gopher repetition: duplicate paragraphs", c.repetition.dup_para_frac, in_range(0, 1)),
      RD("rep_dup_line_char_frac", "Gopher repetition: chars in duplicate lines", c.repetition.dup_line_char_frac, in_range(0, 1)),
      RD("rep_dup_para_char_frac", "Gopher repetition: chars in duplicate paragraphs", c.repetition.dup_para_char_frac, in_range(0, 1)),
      RD("rep_top_2_gram_frac", "Gopher repetition: chars in the top 2-gram", c.repetition.top_ngram_frac[0], in_range(0, 1)),
      RD("rep_top_3_gram_frac", "Gopher repetition: chars in the top 3-gram", c.repetition.top_ngram_frac[1], in_range(0, 1)),
      RD("rep_top_4_gram_frac", "Gopher repetition: chars in the top 4-gram", c.repetition.top_ngram_frac[2], in_range(0, 1)),
      RD("rep_dup_5_gram_frac", "Gopher repetition: chars in duplicated 5-grams", c.repetition.dup_ngram_frac[0], in_range(0, 1)),
      RD("rep_dup_6_gram_frac", "Gopher repetition: chars in duplicated 6-grams", c.repetition.dup_ngram_frac[1], in_range(0, 1)),
      RD("rep_dup_7_gram_frac", "Gopher repetition: chars in duplicated 7-grams", c.repetition.dup_ngram_frac[2], in_range(0, 1)),
      RD("rep_dup_8_gram_frac", "Gopher repetition: chars in duplicated 8-grams", c.repetition.dup_ngram_frac[3], in_range(0, 1)),
      RD("rep_dup_9_gram_frac", "Gopher repetition: chars in duplicated 9-grams", c.repetition.dup_ngram_frac[4], in_range(0, 1)),
      RD("rep_dup_10_gram_frac", "Gopher repetition: chars in duplicated 10-grams", c.repetition.dup_ngram_frac[5], in_range(0, 1)),
      // c4
      RI("c4_min_words_per_line", "C4: words a line needs (original 5; datatrove 3)", c.c4.min_words_per_line, at_least(0)),
      RI("c4_min_sentences", "C4: sentences a page needs (original 3; datatrove 5)", c.c4.min_sentences, at_least(0)),
      RI("c4_max_word_length", "C4: lines with a longer word go", c.c4.max_word_length, at_least(1)),
      RB("c4_remove_citations", "C4: remove [1], [edit], [citation needed]", c.c4.remove_citations),
      RB("c4_terminal_punct", "C4: keep only lines ending in . ? ! \"", c.c4.terminal_punct),
      RB("c4_lorem_ipsum", "C4: drop pages with lorem ipsum", c.c4.lorem_ipsum),
      RB("c4_javascript", "C4: drop lines mentioning javascript", c.c4.javascript),
      RB("c4_curly_bracket", "C4: drop pages with {", c.c4.curly_bracket),
      RB("c4_policy", "C4: drop terms-of-use / cookie lines", c.c4.policy),
      RB("c4_drop_lines", "C4: rewrite pages to their kept lines", c.c4.drop_lines),
      // fineweb
      RD("fineweb_line_punct_thr", "FineWeb: min share of lines ending in punctuation", c.fineweb.line_punct_thr, in_range(0, 1)),
      RB("fineweb_line_punct_exclude_zero", "FineWeb: keep pages with no such line", c.fineweb.line_punct_exclude_zero),
      RD("fineweb_short_line_thr", "FineWeb: max share of short lines", c.fineweb.short_line_thr, in_range(0, 1)),
      RI("fineweb_short_line_length", "FineWeb: a short line has at most this many chars", c.fineweb.short_line_length, at_least(0)),
      RD("fineweb_char_dup_ratio", "FineWeb: max share of chars in duplicate lines", c.fineweb.char_dup_ratio, in_range(0, 1)),
      RD("fineweb_new_line_ratio", "FineWeb: max newlines per word", c.fineweb.new_line_ratio, at_least(0)),
      // pii
      RB("pii_email", "scrub email addresses", c.pii.email),
      RB("pii_phone", "scrub phone numbers", c.pii.phone),
      RB("pii_ip", "scrub IPv4 and IPv6 addresses", c.pii.ip),
      RB("pii_credit_card", "scrub Luhn-valid card numbers", c.pii.credit_card),
      RB("pii_iban", "scrub checksum-valid IBANs", c.pii.iban),
      RB("pii_us_ssn", "scrub US social security numbers", c.pii.us_ssn),
      RB("pii_cn_resident_id", "scrub checksum-valid Chinese resident ids", c.pii.cn_resident_id),
      RB("pii_secrets", "scrub API keys, tokens and private keys", c.pii.secrets),
      // dedup
      RI("minhash_ngram", "MinHash: words per shingle", c.minhash.ngram, in_range(1, 1024)),
      RI("minhash_perm", "MinHash: permutations (signature length)", c.minhash.num_perm, in_range(1, 65536)),
      RI("minhash_bands", "MinHash LSH: bands", c.minhash.bands, in_range(1, 65536)),
      RI("minhash_rows", "MinHash LSH: rows per band", c.minhash.rows, in_range(1, 65536)),
      RD("minhash_threshold", "MinHash: estimated Jaccard to merge a candidate (0 = any band)", c.minhash.threshold, in_range(0, 1)),
      // classifier, perplexity
      RS("classifier_model", "classifier from `dsv3 curate train-classifier`", c.classifier_model),
      RS("classifier_label", "the label whose probability is the score", c.classifier_label),
      RD("classifier_threshold", "keep documents with P(label) >= this", c.classifier_threshold, in_range(0, 1)),
      RS("perplexity_model", "dsv3 checkpoint / run dir / HF dir scoring perplexity", c.perplexity.model),
      RD("perplexity_max", "drop documents above this perplexity (0 = score only)", c.perplexity.max, at_least(0)),
      RD("perplexity_min", "drop documents below this perplexity (0 = off)", c.perplexity.min, at_least(0)),
      RI("perplexity_tokens", "tokens scored per document", c.perplexity.max_tokens, in_range(1, 1 << 24)),
      // tfidf, diversity
      RS("tfidf_target", "target-domain sample: files, dirs or globs", c.tfidf_target),
      RD("tfidf_min_score", "drop documents whose cosine to the target is below this", c.tfidf_min_score, in_range(0, 1)),
      RI("tfidf_log2_features", "hashed TF-IDF features: 2^this", c.tfidf_log2_features, in_range(8, 26)),
      R(long long, "select_docs", "diversity: keep this many documents (0 = off)", c.select_docs, at_least(0)),
      RI("diversity_clusters", "k-means clusters (0 = sqrt(select_docs))", c.diversity_clusters, in_range(0, 1 << 24)),
      RI("diversity_dim", "dimension of hashed document vectors", c.diversity_dim, in_range(2, 4096)),
      RI("diversity_iterations", "k-means iterations", c.diversity_iterations, in_range(1, 100000)),
      R(long long, "seed", "seed of MinHash permutations and k-means", c.seed, at_least(0)),
  };
  return f;
}

namespace {
std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos <= s.size()) {
    size_t comma = s.find(',', pos);
    if (comma == std::string::npos) comma = s.size();
    std::string item = s.substr(pos, comma - pos);
    item.erase(0, item.find_first_not_of(" \t"));
    item.erase(item.find_last_not_of(" \t") + 1);
    if (!item.empty()) out.push_back(item);
    pos = comma + 1;
  }
  return out;
}
}  // namespace

std::vector<Stage> resolve_stages(const CurateConfig& c) {
  std::vector<Stage> out;
  if (c.stages == "auto" || c.stages.empty()) {
    out = {Stage::Normalize, Stage::GopherQuality, Stage::GopherRepetition, Stage::C4,
           Stage::FineWeb};
    if (!c.classifier_model.empty()) out.push_back(Stage::Classifier);
    if (!c.perplexity.model.empty()) out.push_back(Stage::Perplexity);
    out.push_back(Stage::Pii);
    out.push_back(Stage::ExactDedup);
    out.push_back(Stage::MinhashDedup);
    if (!c.tfidf_target.empty()) out.push_back(Stage::Tfidf);
    if (c.select_docs > 0) out.push_back(Stage::Diversity);
  } else {
    std::set<Stage> seen;
    for (const auto& name : split_list(c.stages)) {
      const Stage s = parse_stage(name);
      DSV3_CHECK(seen.insert(s).second, "stage '", name, "' is listed twice in --stages");
      out.push_back(s);
    }
  }
  for (const auto& name : split_list(c.skip)) {
    const Stage s = parse_stage(name);
    out.erase(std::remove(out.begin(), out.end(), s), out.end());
  }
  // Local stages in the listed order, then the global ones in their fixed order.
  std::stable_partition(out.begin(), out.end(), stage_is_local);
  std::stable_sort(out.begin(), out.end(), [](Stage a, Stage b) {
    if (stage_is_local(a) || stage_is_local(b)) return false;
    return int(a) < int(b);
  });
  for (Stage s : out) {
    if (s == Stage::Classifier)
      DSV3_CHECK(!c.classifier_model.empty(), "stage classifier needs --classifier_model");
    if (s == Stage::Perplexity)
      DSV3_CHECK(!c.perplexity.model.empty(), "stage perplexity needs --perplexity_model");
    if (s == Stage::Tfidf)
      DSV3_CHECK(!c.tfidf_target.empty(), "stage tfidf needs --tfidf_target");
    if (s == Stage::Diversity)
      DSV3_CHECK(c.select_docs > 0, "stage diversity needs --select_docs N");
  }
  return out;
}

void validate(const CurateConfig& c) {
  DSV3_CHECK(!c.input.empty(), "--input is required (files, directories or globs)");
  DSV3_CHECK(!c.output.empty(), "--output is required (a directory)");
  DSV3_CHECK(c.threads >= 0, "threads must be >= 0");
  DSV3_CHECK(c.examples_per_rule >= 0, "examples_per_rule must be >= 0");
  DSV3_CHECK(c.part_mb >= 0, "part_mb must be >= 0");
  DSV3_CHECK(c.reader.max_doc_bytes > 0, "max_doc_bytes must be > 0");
  DSV3_CHECK(!c.reader.text_key.empty(), "text_key must not be empty");
  if (c.compression == Compression::Zstd)
    DSV3_CHECK(c.compression_level >= 1 && c.compression_level <= 19,
               "compression_level for zstd must be in 1..19, not ", c.compression_level);
  if (c.compression == Compression::Gzip)
    DSV3_CHECK(c.compression_level >= 1 && c.compression_level <= 9,
               "compression_level for gzip must be in 1..9, not ", c.compression_level);
  validate(c.minhash);
  DSV3_CHECK(c.classifier_threshold >= 0 && c.classifier_threshold <= 1,
             "classifier_threshold must be in [0, 1]");
  DSV3_CHECK(c.tfidf_log2_features >= 8 && c.tfidf_log2_features <= 26,
             "tfidf_log2_features must be in 8..26");
  DSV3_CHECK(c.select_docs >= 0, "select_docs must be >= 0");
  DSV3_CHECK(c.diversity_dim >= 2 && c.diversity_dim <= 4096, "diversity_dim must be in 2..4096");
  DSV3_CHECK(c.diversity_clusters >= 0, "diversity_clusters must be >= 0");
  DSV3_CHECK(c.perplexity.max >= 0 && c.perplexity.min >= 0, "perplexity bounds must be >= 0");
  resolve_stages(c);
}

nlohmann::json part_fingerprint(const CurateConfig& c) {
  static const std::set<std::string> global_only = {
      "input", "output", "stages", "skip", "strict", "resume", "keep_work", "threads",
      "examples_per_rule", "minhash_bands", "minhash_rows", "minhash_threshold",
      "tfidf_target", "tfidf_min_score", "select_docs", "diversity_clusters", "diversity_dim",
      "diversity_iterations"};
  nlohmann::json all = fields_to_json(curate_fields(), &c), j = nlohmann::json::object();
  for (auto it = all.begin(); it != all.end(); ++it)
    if (!global_only.count(it.key())) j[it.key()] = it.value();
  // What a part contains: the local stages in order (spelled out, so "auto" and its expansion
  // agree) and which dedup / relevance keys were collected.
  nlohmann::json st = nlohmann::json::array();
  bool exact = false, minhash = false, df = false;
  for (Stage s : resolve_stages(c)) {
    if (stage_is_local(s)) st.push_back(stage_name(s));
    exact |= s == Stage::ExactDedup;
    minhash |= s == Stage::MinhashDedup;
    df |= s == Stage::Tfidf || s == Stage::Diversity;
  }
  j["stages"] = st;
  j["keys"] = {{"exact", exact}, {"minhash", minhash}, {"df", df}};
  j["format"] = 1;
  return j;
}

}  // namespace dsv3::curate

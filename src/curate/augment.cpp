#include "curate/augment.h"

#include <algorithm>
#include <cctype>
#include <filesystem>

#include "core/check.h"
#include "core/io.h"
#include "core/text_lines.h"

namespace dsv3::curate {

namespace {

// This project's own small table (see augment.h): common words with near-synonyms that keep a
// sentence grammatical in most contexts.
const std::pair<const char*, const char*> kSynonyms[] = {
    {"big", "large,huge,sizable"}, {"small", "little,tiny,minor"}, {"large", "big,sizable"},
    {"fast", "quick,rapid,swift"}, {"quick", "fast,rapid"}, {"slow", "sluggish,unhurried"},
    {"good", "fine,great,decent"}, {"bad", "poor,awful"}, {"happy", "glad,cheerful,pleased"},
    {"sad", "unhappy,sorrowful"}, {"important", "significant,crucial,essential"},
    {"difficult", "hard,tough,challenging"}, {"hard", "difficult,tough"}, {"easy", "simple,effortless"},
    {"simple", "easy,plain"}, {"begin", "start,commence"}, {"finish", "complete,end"}, {"make", "create,produce"},
    {"build", "construct,assemble"}, {"buy", "purchase,acquire"}, {"get", "obtain,receive"},
    {"choose", "select,pick"}, {"need", "require"}, {"idea", "notion,concept"}, {"problem", "issue,difficulty"}, {"method", "approach,technique"},
    {"result", "outcome"}, {"example", "instance,illustration"}, {"area", "region,zone"},
    {"house", "home,dwelling"}, {"car", "automobile,vehicle"}, {"child", "kid,youngster"},
    {"children", "kids,youngsters"}, {"often", "frequently,regularly"}, {"usually", "typically,generally"},
    {"very", "really,extremely"}, {"also", "additionally,too"}, {"maybe", "perhaps,possibly"},
    {"many", "numerous,several"}, {"smart", "clever,intelligent"}, {"strong", "powerful,sturdy"},
    {"old", "aged,ancient"}, {"new", "novel,fresh"}, {"beautiful", "lovely,pretty,attractive"},
    {"angry", "annoyed,furious"}, {"scared", "afraid,frightened"}, {"rich", "wealthy,affluent"},
    {"quiet", "silent,calm"}, {"loud", "noisy"}, {"correct", "right,accurate"}, {"wrong", "incorrect,mistaken"},
    {"enough", "sufficient,adequate"}, {"whole", "entire,complete"}, {"main", "primary,chief,principal"},
    {"clear", "evident,obvious"}, {"common", "frequent,widespread"}, {"different", "distinct,varied"},
    {"similar", "alike,comparable"}, {"tell", "inform,notify"},
    {"think", "believe,suppose"}, {"shout", "yell,cry"}, {"understand", "grasp,comprehend"},
    {"job", "work,occupation"}, {"trip", "journey,voyage"}, {"gift", "present"},
    {"street", "road,avenue"}, {"town", "village,community"}, {"mistake", "error,blunder"},
};

const char* const kSubordinators[] = {"when", "if", "because", "although", "while", "after",
                                      "before", "since", "unless", "once", "until", "whenever"};
// Sentence openings that are lower-cased when moved into the middle (others, e.g. names and
// "I", keep their capital).
const char* const kLowerable[] = {"the", "a", "an", "he", "she", "it", "we", "they", "you",
                                  "this", "that", "there", "my", "our", "his", "her", "their",
                                  "its", "these", "those", "some", "many", "most", "people"};

std::string lower(std::string s) {
  for (char& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

bool is_sub(const std::string& w) {
  return std::find_if(std::begin(kSubordinators), std::end(kSubordinators),
                      [&](const char* s) { return w == s; }) != std::end(kSubordinators);
}

std::string first_word(const std::string& s) {
  size_t e = 0;
  while (e < s.size() && std::isalpha(static_cast<unsigned char>(s[e]))) e++;
  return s.substr(0, e);
}

std::string capitalise(std::string s) {
  if (!s.empty()) s[0] = char(std::toupper(static_cast<unsigned char>(s[0])));
  return s;
}

std::string decapitalise(std::string s) {
  const std::string w = lower(first_word(s));
  if (std::find_if(std::begin(kLowerable), std::end(kLowerable), [&](const char* x) { return w == x; }) !=
          std::end(kLowerable) || is_sub(w))
    s[0] = char(std::tolower(static_cast<unsigned char>(s[0])));
  return s;
}

int words(const std::string& s) {
  int n = 0;
  bool in = false;
  for (char c : s) {
    const bool sp = std::isspace(static_cast<unsigned char>(c));
    n += !sp && !in;
    in = !sp;
  }
  return n;
}

}  // namespace

const std::vector<FieldSpec>& augment_fields() {
  using A = AugmentConfig;
  static const std::vector<FieldSpec> f = {
      field("input", &A::input, "JSONL (a text field) or text file, plain, .gz or .zst"),
      field("output", &A::output, "augmented JSONL to write"),
      field("rate", &A::rate, "share of sentences rewritten", in_range(0, 1)),
      field("ops", &A::ops, "rewrites to use: synonym, reorder (comma-separated)"),
      field("max_replacements", &A::max_replacements, "synonym: words replaced per sentence", in_range(1, 64)),
      field("synonyms", &A::synonyms, "synonym table (lines 'word: syn1, syn2') replacing the built-in one"),
      field("seed", &A::seed, "seed of the sentence and synonym choices", at_least(0)),
      field("text_key", &A::text_key, "JSONL field with the text"),
  };
  return f;
}

void validate(const AugmentConfig& c) {
  check_field_ranges(augment_fields(), &c, "augment: ");
  DSV3_CHECK(!c.input.empty() && !c.output.empty(), "--input and --output are required");
  const auto ops = split_list(c.ops);
  DSV3_CHECK(!ops.empty(), "--ops names no rewrite (synonym, reorder)");
  for (const auto& o : ops) DSV3_CHECK(o == "synonym" || o == "reorder", "--ops: unknown rewrite '", o, "' (synonym, reorder)");
}

SynonymTable builtin_synonyms() {
  SynonymTable t;
  for (const auto& [w, s] : kSynonyms) t[w] = split_list(s);
  return t;
}

SynonymTable read_synonyms(const std::string& path) {
  DSV3_CHECK(std::filesystem::is_regular_file(path), "synonym file ", path, " does not exist");
  const std::string text = read_file(path);
  SynonymTable t;
  for_each_line(text, [&](int64_t line, std::string_view l) {
    if (is_blank(l) || l[l.find_first_not_of(" \t")] == '#') return;
    const size_t colon = l.find(':');
    DSV3_CHECK(colon != std::string::npos, path, ":", line, ": expected 'word: synonym, synonym'");
    auto key = split_list(l.substr(0, colon));
    auto syn = split_list(l.substr(colon + 1));
    DSV3_CHECK(key.size() == 1 && !syn.empty(), path, ":", line, ": expected 'word: synonym, synonym'");
    t[lower(key[0])] = syn;
  });
  DSV3_CHECK(!t.empty(), "synonym file ", path, " has no entries");
  return t;
}

std::vector<std::string> split_sentences(const std::string& text) {
  std::vector<std::string> out;
  size_t start = 0;
  for (size_t i = 0; i < text.size(); i++) {
    const char c = text[i];
    if ((c == '.' || c == '!' || c == '?') && (i + 1 == text.size() || std::isspace(static_cast<unsigned char>(text[i + 1])))) {
      size_t e = i + 1;
      while (e < text.size() && std::isspace(static_cast<unsigned char>(text[e]))) e++;
      out.push_back(text.substr(start, e - start));
      start = e;
      i = e - 1;
    }
  }
  if (start < text.size()) out.push_back(text.substr(start));
  return out;
}

std::string replace_synonyms(const std::string& sentence, const SynonymTable& t, int max_words,
                             Rng& rng, int* replaced) {
  // candidate words: [start, end) of ASCII letter runs with a table entry
  std::vector<std::pair<size_t, size_t>> cand;
  for (size_t i = 0; i < sentence.size();) {
    if (!std::isalpha(static_cast<unsigned char>(sentence[i]))) {
      i++;
      continue;
    }
    size_t e = i;
    while (e < sentence.size() && std::isalpha(static_cast<unsigned char>(sentence[e]))) e++;
    if (t.count(lower(sentence.substr(i, e - i)))) cand.emplace_back(i, e);
    i = e;
  }
  *replaced = 0;
  if (cand.empty()) return "";
  for (size_t a = cand.size(); a > 1; a--) std::swap(cand[a - 1], cand[rng.below(a)]);
  cand.resize(std::min(cand.size(), size_t(max_words)));
  std::sort(cand.begin(), cand.end());
  std::string out;
  size_t at = 0;
  for (const auto& [b, e] : cand) {
    const std::string w = sentence.substr(b, e - b);
    const auto& syn = t.at(lower(w));
    std::string s = syn[rng.below(syn.size())];
    if (std::isupper(static_cast<unsigned char>(w[0]))) s = capitalise(s);
    out += sentence.substr(at, b - at) + s;
    at = e;
    ++*replaced;
  }
  return out + sentence.substr(at);
}

std::string reorder_clauses(const std::string& sentence) {
  size_t end = sentence.size();
  while (end > 0 && std::isspace(static_cast<unsigned char>(sentence[end - 1]))) end--;
  const std::string tail = sentence.substr(end);
  std::string body = sentence.substr(0, end);
  std::string punct;
  if (!body.empty() && (body.back() == '.' || body.back() == '!' || body.back() == '?')) {
    punct = body.substr(body.size() - 1);
    body.pop_back();
  }
  if (body.find_first_of(";:\"()") != std::string::npos) return "";
  const std::string w0 = lower(first_word(body));
  const size_t comma = body.find(", ");
  if (is_sub(w0) && comma != std::string::npos && body.find(", ", comma + 2) == std::string::npos) {
    // "When X, Y" -> "Y when X"
    const std::string sub = body.substr(0, comma), main = body.substr(comma + 2);
    if (words(main) < 2 || words(sub) < 2) return "";
    return capitalise(main) + " " + decapitalise(sub) + punct + tail;
  }
  if (comma != std::string::npos) return "";
  // "Y because X" -> "Because X, Y" (the first subordinator after at least two words)
  size_t pos = 0;
  int seen = 0;
  while ((pos = body.find(' ', pos)) != std::string::npos) {
    pos++;
    seen++;
    const std::string w = lower(first_word(body.substr(pos)));
    if (seen >= 2 && is_sub(w)) {
      const std::string main = body.substr(0, pos - 1), sub = body.substr(pos);
      if (words(sub) < 2) return "";
      return capitalise(sub) + ", " + decapitalise(main) + punct + tail;
    }
  }
  return "";
}

Augmenter::Augmenter(const AugmentConfig& c, SynonymTable table)
    : c_(c), table_(std::move(table)), rng_(uint64_t(c.seed)) {
  for (const auto& o : split_list(c.ops)) {
    synonym_ = synonym_ || o == "synonym";
    reorder_ = reorder_ || o == "reorder";
  }
}

std::string Augmenter::augment(const std::string& text) {
  stats_.documents++;
  std::string out;
  for (const std::string& s : split_sentences(text)) {
    stats_.sentences++;
    // 24-bit uniform against the rate: the same draws for the same seed and input
    if (!(double(rng_.uniform()) < c_.rate)) {
      out += s;
      continue;
    }
    stats_.chosen++;
    std::vector<int> order;
    if (synonym_) order.push_back(0);
    if (reorder_) order.push_back(1);
    if (order.size() == 2 && rng_.below(2)) std::swap(order[0], order[1]);
    std::string r;
    for (int op : order) {
      if (op == 0) {
        int n = 0;
        r = replace_synonyms(s, table_, c_.max_replacements, rng_, &n);
        if (!r.empty()) stats_.synonym_sentences++, stats_.words_replaced += n;
      } else {
        r = reorder_clauses(s);
        if (!r.empty()) stats_.reordered++;
      }
      if (!r.empty()) break;
    }
    if (r.empty()) stats_.unchanged++;
    out += r.empty() ? s : r;
  }
  return out;
}

}  // namespace dsv3::curate

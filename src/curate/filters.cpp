#include "curate/filters.h"

#include <xxhash.h>

#include <algorithm>
#include <cstring>
#include <string_view>
#include <vector>

#include "curate/text.h"

namespace dsv3::curate {

namespace {

// Occurrences of `needle` in `s`, non-overlapping (Python's str.count).
size_t count_sub(std::string_view s, std::string_view needle) {
  size_t n = 0, pos = 0;
  while ((pos = s.find(needle, pos)) != std::string_view::npos) {
    n++;
    pos += needle.size();
  }
  return n;
}

bool starts_with(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }
bool ends_with(std::string_view s, std::string_view p) {
  return s.size() >= p.size() && s.substr(s.size() - p.size()) == p;
}

// Python's str.lstrip() / rstrip() on whitespace.
std::string_view lstrip(std::string_view s) {
  const std::string_view t = trim_view(s);
  return s.substr(size_t(t.data() - s.data()));
}
std::string_view rstrip(std::string_view s) {
  const std::string_view t = trim_view(s);
  return t.empty() ? std::string_view() : s.substr(0, size_t(t.data() - s.data()) + t.size());
}

// An open-addressing set/counter of 64-bit keys, reused across documents by one thread. Keys
// are hashes of lines, paragraphs or n-grams (xxh3; collisions at 2^-64 do not matter here).
struct HashCounter {
  std::vector<uint64_t> keys;
  std::vector<uint32_t> counts;
  size_t mask = 0;
  void reset(size_t expected) {
    size_t cap = 16;
    while (cap < expected * 2) cap <<= 1;
    if (keys.size() < cap) {
      keys.resize(cap);
      counts.resize(cap);
    }
    mask = cap - 1;
    std::fill(keys.begin(), keys.begin() + cap, 0);
    std::fill(counts.begin(), counts.begin() + cap, 0);
  }
  // Adds one occurrence; returns the count after adding.
  uint32_t add(uint64_t h) {
    h |= 1;  // 0 marks an empty slot
    size_t i = (h ^ (h >> 29)) & mask;
    while (keys[i] && keys[i] != h) i = (i + 1) & mask;
    keys[i] = h;
    return ++counts[i];
  }
  uint32_t count(uint64_t h) const {
    h |= 1;
    size_t i = (h ^ (h >> 29)) & mask;
    while (keys[i] && keys[i] != h) i = (i + 1) & mask;
    return keys[i] ? counts[i] : 0;
  }
};

uint64_t hash_bytes(std::string_view s) { return XXH3_64bits(s.data(), s.size()); }

// datatrove's find_duplicates: (number of repeated elements, code points in them).
template <typename Range>
std::pair<size_t, size_t> find_duplicates(const Range& items, HashCounter& set) {
  set.reset(items.size());
  size_t dup = 0, dup_chars = 0;
  for (std::string_view x : items)
    if (set.add(hash_bytes(x)) > 1) {
      dup++;
      dup_chars += utf8_length(x);
    }
  return {dup, dup_chars};
}

struct Scratch {
  std::vector<std::string_view> parts;
  std::vector<uint64_t> prefix;  // rolling hashes of word prefixes
  std::vector<uint64_t> chars;   // prefix sums of word lengths in code points
  HashCounter set;
};
Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

// Polynomial hash of word sequences: H(i, n) = prefix[i+n] - prefix[i] * B^n (mod 2^64), where
// each word enters as its own xxh3 hash, so the n-gram "a b" differs from the word "a b".
constexpr uint64_t kBase = 0x9E3779B97F4A7C15ull;

}  // namespace

// ---------------------------------------------------------------------------------------------
const char* gopher_quality(const std::string& text, const GopherQualityConfig& c) {
  const auto& words = words_of(text);
  const size_t n_words = words.size();
  size_t n_non_symbol = 0, chars_non_symbol = 0, n_alpha = 0;
  for (const Word& w : words) {
    if (!w.symbol) {
      n_non_symbol++;
      chars_non_symbol += w.chars;
    }
    n_alpha += w.has_alpha;
  }
  if (c.min_doc_words && n_non_symbol < size_t(c.min_doc_words)) return "gopher_short_doc";
  if (c.max_doc_words && n_non_symbol > size_t(c.max_doc_words)) return "gopher_long_doc";
  if (n_words == 0 || n_non_symbol == 0) return "gopher_short_doc";  // datatrove divides by 0
  const double avg = double(chars_non_symbol) / double(n_non_symbol);
  if (c.min_avg_word_length && avg < c.min_avg_word_length) return "gopher_below_avg_threshold";
  if (c.max_avg_word_length && avg > c.max_avg_word_length) return "gopher_above_avg_threshold";
  if (c.max_symbol_word_ratio) {
    if (double(std::count(text.begin(), text.end(), '#')) / double(n_words) >
        c.max_symbol_word_ratio)
      return "gopher_too_many_hashes";
    if (double(count_sub(text, "...") + count_sub(text, "\u2026")) / double(n_words) >
        c.max_symbol_word_ratio)
      return "gopher_too_many_ellipsis";
  }
  if (c.max_bullet_lines_ratio || c.max_ellipsis_lines_ratio) {
    size_t lines = 0, bullets = 0, ellipsis = 0;
    std::string_view body(text);
    if (!body.empty() && body.back() == '\n') body.remove_suffix(1);  // splitlines()
    if (!body.empty() || !text.empty())
      for_each_line(body, [&](std::string_view line) {
        lines++;
        const std::string_view l = lstrip(line), r = rstrip(line);
        bullets += starts_with(l, "\u2022") || starts_with(l, "-");
        ellipsis += ends_with(r, "...") || ends_with(r, "\u2026");
      });
    if (lines && c.max_bullet_lines_ratio &&
        double(bullets) / double(lines) > c.max_bullet_lines_ratio)
      return "gopher_too_many_bullets";
    if (lines && c.max_ellipsis_lines_ratio &&
        double(ellipsis) / double(lines) > c.max_ellipsis_lines_ratio)
      return "gopher_too_many_end_ellipsis";
  }
  if (c.min_alpha_words_ratio && double(n_alpha) / double(n_words) < c.min_alpha_words_ratio)
    return "gopher_below_alpha_threshold";
  if (c.min_stop_words) {
    static const std::string_view kStop[] = {"the", "be", "to", "of", "and", "that", "have", "with"};
    unsigned seen = 0;
    for (const Word& w : words) {
      const std::string_view t(text.data() + w.begin, w.end - w.begin);
      if (t.size() > 4) continue;
      for (unsigned k = 0; k < 8; k++)
        if (t == kStop[k]) seen |= 1u << k;
    }
    if (__builtin_popcount(seen) < c.min_stop_words) return "gopher_enough_stop_words";
  }
  return nullptr;
}

// ---------------------------------------------------------------------------------------------
const char* gopher_repetition(const std::string& text, const GopherRepetitionConfig& c) {
  if (text.empty()) return "empty";
  Scratch& s = scratch();
  const double len = double(utf8_length(text));
  // paragraphs: re.split(r"\n{2,}", text.strip())
  {
    const std::string_view body = trim_view(text);
    s.parts.clear();
    size_t pos = 0;
    while (true) {
      const size_t nn = body.find("\n\n", pos);
      if (nn == std::string_view::npos) {
        s.parts.push_back(body.substr(pos));
        break;
      }
      s.parts.push_back(body.substr(pos, nn - pos));
      pos = nn;
      while (pos < body.size() && body[pos] == '\n') pos++;
    }
    const auto [dup, dup_chars] = find_duplicates(s.parts, s.set);
    if (c.dup_para_frac && double(dup) / double(s.parts.size()) > c.dup_para_frac)
      return "dup_para_frac";
    if (c.dup_para_char_frac && double(dup_chars) / len > c.dup_para_char_frac)
      return "dup_para_char_frac";
  }
  // lines: re.split("\n+", text)
  {
    const std::string_view body(text);
    s.parts.clear();
    size_t pos = 0;
    while (true) {
      const size_t nl = body.find('\n', pos);
      if (nl == std::string_view::npos) {
        s.parts.push_back(body.substr(pos));
        break;
      }
      s.parts.push_back(body.substr(pos, nl - pos));
      pos = nl;
      while (pos < body.size() && body[pos] == '\n') pos++;
    }
    const auto [dup, dup_chars] = find_duplicates(s.parts, s.set);
    if (c.dup_line_frac && double(dup) / double(s.parts.size()) > c.dup_line_frac)
      return "dup_line_frac";
    if (c.dup_line_char_frac && double(dup_chars) / len > c.dup_line_char_frac)
      return "dup_line_char_frac";
  }
  const std::vector<Word>& words = words_of(text);
  const size_t m = words.size();
  s.prefix.assign(m + 1, 0);
  s.chars.assign(m + 1, 0);
  for (size_t i = 0; i < m; i++) {
    const Word& w = words[i];
    s.prefix[i + 1] = s.prefix[i] * kBase + hash_bytes({text.data() + w.begin, w.end - w.begin});
    s.chars[i + 1] = s.chars[i] + w.chars;
  }
  uint64_t pow_n = 1;
  auto ngram = [&](size_t i, size_t n) { return s.prefix[i + n] - s.prefix[i] * pow_n; };
  // top n-grams: Counter(" ".join(...)).most_common(1): the most frequent n-gram, the first
  // seen among equals; its length (with the n-1 spaces) times its count over len(text).
  for (size_t k = 0; k < 3; k++) {
    const size_t n = k + 2;
    pow_n = 1;
    for (size_t q = 0; q < n; q++) pow_n *= kBase;
    if (m < n || !c.top_ngram_frac[k]) continue;
    s.set.reset(m - n + 1);
    uint32_t best = 0;
    for (size_t i = 0; i + n <= m; i++) best = std::max(best, s.set.add(ngram(i, n)));
    for (size_t i = 0; i + n <= m; i++) {
      if (s.set.count(ngram(i, n)) != best) continue;
      const double top_chars = double(s.chars[i + n] - s.chars[i] + (n - 1)) * best;
      if (top_chars / len > c.top_ngram_frac[k]) {
        static const char* names[] = {"top_2_gram", "top_3_gram", "top_4_gram"};
        return names[k];
      }
      break;
    }
  }
  // duplicated n-grams: datatrove's find_all_duplicate walks the words; a repeated n-gram adds
  // its characters and jumps n words ahead, so overlapping repeats are not counted twice.
  for (size_t k = 0; k < 6; k++) {
    const size_t n = k + 5;
    pow_n = 1;
    for (size_t q = 0; q < n; q++) pow_n *= kBase;
    if (!c.dup_ngram_frac[k] || m < n) continue;
    s.set.reset(m - n + 1);
    size_t repeated = 0, i = 0;
    while (i + n <= m) {
      if (s.set.add(ngram(i, n)) > 1) {
        repeated += s.chars[i + n] - s.chars[i];
        i += n;
      } else {
        i++;
      }
    }
    if (double(repeated) / len > c.dup_ngram_frac[k]) {
      static const char* names[] = {"duplicated_5_n_grams", "duplicated_6_n_grams",
                                    "duplicated_7_n_grams", "duplicated_8_n_grams",
                                    "duplicated_9_n_grams", "duplicated_10_n_grams"};
      return names[k];
    }
  }
  return nullptr;
}

// ---------------------------------------------------------------------------------------------
namespace {

// c4_utils / datatrove CITATION_REGEX: \[\d*]|\[edit]|\[citation needed]
std::string remove_citations(std::string_view line) {
  std::string out;
  out.reserve(line.size());
  size_t i = 0;
  while (i < line.size()) {
    if (line[i] == '[') {
      size_t j = i + 1;
      while (j < line.size() && line[j] >= '0' && line[j] <= '9') j++;
      if (j < line.size() && line[j] == ']') {
        i = j + 1;
        continue;
      }
      if (line.substr(i, 6) == "[edit]") {
        i += 6;
        continue;
      }
      if (line.substr(i, 17) == "[citation needed]") {
        i += 17;
        continue;
      }
    }
    out += line[i++];
  }
  return out;
}

bool contains_lower(const std::string& lower, const char* needle) {
  return lower.find(needle) != std::string::npos;
}

}  // namespace

const char* c4_filter(std::string& text, const C4Config& c, int* lines_removed) {
  static const char* kPolicy[] = {"terms of use", "privacy policy", "cookie policy",
                                  "uses cookies", "use of cookies", "use cookies"};
  std::string kept;
  kept.reserve(text.size());
  int sentences = 0, total = 0, kept_lines = 0;
  const char* page_rule = nullptr;
  std::string_view body(text);
  if (!body.empty() && body.back() == '\n') body.remove_suffix(1);  // splitlines()
  for_each_line(body, [&](std::string_view raw) {
    if (page_rule) return;
    total++;
    std::string_view line = trim_view(raw);
    // words = line.split(); any too long?
    size_t words = 0;
    bool too_long = false;
    {
      size_t i = 0;
      while (i < line.size()) {
        while (i < line.size()) {
          size_t j = i;
          if (!is_space(utf8_next(line, j))) break;
          i = j;
        }
        if (i >= line.size()) break;
        size_t chars = 0;
        while (i < line.size()) {
          size_t j = i;
          if (is_space(utf8_next(line, j))) break;
          i = j;
          chars++;
        }
        words++;
        if (c.max_word_length > 0 && chars > size_t(c.max_word_length)) too_long = true;
      }
    }
    if (too_long) return;
    std::string cleaned = c.remove_citations ? remove_citations(line) : std::string(line);
    if (c.terminal_punct) {
      const char last = cleaned.empty() ? 0 : cleaned.back();
      if (!(last == '.' || last == '?' || last == '!' || last == '"') ||
          ends_with(cleaned, "..."))
        return;
    }
    if (c.min_words_per_line > 0 && words < size_t(c.min_words_per_line)) return;
    const std::string lower = to_lower_ascii(cleaned);
    if (c.lorem_ipsum && contains_lower(lower, "lorem ipsum")) {
      page_rule = "lorem_ipsum";
      return;
    }
    if (c.javascript && contains_lower(lower, "javascript")) return;
    if (c.curly_bracket && cleaned.find('{') != std::string::npos) {
      page_rule = "curly_bracket";
      return;
    }
    if (c.policy)
      for (const char* p : kPolicy)
        if (contains_lower(lower, p)) return;
    sentences += count_sentences(cleaned);
    if (kept_lines++) kept += '\n';
    kept += cleaned;
  });
  if (lines_removed) *lines_removed = total - kept_lines;
  if (page_rule) return page_rule;
  if (c.min_sentences > 0 && sentences < c.min_sentences) return "too_few_sentences";
  if (c.drop_lines) text = std::string(trim_view(kept));
  return nullptr;
}

// ---------------------------------------------------------------------------------------------
const char* fineweb_filter(const std::string& text, const FineWebConfig& c) {
  Scratch& s = scratch();
  s.parts.clear();
  size_t newlines = 0;
  for_each_line(text, [&](std::string_view line) {
    if (!trim_view(line).empty()) s.parts.push_back(line);
  });
  newlines = size_t(std::count(text.begin(), text.end(), '\n'));
  if (s.parts.empty()) return "empty";
  const double n_lines = double(s.parts.size());
  size_t punct = 0, short_lines = 0;
  for (std::string_view line : s.parts) {
    // line.endswith(TERMINAL_PUNCTUATION): the last code point
    size_t k = line.size() - 1;
    while (k > 0 && (static_cast<unsigned char>(line[k]) & 0xC0) == 0x80) k--;
    size_t j = k;
    punct += is_terminal_punct(utf8_next(line, j));
    short_lines += utf8_length(line) <= size_t(c.short_line_length);
  }
  const double punct_ratio = double(punct) / n_lines;
  if (c.line_punct_thr && punct_ratio < c.line_punct_thr &&
      !(punct_ratio == 0 && c.line_punct_exclude_zero))
    return "line_punct_ratio";
  if (c.short_line_thr && double(short_lines) / n_lines > c.short_line_thr)
    return "short_line_ratio";
  if (c.char_dup_ratio) {
    const size_t dup_chars = find_duplicates(s.parts, s.set).second;
    const double denom = double(utf8_length(text) - newlines);
    if (denom > 0 && double(dup_chars) / denom > c.char_dup_ratio) return "char_dup_ratio";
  }
  if (c.new_line_ratio) {
    const size_t n_words = words_of(text).size();
    if (n_words == 0 || double(newlines) / double(n_words) > c.new_line_ratio) return "list_ratio";
  }
  return nullptr;
}

}  // namespace dsv3::curate

// Text primitives shared by the curation stages (D2-D7): UTF-8 decoding and repair, character
// classes with Python's meanings (the published filters are Python code, and their thresholds
// were tuned on Python's str.isalpha / str.split / len-in-code-points), and the word splitter.
//
// All functions take valid UTF-8 except utf8_valid / utf8_repair, which the reader runs first on
// every document, so the rest never sees a broken sequence.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace dsv3::curate {

// --- UTF-8 -------------------------------------------------------------------------------
bool utf8_valid(std::string_view s);
// Replaces every maximal invalid subsequence by U+FFFD (as Python's errors="replace" does);
// returns how many replacements were made.
size_t utf8_repair(std::string& s);
// Decodes the code point at s[i] (valid UTF-8) and advances i past it.
inline uint32_t utf8_next(std::string_view s, size_t& i) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data()) + i;
  const unsigned c = p[0];
  if (c < 0x80) {
    i += 1;
    return c;
  }
  if (c < 0xE0) {
    i += 2;
    return (c & 0x1F) << 6 | (p[1] & 0x3F);
  }
  if (c < 0xF0) {
    i += 3;
    return (c & 0x0F) << 12 | (p[1] & 0x3F) << 6 | (p[2] & 0x3F);
  }
  i += 4;
  return (c & 0x07) << 18 | (p[1] & 0x3F) << 12 | (p[2] & 0x3F) << 6 | (p[3] & 0x3F);
}
void utf8_append(std::string& out, uint32_t cp);
// Code points in s: Python's len(), which is what the published ratios divide by.
size_t utf8_length(std::string_view s);
inline bool is_ascii(std::string_view s) {
  for (unsigned char c : s)
    if (c >= 0x80) return false;
  return true;
}

// --- character classes (Python semantics) ---------------------------------------------------
bool is_alpha(uint32_t cp);   // str.isalpha: Unicode categories Lu Ll Lt Lm Lo
bool is_alnum(uint32_t cp);   // letters or Nd/Nl/No
bool is_space(uint32_t cp);   // str.split() separators
// datatrove's PUNCTUATION_SET (utils/text.py): ASCII punctuation, C0/C1 controls, a list of
// CJK and typographic marks, and TERMINAL_PUNCTUATION. "Symbol words" are made only of these.
bool is_punct(uint32_t cp);
// datatrove's TERMINAL_PUNCTUATION (159 sentence-final marks across scripts; FineWeb's
// line_punct rule).
bool is_terminal_punct(uint32_t cp);
// Lower-cases one code point (Unicode simple case mapping through utf8proc).
uint32_t to_lower(uint32_t cp);

// --- words ---------------------------------------------------------------------------------
// A word as byte offsets into the text plus the facts the filters ask about it.
struct Word {
  uint32_t begin, end;   // bytes [begin, end)
  uint32_t chars;        // code points
  bool symbol;           // every code point is_punct (datatrove: not a "non-symbol word")
  bool has_alpha;        // some code point is_alpha
};
// The Gopher/FineWeb word splitter. datatrove uses spaCy's English tokenizer; this reproduces
// its rules that matter for the filters, without the library: split on whitespace; peel
// leading and trailing punctuation off as separate tokens (a run of '.' stays one "..."), except
// the period of an abbreviation ("Mrs.", "U.S.", "e.g.", single letters); split contractions
// ("don't" -> do n't, "Hurst's" -> Hurst 's, "cannot" -> can not); split infixes: a hyphen between letters, "--"
// between words, em and en dashes between a letter or digit and a letter; contractions split
// as spaCy's exception lists do ('s always, n't after verbs, 'll 're 've 'd 'm after pronouns).
// bench/bench_curate.py measures how often the filter decisions still differ from datatrove's.
void split_words(std::string_view text, std::vector<Word>& out);
// The same without the ASCII fast path (every chunk decoded): the reference the tests compare
// the fast path with.
void split_words_general(std::string_view text, std::vector<Word>& out);
// split_words of `text`, remembered per thread for the last text seen (the filters that run one
// after another on an unchanged document split it once).
const std::vector<Word>& words_of(std::string_view text);

// Sentences in one line, for C4's "at least N sentences", as spaCy's sentencizer counts them
// (datatrove's C4QualityFilter uses it; C4 itself used NLTK punkt): over split_words tokens, a
// sentence ends after a one-character sentence-final mark (. ! ? and the other terminal marks)
// once a token that is not punctuation follows. "..." and abbreviations end nothing.
int count_sentences(std::string_view line);

// Calls f(line) for each line of text split on '\n' (no terminator included). Like Python's
// str.split("\n"): a trailing newline yields a final empty line.
template <typename F>
void for_each_line(std::string_view text, F&& f) {
  size_t pos = 0;
  while (true) {
    const size_t nl = text.find('\n', pos);
    if (nl == std::string_view::npos) {
      f(text.substr(pos));
      return;
    }
    f(text.substr(pos, nl - pos));
    pos = nl + 1;
  }
}

std::string_view trim_view(std::string_view s);  // strips Python-whitespace at both ends
std::string to_lower_ascii(std::string_view s);

// Text as the near-duplicate and relevance stages see it (datatrove's simplify_text):
// lower-cased, punctuation turned into spaces, accents stripped, each run of digits made "0",
// words separated by single spaces. Words are appended to `words` as [begin, end) offsets into
// `out`.
void simplify_words(std::string_view text, std::string& out,
                    std::vector<std::pair<uint32_t, uint32_t>>& words);

}  // namespace dsv3::curate

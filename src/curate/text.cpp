#include "curate/text.h"

#include <utf8proc.h>
#include <xxhash.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstring>

namespace dsv3::curate {

namespace {

// Length of the valid UTF-8 sequence at p (1..4), or 0 if the bytes there are not one
// (overlong forms, surrogates and code points above U+10FFFF are invalid, as in Python).
size_t valid_seq(const unsigned char* p, size_t left) {
  const unsigned c = p[0];
  if (c < 0x80) return 1;
  auto cont = [&](size_t k) { return k < left && (p[k] & 0xC0) == 0x80; };
  if (c >= 0xC2 && c <= 0xDF) return cont(1) ? 2 : 0;
  if (c >= 0xE0 && c <= 0xEF) {
    if (!cont(1) || !cont(2)) return 0;
    if (c == 0xE0 && p[1] < 0xA0) return 0;  // overlong
    if (c == 0xED && p[1] >= 0xA0) return 0;  // surrogate
    return 3;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    if (!cont(1) || !cont(2) || !cont(3)) return 0;
    if (c == 0xF0 && p[1] < 0x90) return 0;  // overlong
    if (c == 0xF4 && p[1] >= 0x90) return 0;  // > U+10FFFF
    return 4;
  }
  return 0;
}

// Non-ASCII members of datatrove's PUNCTUATION string (sorted; U+FF11 FULLWIDTH DIGIT ONE is
// really in their list and kept for fidelity).
constexpr uint32_t kPunctExtra[] = {
    0xab,   0xb4,   0xbb,   0x2013, 0x2014, 0x2019, 0x201c, 0x201d, 0x201e, 0x2026, 0x2236, 0x2501,
    0x25ba, 0x3001, 0x3002, 0x3008, 0x3009, 0x300a, 0x300b, 0x300c, 0x300d, 0x3010, 0x3011, 0xff01,
    0xff05, 0xff08, 0xff09, 0xff0c, 0xff0e, 0xff11, 0xff1a, 0xff1b, 0xff1f, 0xff5e};

// datatrove's TERMINAL_PUNCTUATION (sorted).
constexpr uint32_t kTerminal[] = {
    0x21,    0x2e,    0x3f,    0x589,   0x61d,   0x61e,   0x61f,   0x6d4,   0x700,   0x701,
    0x702,   0x7f9,   0x837,   0x839,   0x83d,   0x83e,   0x964,   0x965,   0x104a,  0x104b,
    0x1362,  0x1367,  0x1368,  0x166e,  0x1735,  0x1736,  0x17d4,  0x17d5,  0x17d6,  0x17d9,
    0x17da,  0x1803,  0x1809,  0x1944,  0x1945,  0x1aa8,  0x1aa9,  0x1aaa,  0x1aab,  0x1b5a,
    0x1b5b,  0x1b5e,  0x1b5f,  0x1b7d,  0x1b7e,  0x1c3b,  0x1c3c,  0x1c7e,  0x1c7f,  0x203c,
    0x203d,  0x2047,  0x2048,  0x2049,  0x2e2e,  0x2e3c,  0x2e53,  0x2e54,  0x3002,  0xa4ff,
    0xa60e,  0xa60f,  0xa6f3,  0xa6f7,  0xa876,  0xa877,  0xa8ce,  0xa8cf,  0xa92f,  0xa9c8,
    0xa9c9,  0xaa5d,  0xaa5e,  0xaa5f,  0xaaf0,  0xaaf1,  0xabeb,  0xfe52,  0xfe56,  0xfe57,
    0xff01,  0xff0e,  0xff1f,  0xff61,  0x10a56, 0x10a57, 0x10f55, 0x10f56, 0x10f57, 0x10f58,
    0x10f59, 0x10f86, 0x10f87, 0x10f88, 0x10f89, 0x11047, 0x11048, 0x110be, 0x110bf, 0x110c0,
    0x110c1, 0x11141, 0x11142, 0x11143, 0x111c5, 0x111c6, 0x111cd, 0x111de, 0x111df, 0x11238,
    0x11239, 0x1123b, 0x1123c, 0x112a9, 0x1144b, 0x1144c, 0x115c2, 0x115c3, 0x115c9, 0x115ca,
    0x115cb, 0x115cc, 0x115cd, 0x115ce, 0x115cf, 0x115d0, 0x115d1, 0x115d2, 0x115d3, 0x115d4,
    0x115d5, 0x115d6, 0x115d7, 0x11641, 0x11642, 0x1173c, 0x1173d, 0x1173e, 0x11944, 0x11946,
    0x11a42, 0x11a43, 0x11a9b, 0x11a9c, 0x11c41, 0x11c42, 0x11ef7, 0x11ef8, 0x11f43, 0x11f44,
    0x16a6e, 0x16a6f, 0x16af5, 0x16b37, 0x16b38, 0x16b44, 0x16e98, 0x1bc9f, 0x1da88};

template <size_t N>
bool in_sorted(const uint32_t (&table)[N], uint32_t cp) {
  return std::binary_search(table, table + N, cp);
}

// ASCII class bits, so the hot loops do one table load per byte.
enum : uint8_t { kSpace = 1, kPunct = 2, kAlpha = 4, kDigit = 8 };
struct AsciiTable {
  uint8_t c[128]{};
  constexpr AsciiTable() {
    for (int i = 0; i < 128; i++) {
      uint8_t b = 0;
      if (i == ' ' || (i >= 9 && i <= 13) || (i >= 0x1c && i <= 0x1f)) b |= kSpace;
      // datatrove's PUNCTUATION holds all ASCII punctuation and the controls except \t and \n.
      if ((i >= 33 && i <= 47) || (i >= 58 && i <= 64) || (i >= 91 && i <= 96) ||
          (i >= 123 && i <= 126) || (i < 32 && i != 9 && i != 10) || i == 127)
        b |= kPunct;
      if ((i >= 'a' && i <= 'z') || (i >= 'A' && i <= 'Z')) b |= kAlpha;
      if (i >= '0' && i <= '9') b |= kDigit;
      c[i] = b;
    }
  }
};
constexpr AsciiTable kAscii;

}  // namespace

bool utf8_valid(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    // 8 ASCII bytes at a time: the common case for English text and code.
    if (i + 8 <= n) {
      uint64_t w;
      std::memcpy(&w, p + i, 8);
      if (!(w & 0x8080808080808080ull)) {
        i += 8;
        continue;
      }
    }
    const size_t k = valid_seq(p + i, n - i);
    if (!k) return false;
    i += k;
  }
  return true;
}

size_t utf8_repair(std::string& s) {
  if (utf8_valid(s)) return 0;
  std::string out;
  out.reserve(s.size() + 16);
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0, fixes = 0;
  while (i < n) {
    const size_t k = valid_seq(p + i, n - i);
    if (k) {
      out.append(s, i, k);
      i += k;
      continue;
    }
    // One U+FFFD per maximal invalid prefix: a lead byte with its valid continuation bytes,
    // or a single stray byte (the W3C / Python "replace" convention).
    size_t skip = 1;
    const unsigned c = p[i];
    const size_t want = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 ? 2 : 1;
    while (skip < want && i + skip < n && (p[i + skip] & 0xC0) == 0x80) skip++;
    out += "\xEF\xBF\xBD";
    fixes++;
    i += skip;
  }
  s.swap(out);
  return fixes;
}

void utf8_append(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

size_t utf8_length(std::string_view s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

bool is_alpha(uint32_t cp) {
  if (cp < 128) return kAscii.c[cp] & kAlpha;
  switch (utf8proc_category(utf8proc_int32_t(cp))) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO:
      return true;
    default:
      return false;
  }
}

bool is_alnum(uint32_t cp) {
  if (cp < 128) return kAscii.c[cp] & (kAlpha | kDigit);
  if (is_alpha(cp)) return true;
  const auto cat = utf8proc_category(utf8proc_int32_t(cp));
  return cat == UTF8PROC_CATEGORY_ND || cat == UTF8PROC_CATEGORY_NL || cat == UTF8PROC_CATEGORY_NO;
}

bool is_space(uint32_t cp) {
  if (cp < 128) return kAscii.c[cp] & kSpace;
  return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
         cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

bool is_punct(uint32_t cp) {
  if (cp < 128) return kAscii.c[cp] & kPunct;
  if (cp < 160) return true;  // C1 controls are in datatrove's list
  return in_sorted(kPunctExtra, cp) || in_sorted(kTerminal, cp);
}

bool is_terminal_punct(uint32_t cp) {
  if (cp < 128) return cp == '!' || cp == '.' || cp == '?';
  return in_sorted(kTerminal, cp);
}

uint32_t to_lower(uint32_t cp) {
  if (cp < 128) return (cp >= 'A' && cp <= 'Z') ? cp + 32 : cp;
  return uint32_t(utf8proc_tolower(utf8proc_int32_t(cp)));
}

std::string_view trim_view(std::string_view s) {
  size_t b = 0, e = s.size();
  // Python's strip(): walk code points from both ends while they are whitespace.
  while (b < e) {
    size_t j = b;
    if (!is_space(utf8_next(s, j))) break;
    b = j;
  }
  while (e > b) {
    size_t k = e - 1;
    while (k > b && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) k--;
    size_t j = k;
    if (!is_space(utf8_next(s, j))) break;
    e = k;
  }
  return s.substr(b, e - b);
}

std::string to_lower_ascii(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (c >= 'A' && c <= 'Z') c = char(c + 32);
  return out;
}

namespace {

bool is_apostrophe(uint32_t cp) { return cp == '\'' || cp == 0x2019; }

// spaCy keeps the period of these (its tokenizer exceptions), so "Mrs." is one word.
bool is_abbreviation(const std::vector<uint32_t>& w) {
  // w ends with '.'; single letters ("c.") and letter-period runs ("U.S.", "e.g.", "I.B.M.")
  const size_t n = w.size();
  if (n > 8 && (n < 2 || w[n - 3] != '.')) return false;  // longer than any listed, no pattern
  if (n == 2 && is_alpha(w[0])) return true;
  if (n >= 4) {
    bool pattern = true;
    for (size_t i = 0; i < n && pattern; i++) pattern = (i % 2 == 0) ? is_alpha(w[i]) : w[i] == '.';
    if (pattern && n % 2 == 0) return true;
  }
  static const char* kList[] = {"Mr",   "Mrs",  "Ms",   "Dr",   "St",   "Jr",  "Sr",  "Prof",
                                "Mt",   "Jan",  "Feb",  "Mar",  "Apr",  "Jun", "Jul", "Aug",
                                "Sep",  "Sept", "Oct",  "Nov",  "Dec",  "vs",  "Inc", "Ltd",
                                "Co",   "Corp", "Gen",  "Gov",  "Rev",  "Col", "Capt", "Lt",
                                "Sgt",  "Messrs", "Mme", "Mlle", "Bros", "Ph.D", "a.m", "p.m"};
  if (n > 8) return false;
  for (const char* a : kList) {
    if (uint32_t(static_cast<unsigned char>(a[0])) != w[0]) continue;
    const size_t len = std::strlen(a);
    if (len + 1 != n) continue;
    bool eq = true;
    for (size_t i = 0; i < len && eq; i++) eq = w[i] == uint32_t(static_cast<unsigned char>(a[i]));
    if (eq) return true;
  }
  return false;
}

// Whether spaCy splits a token off at this code point at the edge of a word: punctuation (any
// of datatrove's set), quotes and brackets (Pi Pf Ps Pe), currency (Sc), other symbols (So) and
// a few Po marks; unlike datatrove's set this includes the left single quote.
bool peelable(uint32_t cp) {
  if (cp < 128 || is_punct(cp)) return is_punct(cp);
  switch (utf8proc_category(utf8proc_int32_t(cp))) {
    case UTF8PROC_CATEGORY_PI: case UTF8PROC_CATEGORY_PF: case UTF8PROC_CATEGORY_PS:
    case UTF8PROC_CATEGORY_PE: case UTF8PROC_CATEGORY_SC: case UTF8PROC_CATEGORY_SO:
      return true;
    default:
      return cp == 0xa7 || cp == 0xbf || cp == 0xa1 || cp == 0xb7;  // § ¿ ¡ ·
  }
}

// spaCy splits 's from any word, but n't, 'll, 're, 've, 'd and 'm only through its exception
// lists, which hold verbs (n't) and pronouns (the rest): "don't" -> do n't, "Dinah'll" stays.
bool stem_is(const uint32_t* w, size_t m, const char* const* list, size_t count) {
  for (size_t i = 0; i < count; i++) {
    const char* e = list[i];
    size_t k = 0;
    while (k < m && e[k] && to_lower(w[k]) == uint32_t(static_cast<unsigned char>(e[k]))) k++;
    if (k == m && !e[k]) return true;
  }
  return false;
}

// Code points of the contraction suffix spaCy splits off w[0, n) (0 if none).
size_t contraction_suffix(const uint32_t* w, size_t n) {
  static const char* const kNeg[] = {"do", "does", "did", "ca", "could", "would", "should", "wo",
                                     "is", "are", "was", "were", "have", "has", "had", "must",
                                     "might", "need", "ai", "sha", "dare", "ought", "may"};
  static const char* const kPron[] = {"i", "you", "he", "she", "it", "we", "they", "that",
                                      "there", "who", "what", "where", "when", "why", "how",
                                      "here", "this", "these", "those", "let"};
  auto low = [&](size_t k) { return to_lower(w[k]); };
  if (n >= 4 && low(n - 1) == 't' && is_apostrophe(w[n - 2]) && low(n - 3) == 'n' &&
      stem_is(w, n - 3, kNeg, sizeof kNeg / sizeof *kNeg))
    return 3;
  if (n >= 3 && is_apostrophe(w[n - 2]) && low(n - 1) == 's') return 2;
  if (n >= 3 && is_apostrophe(w[n - 2]) && (low(n - 1) == 'd' || low(n - 1) == 'm') &&
      stem_is(w, n - 2, kPron, sizeof kPron / sizeof *kPron))
    return 2;
  if (n >= 4 && is_apostrophe(w[n - 3]) &&
      ((low(n - 2) == 'r' && low(n - 1) == 'e') || (low(n - 2) == 'v' && low(n - 1) == 'e') ||
       (low(n - 2) == 'l' && low(n - 1) == 'l')) &&
      stem_is(w, n - 3, kPron, sizeof kPron / sizeof *kPron))
    return 3;
  return 0;
}

}  // namespace

namespace {

bool is_abbreviation_ascii(std::string_view w) {
  thread_local std::vector<uint32_t> cps;
  if (w.size() > 8 && w[w.size() - 3] != '.') return false;
  cps.assign(w.begin(), w.end());
  return is_abbreviation(cps);
}

// The same rules as the general path below, on a chunk of printable ASCII (no spaces): byte
// offsets are code point offsets, and no code point needs decoding or a Unicode table.
void split_ascii_chunk(std::string_view t, uint32_t b, uint32_t e, std::vector<Word>& out) {
  auto cls = [&](uint32_t k) { return kAscii.c[static_cast<unsigned char>(t[k])]; };
  auto emit = [&](uint32_t x, uint32_t y) {
    if (x >= y) return;
    Word w{x, y, y - x, true, false};
    for (uint32_t k = x; k < y; k++) {
      const uint8_t c = cls(k);
      if (!(c & kPunct)) w.symbol = false;
      if (c & kAlpha) w.has_alpha = true;
    }
    out.push_back(w);
  };
  uint32_t a = b, z = e;
  while (a < z && (cls(a) & kPunct) && t[a] != '-' && t[a] != '~') {
    uint32_t k = a + 1;
    if (t[a] == '.')
      while (k < z && t[k] == '.') k++;
    if (k == z) break;
    emit(a, k);
    a = k;
  }
  thread_local std::vector<std::array<uint32_t, 2>> suf;
  suf.resize(e - b + 2);
  int ns = 0;
  while (z > a + 1 && (cls(z - 1) & kPunct) && t[z - 1] != '-') {
    uint32_t k = z - 1;
    if (t[k] == '.') {
      if (k > a && t[k - 1] != '.' && is_abbreviation_ascii(t.substr(a, z - a))) break;
      while (k > a && t[k - 1] == '.') k--;
      if (k == a) break;
    }
    suf[ns][0] = k, suf[ns][1] = z, ns++;
    z = k;
  }
  auto lower = [&](uint32_t k) { return char(t[k] | 0x20); };
  if (z == a + 6 && lower(a) == 'c' && lower(a + 1) == 'a' && lower(a + 2) == 'n' &&
      lower(a + 3) == 'n' && lower(a + 4) == 'o' && lower(a + 5) == 't') {
    suf[ns][0] = a + 3, suf[ns][1] = z, ns++;
    z = a + 3;
  }
  if (z >= a + 3 && (t[z - 2] == '\'' || t[z - 3] == '\'')) {
    thread_local std::vector<uint32_t> w;
    w.assign(t.begin() + a, t.begin() + z);
    if (const size_t len = contraction_suffix(w.data(), w.size())) {
      suf[ns][0] = uint32_t(z - len), suf[ns][1] = z, ns++;
      z -= uint32_t(len);
    }
  }
  uint32_t start = a;
  for (uint32_t k = a + 1; k + 1 < z; k++) {
    if (t[k] != '-') continue;
    if ((cls(k - 1) & kAlpha) && (cls(k + 1) & kAlpha)) {
      emit(start, k);
      emit(k, k + 1);
      start = k + 1;
    } else if (t[k + 1] == '-' && k + 2 < z && (cls(k - 1) & (kAlpha | kDigit)) &&
               (cls(k + 2) & (kAlpha | kDigit))) {
      emit(start, k);
      emit(k, k + 2);
      start = k + 2;
      k++;
    }
  }
  emit(start, z);
  for (int q = ns - 1; q >= 0; q--) emit(suf[q][0], suf[q][1]);
}

void split_words_impl(std::string_view text, std::vector<Word>& out, bool fast) {
  out.clear();
  const size_t n = text.size();
  size_t i = 0;
  thread_local std::vector<uint32_t> cps, at;  // code points of one chunk and their offsets
  thread_local std::vector<std::pair<size_t, size_t>> suffix;
  thread_local std::vector<uint32_t> core;
  while (i < n) {
    // skip whitespace
    while (i < n) {
      const unsigned char c = static_cast<unsigned char>(text[i]);
      if (c < 128) {
        if (!(kAscii.c[c] & kSpace)) break;
        i++;
      } else {
        size_t j = i;
        if (!is_space(utf8_next(text, j))) break;
        i = j;
      }
    }
    if (i >= n) break;
    if (fast) {  // most chunks are plain ASCII
      size_t j = i;
      while (j < n && static_cast<unsigned char>(text[j]) < 128 &&
             !(kAscii.c[static_cast<unsigned char>(text[j])] & kSpace))
        j++;
      if (j == n || static_cast<unsigned char>(text[j]) < 128) {
        split_ascii_chunk(text, uint32_t(i), uint32_t(j), out);
        i = j;
        continue;
      }
    }
    // one chunk: a maximal run of non-space code points
    cps.clear();
    at.clear();
    while (i < n) {
      const unsigned char c = static_cast<unsigned char>(text[i]);
      uint32_t cp;
      size_t j = i;
      if (c < 128) {
        if (kAscii.c[c] & kSpace) break;
        cp = c;
        j++;
      } else {
        cp = utf8_next(text, j);
        if (is_space(cp)) break;
      }
      cps.push_back(cp);
      at.push_back(uint32_t(i));
      i = j;
    }
    const size_t m = cps.size();
    at.push_back(uint32_t(i));
    auto emit = [&](size_t a, size_t b) {  // code points [a, b) as one token
      if (a >= b) return;
      Word w{at[a], at[b], uint32_t(b - a), true, false};
      for (size_t k = a; k < b; k++) {
        if (!is_punct(cps[k])) w.symbol = false;
        if (is_alpha(cps[k])) w.has_alpha = true;
      }
      out.push_back(w);
    };
    // prefix punctuation, one token per mark (a run of '.' is one token)
    size_t a = 0, b = m;
    // ('-' and '~' are not prefixes or suffixes for spaCy: "-5", "--hello", "him:--" stay whole)
    while (a < b && peelable(cps[a]) && cps[a] != '-' && cps[a] != '~') {
      size_t k = a + 1;
      if (cps[a] == '.')
        while (k < b && cps[k] == '.') k++;
      if (k == b) break;  // the chunk is all punctuation: one token below
      emit(a, k);
      a = k;
    }
    // suffix punctuation, unless the period belongs to an abbreviation ("Mrs.", "U.S.")
    suffix.clear();
    while (b > a + 1 && peelable(cps[b - 1]) && cps[b - 1] != '-') {
      size_t k = b - 1;
      if (cps[k] == '.') {
        core.assign(cps.begin() + ptrdiff_t(a), cps.begin() + ptrdiff_t(b));
        if (k > a && cps[k - 1] != '.' && is_abbreviation(core)) break;
        while (k > a && cps[k - 1] == '.') k--;
        if (k == a) break;
      }
      suffix.emplace_back(k, b);
      b = k;
    }
    // contractions: "n't" and 's 're 've 'll 'd 'm become their own tokens; "cannot" is two
    if (b == a + 6) {
      static const char kCannot[] = "cannot";
      bool eq = true;
      for (size_t k = 0; k < 6 && eq; k++) eq = to_lower(cps[a + k]) == uint32_t(kCannot[k]);
      if (eq) {
        suffix.emplace_back(a + 3, b);
        b = a + 3;
      }
    }
    if (const size_t len = b > a ? contraction_suffix(&cps[a], b - a) : 0) {
      suffix.emplace_back(b - len, b);
      b -= len;
    }
    // infixes: letter-letter hyphens, "--" between word characters, em and en dashes
    size_t start = a;
    for (size_t k = a + 1; k + 1 < b; k++) {
      const uint32_t c = cps[k];
      if (c == '-' && is_alpha(cps[k - 1]) && is_alpha(cps[k + 1])) {
        emit(start, k);
        emit(k, k + 1);
        start = k + 1;
      } else if (c == '-' && cps[k + 1] == '-' && k + 2 < b && is_alnum(cps[k - 1]) &&
                 is_alnum(cps[k + 2])) {
        emit(start, k);
        emit(k, k + 2);
        start = k + 2;
        k++;
      } else if ((c == 0x2014 || c == 0x2013) && k > start && is_alnum(cps[k - 1]) &&
                 is_alpha(cps[k + 1])) {
        emit(start, k);
        emit(k, k + 1);
        start = k + 1;
      }
    }
    emit(start, b);
    for (auto it = suffix.rbegin(); it != suffix.rend(); ++it) emit(it->first, it->second);
  }
}

}  // namespace

void split_words(std::string_view text, std::vector<Word>& out) { split_words_impl(text, out, true); }
void split_words_general(std::string_view text, std::vector<Word>& out) {
  split_words_impl(text, out, false);
}

const std::vector<Word>& words_of(std::string_view text) {
  // Gopher quality, Gopher repetition and FineWeb all split the same text; one split serves
  // all three unless a stage in between changed the text (the hash says so).
  struct Cache {
    const char* data = nullptr;
    size_t size = 0;
    uint64_t hash = 0;
    std::vector<Word> words;
  };
  thread_local Cache c;
  const uint64_t h = XXH3_64bits(text.data(), text.size());
  if (c.data != text.data() || c.size != text.size() || c.hash != h) {
    split_words(text, c.words);
    c.data = text.data();
    c.size = text.size();
    c.hash = h;
  }
  return c.words;
}

int count_sentences(std::string_view line) {
  // spaCy's sentencizer, which datatrove's C4 filter uses: a sentence ends after a token that
  // is a sentence-final mark, once a token that is not punctuation follows.
  thread_local std::vector<Word> words;
  split_words(line, words);
  if (words.empty()) return 0;
  int count = 1;
  bool ended = false;
  for (const Word& w : words) {
    if (ended && !w.symbol) {
      count++;
      ended = false;
    }
    if (w.chars == 1) {
      size_t k = w.begin;
      if (is_terminal_punct(utf8_next(line, k))) ended = true;
    }
  }
  return count;
}

void simplify_words(std::string_view text, std::string& out,
                    std::vector<std::pair<uint32_t, uint32_t>>& words) {
  out.clear();
  words.clear();
  out.reserve(text.size());
  const size_t n = text.size();
  size_t i = 0;
  uint32_t word_start = 0;
  bool in_word = false, in_number = false;
  auto end_word = [&] {
    if (in_word) words.emplace_back(word_start, uint32_t(out.size()));
    in_word = false;
    in_number = false;
  };
  auto begin_word = [&] {
    if (!in_word) {
      if (!out.empty()) out += ' ';
      word_start = uint32_t(out.size());
      in_word = true;
    }
  };
  while (i < n) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c < 128) {
      i++;
      const uint8_t cls = kAscii.c[c];
      if (cls & kAlpha) {
        begin_word();
        in_number = false;
        out += char(c | 0x20);
      } else if (cls & kDigit) {
        begin_word();
        if (!in_number) out += '0';  // datatrove norm_numbers: \d+ -> "0"
        in_number = true;
      } else if (in_number && (c == '.' || c == ',') && i < n && (kAscii.c[static_cast<unsigned char>(text[i])] & kDigit)) {
        // "3.5" and "1,000" are one number, as in datatrove's NUMBERS_PATTERN
      } else {
        end_word();  // punctuation (apostrophes too: "don't" -> "don t") and whitespace
      }
      continue;
    }
    const uint32_t cp = utf8_next(text, i);
    if (is_space(cp) || is_punct(cp)) {
      end_word();
      continue;
    }
    // Lower-case, decompose and drop combining marks (NFD + strip Mn), as simplify_text does.
    utf8proc_int32_t buf[8];
    utf8proc_ssize_t k = utf8proc_decompose_char(
        utf8proc_int32_t(cp), buf, 8,
        utf8proc_option_t(UTF8PROC_DECOMPOSE | UTF8PROC_CASEFOLD | UTF8PROC_STRIPMARK), nullptr);
    if (k <= 0) continue;
    for (utf8proc_ssize_t q = 0; q < k && q < 8; q++) {
      if (utf8proc_category(buf[q]) == UTF8PROC_CATEGORY_MN) continue;
      begin_word();
      in_number = false;
      utf8_append(out, uint32_t(buf[q]));
    }
  }
  end_word();
}

}  // namespace dsv3::curate

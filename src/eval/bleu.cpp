#include "eval/bleu.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "core/check.h"

namespace dsv3::eval {

namespace {

// Python's str.isspace() for the code point starting at s[i]; *len gets its UTF-8 length.
bool py_space_at(std::string_view s, size_t i, size_t* len) {
  const unsigned char c = s[i];
  *len = 1;
  if (c < 0x80) return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f);
  uint32_t cp = 0;
  if ((c & 0xE0) == 0xC0 && i + 1 < s.size()) {
    cp = ((c & 0x1Fu) << 6) | (s[i + 1] & 0x3Fu);
    *len = 2;
  } else if ((c & 0xF0) == 0xE0 && i + 2 < s.size()) {
    cp = ((c & 0x0Fu) << 12) | ((s[i + 1] & 0x3Fu) << 6) | (s[i + 2] & 0x3Fu);
    *len = 3;
  } else {
    return false;
  }
  return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
         cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

// Python's str.split() with no argument: runs of whitespace separate, none at the ends.
std::vector<std::string_view> py_split(std::string_view s) {
  std::vector<std::string_view> out;
  size_t start = 0, i = 0, len = 0;
  bool in_word = false;
  while (i < s.size()) {
    if (py_space_at(s, i, &len)) {
      if (in_word) out.push_back(s.substr(start, i - start));
      in_word = false;
      i += len;
    } else {
      if (!in_word) start = i;
      in_word = true;
      i++;
    }
  }
  if (in_word) out.push_back(s.substr(start));
  return out;
}

std::string_view py_rstrip(std::string_view s) {
  // trailing whitespace code points (ASCII ones, and the multi-byte ones by their last bytes)
  while (!s.empty()) {
    size_t back = 1;
    while (back < 3 && back < s.size() && (s[s.size() - back] & 0xC0) == 0x80) back++;
    size_t len = 0;
    if (py_space_at(s, s.size() - back, &len) && len == back) s.remove_suffix(back);
    else if (back > 1 && py_space_at(s, s.size() - 1, &len) && len == 1) s.remove_suffix(1);
    else break;
  }
  return s;
}

std::string replace_all(std::string_view s, std::string_view a, std::string_view b) {
  std::string out;
  size_t pos = 0;
  for (size_t hit; (hit = s.find(a, pos)) != std::string_view::npos; pos = hit + a.size())
    out.append(s.substr(pos, hit - pos)).append(b);
  out.append(s.substr(pos));
  return out;
}

bool digit(char c) { return c >= '0' && c <= '9'; }
// [\{-\~\[-\` -\&\(-\+\:-\@\/]: the ASCII punctuation and symbols 13a splits off
bool punct13a(char c) {
  const unsigned char u = c;
  return (u >= '{' && u <= '~') || (u >= '[' && u <= '`') || (u >= ' ' && u <= '&') ||
         (u >= '(' && u <= '+') || (u >= ':' && u <= '@') || u == '/';
}

// re.sub of a two-character pattern (a)(b) -> repl(a, b), non-overlapping, left to right, as
// Python's re does (after a match the scan resumes behind it).
template <typename A, typename B, typename R>
std::string sub_pair(const std::string& s, A first, B second, R repl) {
  std::string out;
  out.reserve(s.size() + 16);
  size_t i = 0;
  while (i < s.size()) {
    if (i + 1 < s.size() && first(s[i]) && second(s[i + 1])) {
      repl(out, s[i], s[i + 1]);
      i += 2;
    } else {
      out += s[i++];
    }
  }
  return out;
}

}  // namespace

std::string tokenize_13a(std::string_view line_in) {
  std::string line = replace_all(py_rstrip(line_in), "<skipped>", "");
  line = replace_all(line, "-\n", "");
  line = replace_all(line, "\n", " ");
  if (line.find('&') != std::string::npos) {
    line = replace_all(line, "&quot;", "\"");
    line = replace_all(line, "&amp;", "&");
    line = replace_all(line, "&lt;", "<");
    line = replace_all(line, "&gt;", ">");
  }
  std::string s = " " + line + " ";
  std::string t;  // ([punct]) -> " \1 "
  t.reserve(s.size() * 2);
  for (char c : s) {
    if (punct13a(c)) t.append(1, ' ').append(1, c).append(1, ' ');
    else t += c;
  }
  auto is_pc = [](char c) { return c == '.' || c == ','; };
  // ([^0-9])([\.,]) -> "\1 \2 "; a non-digit is one code point in Python: as UTF-8 bytes, the
  // match of its last byte gives the same text
  t = sub_pair(t, [](char c) { return !digit(c); }, is_pc,
               [](std::string& o, char a, char b) { o.append(1, a).append(1, ' ').append(1, b).append(1, ' '); });
  // ([\.,])([^0-9]) -> " \1 \2" (a multi-byte code point's first byte moves with the rest)
  t = sub_pair(t, is_pc, [](char c) { return !digit(c); },
               [](std::string& o, char a, char b) { o.append(1, ' ').append(1, a).append(1, ' ').append(1, b); });
  // ([0-9])(-) -> "\1 \2 "
  t = sub_pair(t, digit, [](char c) { return c == '-'; },
               [](std::string& o, char a, char b) { o.append(1, a).append(1, ' ').append(1, b).append(1, ' '); });
  std::string out;
  for (std::string_view w : py_split(t)) {
    if (!out.empty()) out += ' ';
    out.append(w);
  }
  return out;
}

BleuStats& BleuStats::operator+=(const BleuStats& o) {
  sys_len += o.sys_len, ref_len += o.ref_len;
  for (int n = 0; n < 4; n++) correct[n] += o.correct[n], total[n] += o.total[n];
  return *this;
}

namespace {
using Ngrams = std::map<std::vector<std::string_view>, int64_t>;
Ngrams ngrams(const std::vector<std::string_view>& w) {
  Ngrams out;
  for (size_t n = 1; n <= 4; n++)
    for (size_t i = 0; i + n <= w.size(); i++)
      out[std::vector<std::string_view>(w.begin() + i, w.begin() + i + n)]++;
  return out;
}
}  // namespace

BleuStats bleu_stats(std::string_view hypothesis, const std::vector<std::string>& references) {
  DSV3_CHECK(!references.empty(), "BLEU needs at least one reference");
  const std::string hyp = tokenize_13a(hypothesis);
  std::vector<std::string> refs;
  for (const auto& r : references) refs.push_back(tokenize_13a(r));
  const auto hw = py_split(hyp);
  Ngrams ref_max;
  std::vector<int64_t> ref_lens;
  for (const auto& r : refs) {
    const auto rw = py_split(r);
    ref_lens.push_back(int64_t(rw.size()));
    for (const auto& [g, c] : ngrams(rw)) ref_max[g] = std::max(ref_max[g], c);
  }
  BleuStats s;
  s.sys_len = int64_t(hw.size());
  int64_t best_diff = -1;
  for (int64_t len : ref_lens) {
    const int64_t diff = std::llabs(s.sys_len - len);
    if (best_diff < 0 || diff < best_diff) best_diff = diff, s.ref_len = len;
    else if (diff == best_diff && len < s.ref_len) s.ref_len = len;
  }
  for (const auto& [g, c] : ngrams(hw)) {
    const size_t n = g.size() - 1;
    s.total[n] += c;
    if (auto it = ref_max.find(g); it != ref_max.end()) s.correct[n] += std::min(c, it->second);
  }
  return s;
}

BleuScore bleu_from_stats(const BleuStats& s) {
  BleuScore r;
  r.sys_len = s.sys_len, r.ref_len = s.ref_len;
  r.brevity_penalty = 1.0;
  if (s.sys_len < s.ref_len)
    r.brevity_penalty = s.sys_len > 0 ? std::exp(1.0 - double(s.ref_len) / double(s.sys_len)) : 0.0;
  if (std::all_of(s.correct.begin(), s.correct.end(), [](int64_t c) { return c == 0; })) return r;
  double smooth = 1.0;
  for (int n = 0; n < 4; n++) {
    if (s.total[n] == 0) break;
    if (s.correct[n] == 0) {
      smooth *= 2;
      r.precisions[n] = 100.0 / (smooth * double(s.total[n]));
    } else {
      r.precisions[n] = 100.0 * double(s.correct[n]) / double(s.total[n]);
    }
  }
  double logs = 0;
  for (double p : r.precisions) logs += p > 0 ? std::log(p) : -9999999999.0;
  r.score = r.brevity_penalty * std::exp(logs / 4);
  return r;
}

}  // namespace dsv3::eval

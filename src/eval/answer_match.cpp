#include "eval/answer_match.h"

#include <cctype>
#include <vector>

namespace dsv3::eval {

namespace {

std::string_view after_marker(std::string_view t) {
  const size_t m = t.rfind("#### ");
  return m == std::string_view::npos ? t : t.substr(m + 5);
}

bool ws(char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

// "12.500" -> "12.5", "007" -> "7", "-0.0" -> "0", "3." -> "3"
std::string canonical(std::string digits) {
  bool neg = !digits.empty() && digits[0] == '-';
  if (neg) digits.erase(0, 1);
  std::string ip = digits, fp;
  if (const size_t dot = digits.find('.'); dot != std::string::npos)
    ip = digits.substr(0, dot), fp = digits.substr(dot + 1);
  while (!fp.empty() && fp.back() == '0') fp.pop_back();
  size_t z = 0;
  while (z + 1 < ip.size() && ip[z] == '0') z++;
  ip = ip.substr(z);
  if (ip.empty()) ip = "0";
  std::string out = ip + (fp.empty() ? "" : "." + fp);
  if (out == "0") neg = false;
  return (neg ? "-" : "") + out;
}

}  // namespace

std::string normalize_answer(std::string_view text) {
  std::string s;
  for (char c : after_marker(text))
    if (c != ',' && c != '$') s += c;
  size_t a = 0, b = s.size();
  while (a < b && ws(s[a])) a++;
  while (b > a && ws(s[b - 1])) b--;
  s = s.substr(a, b - a);
  if (!s.empty() && s.back() == '.') s.pop_back();
  std::string out;
  bool space = false;
  for (char c : s) {
    if (ws(c)) {
      space = true;
      continue;
    }
    if (space && !out.empty()) out += ' ';
    space = false;
    out += char(std::tolower(static_cast<unsigned char>(c)));
  }
  return out;
}

bool exact_match(std::string_view generated, std::string_view reference) {
  return normalize_answer(generated) == normalize_answer(reference);
}

std::optional<std::string> extract_number(std::string_view text) {
  const std::string_view t = after_marker(text);
  // every maximal run of [-]digits with ',' separators and one '.', '$' skipped
  std::vector<std::string> found;
  for (size_t i = 0; i < t.size(); i++) {
    if (!std::isdigit(static_cast<unsigned char>(t[i]))) continue;
    std::string num;
    size_t k = i;
    while (k > 0 && t[k - 1] == '$') k--;
    if (k > 0 && t[k - 1] == '-') num = "-";
    bool dot = false;
    size_t j = i;
    for (; j < t.size(); j++) {
      const char c = t[j];
      if (std::isdigit(static_cast<unsigned char>(c))) num += c;
      else if (c == ',' && j + 1 < t.size() && std::isdigit(static_cast<unsigned char>(t[j + 1]))) continue;
      else if (c == '.' && !dot && j + 1 < t.size() && std::isdigit(static_cast<unsigned char>(t[j + 1]))) dot = true, num += c;
      else break;
    }
    found.push_back(canonical(num));
    i = j;
  }
  if (found.empty()) return std::nullopt;
  return found.back();
}

std::string cut_at_stop(std::string_view text, std::string_view stop) {
  if (stop.empty()) return std::string(text);
  const size_t p = text.find(stop);
  return std::string(p == std::string_view::npos ? text : text.substr(0, p));
}

}  // namespace dsv3::eval

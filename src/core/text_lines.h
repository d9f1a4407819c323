// Small text helpers shared by the readers of list flags and line-oriented files.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace dsv3 {

// "a, b,,c " -> {"a", "b", "c"}: items split at `sep`, spaces and tabs trimmed (and a
// trailing '\r'), empties dropped.
inline std::vector<std::string> split_list(std::string_view s, char sep = ',') {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos <= s.size()) {
    size_t c = s.find(sep, pos);
    if (c == std::string_view::npos) c = s.size();
    std::string_view item = s.substr(pos, c - pos);
    while (!item.empty() && (item.front() == ' ' || item.front() == '\t')) item.remove_prefix(1);
    while (!item.empty() && (item.back() == ' ' || item.back() == '\t' || item.back() == '\r')) item.remove_suffix(1);
    if (!item.empty()) out.emplace_back(item);
    pos = c + 1;
  }
  return out;
}

// Calls f(line_number (1-based), line) for every line of text, without its '\n'.
template <typename F>
void for_each_line(std::string_view text, F&& f) {
  int64_t line = 0;
  for (size_t pos = 0; pos < text.size();) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    f(++line, text.substr(pos, end - pos));
    pos = end + 1;
  }
}

// Whether a line holds only spaces, tabs and '\r'.
inline bool is_blank(std::string_view l) { return l.find_first_not_of(" \t\r") == std::string_view::npos; }

}  // namespace dsv3

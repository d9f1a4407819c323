// Errors and checks. Every user-facing failure is a dsv3::Error with a message that names the
// problem; the CLI prints it and exits non-zero. Internal invariants use the same macro.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>

namespace dsv3 {

// Text quoted from a file, made safe to print: control bytes (NUL included, which would end the
// message early), DEL and bytes that are not UTF-8 become \xNN (\n, \r, \t as such); longer than
// `max_bytes`, it is cut and says how long it was.
std::string quote_bytes(std::string_view s, size_t max_bytes = 120);

// The message's control bytes escaped as quote_bytes does, newlines and tabs kept: whatever a
// message quotes, it prints whole and cannot move the terminal's cursor.
std::string printable_message(std::string_view s);

struct Error : std::runtime_error {
  explicit Error(const std::string& what) : std::runtime_error(printable_message(what)) {}
};

// An exception's message without a library's "[json.exception.type_error.302] " prefix.
inline std::string json_error_text(const std::exception& e) {
  std::string s = e.what();
  if (!s.empty() && s[0] == '[') {
    const size_t end = s.find("] ");
    if (end != std::string::npos) s.erase(0, end + 2);
  }
  return s;
}

template <typename... Args>
std::string cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

template <typename... Args>
[[noreturn]] void fail(const Args&... args) {
  throw Error(cat(args...));
}

}  // namespace dsv3

// DSV3_CHECK(cond, "experts (", E, ") not divisible by groups (", G, ")")
#define DSV3_CHECK(cond, ...)                  \
  do {                                         \
    if (!(cond)) ::dsv3::fail(__VA_ARGS__);    \
  } while (0)

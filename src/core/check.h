// Errors and checks. Every user-facing failure is a dsv3::Error with a message that names the
// problem; the CLI prints it and exits non-zero. Internal invariants use the same macro.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace dsv3 {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

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

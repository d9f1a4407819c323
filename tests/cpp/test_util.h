// Shared helpers for the C++ tests: finite differences, error norms, paths.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include <unistd.h>

#include "core/rng.h"
#include "error_text.h"

namespace dsv3::test {

inline std::vector<double> random_vec(size_t n, uint64_t seed, double scale = 1.0) {
  Rng r(seed);
  std::vector<double> v(n);
  for (auto& x : v) x = scale * r.normal();
  return v;
}

// ||a - b|| / max(||b||, tiny): the scale-free error used throughout the tests.
template <typename A, typename B>
double rel_error(const A& a, const B& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < b.size(); i++) {
    double d = double(a[i]) - double(b[i]);
    num += d * d;
    den += double(b[i]) * double(b[i]);
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-300);
}

// Central finite differences of a scalar function f at x, in double: (f(x+h) - f(x-h)) / 2h.
inline std::vector<double> finite_difference(const std::function<double()>& f,
                                             std::vector<double>& x, double h = 1e-6) {
  std::vector<double> g(x.size());
  for (size_t i = 0; i < x.size(); i++) {
    double keep = x[i];
    x[i] = keep + h;
    double fp = f();
    x[i] = keep - h;
    double fm = f();
    x[i] = keep;
    g[i] = (fp - fm) / (2 * h);
  }
  return g;
}

inline std::filesystem::path shared_dir() { return DSV3_SHARED_DIR; }
inline bool have_shared() { return std::filesystem::exists(shared_dir() / "data"); }
#define DSV3_REQUIRE_SHARED()                                                          \
  if (!::dsv3::test::have_shared())                                                    \
  GTEST_SKIP() << "../shared/data is absent (" << ::dsv3::test::shared_dir() << ")"

inline std::filesystem::path temp_dir(const std::string& name) {
  auto p = std::filesystem::temp_directory_path() / ("dsv3_test_" + name + "_" +
                                                      std::to_string(::getpid()));
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p;
}

}  // namespace dsv3::test

#include <fstream>
#include <sstream>
namespace dsv3::test {
inline std::string read_file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}
}  // namespace dsv3::test

// Shared by the fuzz targets (fuzz/README.md): every target feeds bytes to one parser of external
// input. A dsv3::Error is the expected answer to bad input; any other exception, a crash, a leak,
// undefined behaviour or a runaway allocation is a bug that libFuzzer reports.
#pragma once
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>

#include "core/check.h"
#include "core/io.h"

namespace dsv3::fuzz {

// The readers take paths: inputs go to per-process files, on tmpfs when there is one.
inline std::string scratch_path(const std::string& name) {
  static const std::string dir = [] {
    std::error_code ec;
    return std::filesystem::is_directory("/dev/shm", ec) ? std::string("/dev/shm")
                                                         : std::filesystem::temp_directory_path().string();
  }();
  return dir + "/dsv3fuzz_" + std::to_string(::getpid()) + "_" + name;
}
inline std::string write_input(const uint8_t* data, size_t size, const std::string& name) {
  const std::string path = scratch_path(name);
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) std::abort();  // the harness itself cannot run
  if (size && std::fwrite(data, 1, size, f) != size) std::abort();
  std::fclose(f);
  return path;
}

// Splits an input into `n` parts at "\n=====\n" separators (missing parts are empty): one input
// can hold several files (encoder.json + vocab.bpe).
inline std::vector<std::string> split_parts(const uint8_t* data, size_t size, size_t n) {
  const std::string s(reinterpret_cast<const char*>(data), size), sep = "\n=====\n";
  std::vector<std::string> parts;
  size_t pos = 0;
  while (parts.size() + 1 < n) {
    const size_t at = s.find(sep, pos);
    if (at == std::string::npos) break;
    parts.push_back(s.substr(pos, at - pos));
    pos = at + sep.size();
  }
  parts.push_back(s.substr(pos));
  parts.resize(n);
  return parts;
}

// Runs `f`; only a dsv3::Error (a named rejection) is an acceptable way to fail.
template <typename F>
void run_expecting_errors(F&& f) {
  try {
    f();
  } catch (const Error&) {
  }
}

// Once per process: checksum checks off, or almost every mutation stops at the checksum and the
// parsing behind it is never reached. The checks themselves are a compare of two integers.
inline void init_once() {
  static const bool done = [] {
    set_checksum_verification_for_fuzzing(false);
    return true;
  }();
  (void)done;
}

}  // namespace dsv3::fuzz

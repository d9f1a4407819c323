// Running the dsv3 command from tests: exit code and combined output.
#pragma once
#include <sys/wait.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace dsv3::test {

struct CmdResult {
  int code;
  std::string out;  // stdout + stderr
};

// A shell command line, output and exit status (128 + signal when killed).
inline CmdResult run_shell(const std::string& cmd) {
  CmdResult r{0, ""};
  std::FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return {-1, "popen failed"};
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  const int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

inline CmdResult run_cli(const std::string& args) {
  return run_shell(std::string(DSV3_BIN) + " " + args);
}

// Records of one kind ("train" or "eval") from a metrics.jsonl file.
inline std::vector<nlohmann::json> read_metrics(const std::string& path, const std::string& kind) {
  std::vector<nlohmann::json> out;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line);
    if (j["kind"] == kind) out.push_back(j);
  }
  return out;
}

}  // namespace dsv3::test

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

inline CmdResult run_cli(const std::string& args) {
  const std::string cmd = std::string(DSV3_BIN) + " " + args + " 2>&1";
  CmdResult r{0, ""};
  std::FILE* p = popen(cmd.c_str(), "r");
  if (!p) return {-1, "popen failed"};
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  const int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
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

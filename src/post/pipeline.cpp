#include "post/pipeline.h"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "checkpoint/checkpoint.h"
#include "core/check.h"
#include "core/io.h"
#include "core/timer.h"

namespace dsv3 {

namespace {
std::string trim(const std::string& s) {
  const size_t a = s.find_first_not_of(" \t\r"), b = s.find_last_not_of(" \t\r");
  return a == std::string::npos ? "" : s.substr(a, b - a + 1);
}
bool has_key(const StagesFileStage& s, const std::string& k) {
  return std::any_of(s.keys.begin(), s.keys.end(), [&](const auto& kv) { return kv.first == k; });
}
}  // namespace

PipelineSpec read_pipeline(const std::string& path) {
  std::ifstream in(path);
  DSV3_CHECK(in, "cannot open the stages file ", path);
  PipelineSpec p;
  std::string line;
  int no = 0;
  while (std::getline(in, line)) {
    no++;
    const size_t hash = line.find('#');
    line = trim(hash == std::string::npos ? line : line.substr(0, hash));
    if (line.empty()) continue;
    const std::string where = path + ":" + std::to_string(no) + ": ";
    if (line.front() == '[') {
      DSV3_CHECK(line.back() == ']' && line.rfind("[stage ", 0) == 0, where, "a section is "
                 "[stage NAME], got '", line, "'");
      StagesFileStage s;
      s.name = trim(line.substr(7, line.size() - 8));
      s.line = no;
      DSV3_CHECK(!s.name.empty() && s.name.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") ==
                                        std::string::npos,
                 where, "a stage name is letters, digits, _ and - (got '", s.name, "')");
      for (const auto& o : p.stages)
        DSV3_CHECK(o.name != s.name, where, "stage '", s.name, "' is defined twice");
      p.stages.push_back(s);
      continue;
    }
    const size_t eq = line.find('=');
    DSV3_CHECK(eq != std::string::npos, where, "expected key = value, got '", line, "'");
    std::string key = trim(line.substr(0, eq)), value = trim(line.substr(eq + 1));
    if (key.rfind("--", 0) == 0) key = key.substr(2);
    DSV3_CHECK(!key.empty(), where, "empty key");
    if (p.stages.empty()) {
      DSV3_CHECK(key == "out", where, "before the first [stage] only out = DIR is read (got '", key, "')");
      p.out = value;
      continue;
    }
    StagesFileStage& s = p.stages.back();
    if (key == "command") {
      DSV3_CHECK(value == "train" || value == "finetune", where, "command must be train or "
                 "finetune (got '", value, "')");
      s.command = value;
      continue;
    }
    DSV3_CHECK(key != "out", where, "a stage's out is OUT/NAME, set by the pipeline (drop it)");
    DSV3_CHECK(key != "resume", where, "the pipeline resumes stages itself (drop resume)");
    DSV3_CHECK(!has_key(s, key), where, "'", key, "' is set twice in stage '", s.name, "'");
    s.keys.emplace_back(key, value);
  }
  DSV3_CHECK(!p.out.empty(), path, ": out = DIR is required before the first [stage]");
  DSV3_CHECK(!p.stages.empty(), path, ": no [stage NAME] section");
  for (const auto& s : p.stages)
    DSV3_CHECK(!s.command.empty(), path, ":", s.line, ": stage '", s.name, "' needs command = train "
               "or finetune");
  return p;
}

std::vector<std::string> stage_arguments(const PipelineSpec& p, size_t i, bool resume) {
  const StagesFileStage& s = p.stages[i];
  const std::string dir = (std::filesystem::path(p.out) / s.name).string();
  std::vector<std::string> a = {s.command};
  const bool train = s.command == "train";
  for (const auto& [k, v] : s.keys) {
    if (train && resume && k == "init_from") continue;  // the stage's own checkpoint supersedes it
    a.push_back("--" + k);
    a.push_back(v);
  }
  a.push_back("--out");
  a.push_back(dir);
  if (train && resume) {
    a.push_back("--resume");
    a.push_back(dir);
  } else if (i > 0) {
    const std::string prev = (std::filesystem::path(p.out) / p.stages[i - 1].name).string();
    const char* from = train ? "init_from" : "model";
    if (!has_key(s, from)) {
      a.push_back(std::string("--") + from);
      a.push_back(prev);
    }
  }
  return a;
}

int run_pipeline(const PipelineSpec& p, const std::string& self) {
  std::filesystem::create_directories(p.out);
  const size_t n = p.stages.size();
  const double t0 = now_seconds();
  for (size_t i = 0; i < n; i++) {
    const StagesFileStage& s = p.stages[i];
    const auto dir = std::filesystem::path(p.out) / s.name;
    const auto done = dir / "STAGE_DONE";
    if (std::filesystem::exists(done)) {
      std::fprintf(stderr, "pipeline: stage %zu/%zu %s: done, skipped\n", i + 1, n, s.name.c_str());
      continue;
    }
    const bool resume = !list_checkpoints(dir.string()).empty();
    const auto args = stage_arguments(p, i, resume);
    std::string shown;
    for (const auto& x : args) shown += " " + x;
    std::fprintf(stderr, "pipeline: stage %zu/%zu %s%s: dsv3%s\n", i + 1, n, s.name.c_str(),
                 resume ? " (resuming)" : "", shown.c_str());
    std::fflush(stderr);
    const double ts = now_seconds();
    const pid_t pid = fork();
    DSV3_CHECK(pid >= 0, "fork failed");
    if (pid == 0) {
      std::vector<char*> argv = {const_cast<char*>(self.c_str())};
      for (const auto& x : args) argv.push_back(const_cast<char*>(x.c_str()));
      argv.push_back(nullptr);
      execv(self.c_str(), argv.data());
      std::perror("pipeline: exec");
      _exit(127);
    }
    int status = 0;
    DSV3_CHECK(waitpid(pid, &status, 0) == pid, "waitpid failed");
    const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (code != 0) {
      std::fprintf(stderr, "pipeline: stage %s failed (exit %d); fix it and rerun the same command "
                   "to resume from this stage\n", s.name.c_str(), code);
      return code;
    }
    const nlohmann::json rec = {{"stage", s.name}, {"command", s.command}, {"arguments", args},
                                {"seconds", now_seconds() - ts}};
    write_file_atomic(done.string(), [&](std::FILE* f) {
      const std::string t = rec.dump() + "\n";
      write_bytes(f, t.data(), t.size());
    });
    std::fprintf(stderr, "pipeline: stage %zu/%zu %s finished in %s\n", i + 1, n, s.name.c_str(),
                 format_duration(now_seconds() - ts).c_str());
  }
  std::fprintf(stderr, "pipeline: %zu stages done in %s; the model is %s\n", n,
               format_duration(now_seconds() - t0).c_str(),
               (std::filesystem::path(p.out) / p.stages.back().name).c_str());
  return 0;
}

}  // namespace dsv3

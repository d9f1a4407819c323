// What a run shows and records (O1): one live console line with rate and ETA, and a JSONL file
// with a record per step and per evaluation that a person can plot.
#pragma once
#include <cstdio>
#include <string>

#include <nlohmann/json.hpp>

namespace dsv3 {

class MetricsLog {
 public:
  // Appends to path (a resumed run continues the same file).
  explicit MetricsLog(const std::string& path);
  ~MetricsLog();
  void write(const nlohmann::json& record);  // one line, flushed

 private:
  std::FILE* f_ = nullptr;
  std::string path_;
};

// The console line: redrawn in place on a terminal, printed every `every` calls otherwise.
class ProgressLine {
 public:
  explicit ProgressLine(long long total);
  void update(long long done, const std::string& text, double eta_seconds);
  void finish();  // ends the line on a terminal
  void print(const std::string& line);  // a permanent line above the progress line

 private:
  long long total_;
  bool tty_;
  long long every_;
  bool open_ = false;
};

}  // namespace dsv3

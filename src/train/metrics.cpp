#include "train/metrics.h"

#include <unistd.h>

#include <algorithm>

#include "core/check.h"
#include "core/timer.h"

namespace dsv3 {

MetricsLog::MetricsLog(const std::string& path) : path_(path) {
  f_ = std::fopen(path.c_str(), "a");
  DSV3_CHECK(f_, "cannot open metrics file ", path);
}
MetricsLog::~MetricsLog() {
  if (f_) std::fclose(f_);
}
void MetricsLog::write(const nlohmann::json& record) {
  const std::string line = record.dump() + "\n";
  DSV3_CHECK(std::fwrite(line.data(), 1, line.size(), f_) == line.size(), "cannot write ", path_);
  std::fflush(f_);
}

ProgressLine::ProgressLine(long long total)
    : total_(total), tty_(isatty(STDERR_FILENO)), every_(std::max(1LL, total / 20)) {}

void ProgressLine::update(long long done, const std::string& text, double eta) {
  const std::string line = "step " + std::to_string(done) + "/" + std::to_string(total_) + " | " +
                           text + " | ETA " + format_duration(eta);
  if (tty_) {
    std::fprintf(stderr, "\r\033[K%s", line.c_str());
    open_ = true;
  } else if (done % every_ == 0 || done == total_ || done == 1) {
    std::fprintf(stderr, "%s\n", line.c_str());
  }
  std::fflush(stderr);
}

void ProgressLine::print(const std::string& line) {
  if (open_) std::fprintf(stderr, "\r\033[K");
  std::fprintf(stderr, "%s\n", line.c_str());
  open_ = false;
}

void ProgressLine::finish() {
  if (open_) std::fprintf(stderr, "\n");
  open_ = false;
}

}  // namespace dsv3

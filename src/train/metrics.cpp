#include "train/metrics.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <algorithm>

#include "core/check.h"
#include "core/timer.h"

namespace dsv3 {

MetricsLog::MetricsLog(const std::string& path) : path_(path) {
  f_ = std::fopen(path.c_str(), "a");
  DSV3_CHECK(f_, "cannot open the metrics file ", path, ": ", std::strerror(errno));
}
MetricsLog::~MetricsLog() {
  if (f_) std::fclose(f_);  // every record was flushed (and checked) when written
}
void MetricsLog::write(const nlohmann::json& record) {
  std::string line;
  try {
    line = record.dump() + "\n";
  } catch (const nlohmann::json::exception& e) {  // a string that is not UTF-8
    line = record.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  }
  // The data must reach the file now, not at exit: a full disk fails here, at the record that
  // did not fit, with the reason.
  errno = 0;
  const bool ok = std::fwrite(line.data(), 1, line.size(), f_) == line.size() &&
                  std::fflush(f_) == 0;
  if (!ok) {
    const int e = errno;
    std::clearerr(f_);
    fail("cannot write the metrics file ", path_, ": ",
         e ? std::strerror(e) : "write failed");
  }
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

#pragma once
#include <chrono>
#include <cstddef>
#include <string>

namespace dsv3 {

inline double now_seconds() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

// Peak resident set size of this process in bytes (VmHWM), 0 if unknown.
size_t peak_rss_bytes();
// Human-readable duration: "1h02m", "3m05s", "12s".
std::string format_duration(double seconds);

}  // namespace dsv3

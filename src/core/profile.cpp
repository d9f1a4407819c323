#include "core/profile.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <vector>

#include "core/timer.h"

namespace dsv3::profile {
namespace {
struct Entry {
  long long calls = 0;
  double seconds = 0, flops = 0;
};
struct State {
  std::atomic<bool> on{std::getenv("DSV3_PROFILE") != nullptr};
  std::mutex mu;
  std::map<std::string, Entry> ops;
};
State& state() {
  static State s;
  return s;
}
}  // namespace

void enable(bool on) { state().on = on; }
bool enabled() { return state().on.load(std::memory_order_relaxed); }

void reset() {
  std::lock_guard<std::mutex> lock(state().mu);
  state().ops.clear();
}

void Scope::start(const char* name, double flops) {
  name_ = name;
  flops_ = flops;
  t0_ = now_seconds();
}

void Scope::stop() {
  const double dt = now_seconds() - t0_;
  std::lock_guard<std::mutex> lock(state().mu);
  Entry& e = state().ops[name_];
  e.calls++;
  e.seconds += dt;
  e.flops += flops_;
}

std::string report(double total) {
  std::vector<std::pair<std::string, Entry>> v;
  {
    std::lock_guard<std::mutex> lock(state().mu);
    v.assign(state().ops.begin(), state().ops.end());
  }
  std::sort(v.begin(), v.end(), [](const auto& a, const auto& b) { return a.second.seconds > b.second.seconds; });
  double sum = 0;
  for (const auto& [n, e] : v) sum += e.seconds;
  if (total <= 0) total = sum;
  std::string out;
  char line[256];
  std::snprintf(line, sizeof line, "%-28s %8s %10s %7s %9s\n", "op", "calls", "ms", "share", "GFLOP/s");
  out += line;
  for (const auto& [n, e] : v) {
    char rate[32] = "";
    if (e.flops > 0) std::snprintf(rate, sizeof rate, "%9.1f", e.flops / e.seconds / 1e9);
    std::snprintf(line, sizeof line, "%-28s %8lld %10.1f %6.1f%% %9s\n", n.c_str(), e.calls,
                  1e3 * e.seconds, 100 * e.seconds / total, rate);
    out += line;
  }
  std::snprintf(line, sizeof line, "%-28s %8s %10.1f %6.1f%% (of %.1f ms measured)\n", "all ops", "",
                1e3 * sum, 100 * sum / total, 1e3 * total);
  out += line;
  return out;
}

}  // namespace dsv3::profile

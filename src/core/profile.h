// Time per op (`dsv3 bench --profile`, DSV3_PROFILE=1 for any command): every op entry point opens
// a Scope; when profiling is on, the wall time between its construction and destruction (and the
// FLOPs the op declares) accumulate per op name. Off, a Scope costs one branch. Scopes are opened
// on the thread that calls the op (not inside its parallel region), from any number of threads.
#pragma once
#include <string>

namespace dsv3::profile {

void enable(bool on);
bool enabled();
void reset();
// A table of ops sorted by time: calls, ms, share, GFLOP/s where the op declares its FLOPs.
std::string report(double total_seconds = 0);

class Scope {
 public:
  explicit Scope(const char* name, double flops = 0) {
    if (enabled()) start(name, flops);
  }
  ~Scope() {
    if (name_) stop();
  }
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

 private:
  void start(const char* name, double flops);
  void stop();
  const char* name_ = nullptr;
  double flops_ = 0, t0_ = 0;
};

}  // namespace dsv3::profile

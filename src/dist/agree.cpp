#include "dist/agree.h"

#include <cstdio>
#include <exception>
#include <string>
#include <vector>

namespace dsv3::dist {

void agree(const Comm& comm, const std::function<void()>& step) {
  std::string mine;
  try {
    step();
  } catch (const Error& e) {
    mine = e.what();
    if (mine.empty()) mine = "error";
  }
  if (comm.size() == 1) {
    if (!mine.empty()) throw Error(mine);
    return;
  }
  const std::vector<std::string> all = comm.all_gather_bytes(mine);
  std::vector<int> failed;
  bool same = true;
  for (size_t r = 0; r < all.size(); r++)
    if (!all[r].empty()) {
      if (!failed.empty() && all[r] != all[size_t(failed[0])]) same = false;
      failed.push_back(int(r));
    }
  if (failed.empty()) return;
  if (comm.rank() != 0) throw QuietError(mine);
  if (same && failed.size() == all.size()) throw AgreedError(all[0]);
  std::string msg;
  for (int r : failed) msg += cat(msg.empty() ? "" : "\n  ", "rank ", r, ": ", all[size_t(r)]);
  throw AgreedError(msg);
}

void end_agreed_error(const char* command) {
  try {
    throw;
  } catch (const QuietError&) {
    world().barrier();
    finalize();
    throw;
  } catch (const Error& e) {
    if (world().size() == 1) {
      finalize();
      throw;
    }
    std::fprintf(stderr, "\ndsv3 %s: error: %s\n", command, e.what());
    std::fflush(stderr);
    world().barrier();
    finalize();
    throw QuietError(e.what());
  } catch (...) {
    finalize();
    throw;
  }
}

}  // namespace dsv3::dist

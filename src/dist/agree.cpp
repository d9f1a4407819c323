#include "dist/agree.h"

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
  if (same && failed.size() == all.size()) throw Error(all[0]);
  std::string msg;
  for (int r : failed) msg += cat(msg.empty() ? "" : "\n  ", "rank ", r, ": ", all[size_t(r)]);
  throw Error(msg);
}

}  // namespace dsv3::dist

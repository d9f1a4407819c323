#include "dist/eplb.h"

#include <algorithm>
#include <numeric>

#include "core/check.h"

namespace dsv3::dist {

ExpertPlacement home_placement(int experts, int ranks) {
  DSV3_CHECK(ranks >= 1 && experts % ranks == 0, "home placement: ", experts,
             " experts over ", ranks, " ranks");
  ExpertPlacement p;
  p.ranks = ranks, p.slots = experts / ranks;
  p.phy2log.resize(size_t(experts));
  std::iota(p.phy2log.begin(), p.phy2log.end(), 0);
  p.replicas.assign(size_t(experts), 1);
  return p;
}

ExpertPlacement eplb_place(const std::vector<double>& load, int ranks, int redundant) {
  const int E = int(load.size()), phys = E + redundant;
  DSV3_CHECK(E > 0 && ranks >= 1 && redundant >= 0 && phys % ranks == 0, "EPLB: ", E,
             " experts + ", redundant, " redundant slots cannot be spread evenly over ", ranks,
             " ranks");
  ExpertPlacement p;
  p.ranks = ranks, p.slots = phys / ranks;
  p.replicas.assign(size_t(E), 1);
  // replicate: each extra slot to the expert with the largest load per replica (lowest id wins)
  std::vector<int> logical(static_cast<size_t>(phys));
  std::iota(logical.begin(), logical.begin() + E, 0);
  for (int i = E; i < phys; i++) {
    int best = 0;
    for (int e = 1; e < E; e++)
      if (load[size_t(e)] / p.replicas[size_t(e)] > load[size_t(best)] / p.replicas[size_t(best)])
        best = e;
    logical[size_t(i)] = best;
    p.replicas[size_t(best)]++;
  }
  // pack: physical experts heaviest first onto the least loaded rank with a free slot
  std::vector<int> order(static_cast<size_t>(phys));
  std::iota(order.begin(), order.end(), 0);
  const auto w = [&](int i) { return load[size_t(logical[size_t(i)])] / p.replicas[size_t(logical[size_t(i)])]; };
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return w(a) > w(b); });
  std::vector<double> rank_w(size_t(ranks), 0.0);
  std::vector<int> used(size_t(ranks), 0);
  p.phy2log.assign(size_t(phys), -1);
  for (int i : order) {
    int r = -1;
    for (int q = 0; q < ranks; q++)
      if (used[size_t(q)] < p.slots && (r < 0 || rank_w[size_t(q)] < rank_w[size_t(r)])) r = q;
    p.phy2log[size_t(r * p.slots + used[size_t(r)])] = logical[size_t(i)];
    used[size_t(r)]++;
    rank_w[size_t(r)] += w(i);
  }
  return p;
}

std::vector<double> rank_loads(const ExpertPlacement& p, const std::vector<double>& load) {
  std::vector<double> out(size_t(p.ranks), 0.0);
  for (int r = 0; r < p.ranks; r++)
    for (int s = 0; s < p.slots; s++) {
      const int e = p.phy2log[size_t(r * p.slots + s)];
      out[size_t(r)] += load[size_t(e)] / p.replicas[size_t(e)];
    }
  return out;
}

double imbalance(const std::vector<double>& rl) {
  if (rl.empty()) return 0;
  const double mean = std::accumulate(rl.begin(), rl.end(), 0.0) / double(rl.size());
  return mean > 0 ? *std::max_element(rl.begin(), rl.end()) / mean : 0.0;
}

}  // namespace dsv3::dist

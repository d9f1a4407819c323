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

namespace {
void check_spread(int E, int ranks, int redundant) {
  DSV3_CHECK(E > 0 && ranks >= 1 && redundant >= 0 && (E + redundant) % ranks == 0, "EPLB: ", E,
             " experts + ", redundant, " redundant slots cannot be spread evenly over ", ranks,
             " ranks");
}
// Each extra slot to the expert with the largest load per replica (lowest id wins): the logical
// expert of every physical one, experts first, then the replicas in the order they were made.
std::vector<int> replicate(const std::vector<double>& load, int redundant, std::vector<int>& replicas) {
  const int E = int(load.size());
  replicas.assign(size_t(E), 1);
  std::vector<int> logical(size_t(E + redundant));
  std::iota(logical.begin(), logical.begin() + E, 0);
  for (int i = E; i < E + redundant; i++) {
    int best = 0;
    for (int e = 1; e < E; e++)
      if (load[size_t(e)] / replicas[size_t(e)] > load[size_t(best)] / replicas[size_t(best)])
        best = e;
    logical[size_t(i)] = best;
    replicas[size_t(best)]++;
  }
  return logical;
}
}  // namespace

ExpertPlacement eplb_place(const std::vector<double>& load, int ranks, int redundant) {
  const int E = int(load.size()), phys = E + redundant;
  check_spread(E, ranks, redundant);
  ExpertPlacement p;
  p.ranks = ranks, p.slots = phys / ranks;
  const std::vector<int> logical = replicate(load, redundant, p.replicas);
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

ExpertPlacement eplb_place_on_homes(const std::vector<double>& load, int ranks, int redundant) {
  const int E = int(load.size());
  check_spread(E, ranks, redundant);
  DSV3_CHECK(E % ranks == 0, "EPLB: ", E, " experts do not split evenly over ", ranks, " ranks");
  const int L = E / ranks, S = redundant / ranks;
  ExpertPlacement p;
  p.ranks = ranks, p.slots = L + S;
  p.replicas.assign(size_t(E), 1);
  p.phy2log.assign(size_t(ranks * p.slots), -1);
  std::vector<double> rank_w(size_t(ranks), 0.0);
  std::vector<std::vector<int>> holders(static_cast<size_t>(E));  // ranks holding each expert
  for (int r = 0; r < ranks; r++)
    for (int j = 0; j < L; j++) {
      p.phy2log[size_t(r * p.slots + j)] = r * L + j;
      rank_w[size_t(r)] += load[size_t(r * L + j)];
      holders[size_t(r * L + j)].push_back(r);
    }
  std::vector<int> used(size_t(ranks), 0);
  const auto sumsq = [](const std::vector<double>& v) {
    double s2 = 0;
    for (double x : v) s2 += x * x;
    return s2;
  };
  // Greedy: each replica is the (expert, rank) pair that lowers the per-rank loads' sum of
  // squares most (an expert's load split evenly over its copies); stop when none lowers it.
  for (int n = 0; n < redundant; n++) {
    double best = sumsq(rank_w) * (1 - 1e-12);
    int be = -1, bq = -1;
    std::vector<double> trial;
    for (int e = 0; e < E; e++) {
      const auto& h = holders[size_t(e)];
      const double k = double(h.size()), was = load[size_t(e)] / k, now = load[size_t(e)] / (k + 1);
      for (int q = 0; q < ranks; q++) {
        if (used[size_t(q)] >= S || std::find(h.begin(), h.end(), q) != h.end()) continue;
        trial = rank_w;
        for (int r : h) trial[size_t(r)] -= was - now;
        trial[size_t(q)] += now;
        if (const double v = sumsq(trial); v < best) best = v, be = e, bq = q;
      }
    }
    if (be < 0) break;
    const double k = double(holders[size_t(be)].size());
    for (int r : holders[size_t(be)]) rank_w[size_t(r)] -= load[size_t(be)] / k - load[size_t(be)] / (k + 1);
    rank_w[size_t(bq)] += load[size_t(be)] / (k + 1);
    holders[size_t(be)].push_back(bq);
    p.phy2log[size_t(bq * p.slots + L + used[size_t(bq)])] = be;
    used[size_t(bq)]++;
    p.replicas[size_t(be)]++;
  }
  return p;
}

std::vector<double> rank_loads(const ExpertPlacement& p, const std::vector<double>& load) {
  std::vector<double> out(size_t(p.ranks), 0.0);
  for (int r = 0; r < p.ranks; r++)
    for (int s = 0; s < p.slots; s++) {
      const int e = p.phy2log[size_t(r * p.slots + s)];
      if (e >= 0) out[size_t(r)] += load[size_t(e)] / p.replicas[size_t(e)];
    }
  return out;
}

double imbalance(const std::vector<double>& rl) {
  if (rl.empty()) return 0;
  const double mean = std::accumulate(rl.begin(), rl.end(), 0.0) / double(rl.size());
  return mean > 0 ? *std::max_element(rl.begin(), rl.end()) / mean : 0.0;
}

}  // namespace dsv3::dist

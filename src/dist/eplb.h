// Expert-parallel load balancing (P3, EPLB): DeepSeek's algorithm (github.com/deepseek-ai/EPLB,
// the global policy) over measured per-expert loads. With R redundant slots, the heaviest
// experts get replicas one at a time (each time the expert with the largest load per replica),
// then the physical experts (load split evenly over an expert's replicas) are packed onto the
// ranks, heaviest first, each onto the least loaded rank that still has a free slot, so every
// rank holds (E + R) / ranks physical experts.
#pragma once
#include <vector>

namespace dsv3::dist {

struct ExpertPlacement {
  int ranks = 1, slots = 0;    // physical experts per rank
  std::vector<int> phy2log;    // (ranks * slots) logical expert of each physical slot, rank-major
  std::vector<int> replicas;   // per logical expert
};

// Expert e on rank e / (E / ranks), no replicas: what expert parallelism does without EPLB.
ExpertPlacement home_placement(int experts, int ranks);
// DeepSeek's placement for `load` (one entry per logical expert) on `ranks` ranks with
// `redundant` extra slots ((E + redundant) must be a multiple of ranks).
ExpertPlacement eplb_place(const std::vector<double>& load, int ranks, int redundant);
// Per rank, the load it would get: each logical expert's load split evenly over its replicas.
std::vector<double> rank_loads(const ExpertPlacement& p, const std::vector<double>& load);
// max / mean of per-rank loads (1 = perfectly balanced; 0 when there is no load).
double imbalance(const std::vector<double>& rank_load);

}  // namespace dsv3::dist

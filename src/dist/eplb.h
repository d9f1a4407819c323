// Expert-parallel load balancing (P3, EPLB): DeepSeek's algorithm (github.com/deepseek-ai/EPLB,
// the global policy) over measured per-expert loads. With R redundant slots, the heaviest
// experts get replicas one at a time (each time the expert with the largest load per replica),
// then the physical experts (load split evenly over an expert's replicas) are packed onto the
// ranks, heaviest first, each onto the least loaded rank that still has a free slot, so every
// rank holds (E + R) / ranks physical experts.
//
// Training applies eplb_place_on_homes: moving an expert's home would move its weights and
// optimizer state between ranks, so every expert stays on its expert-parallel rank and only the
// redundant replicas are placed (train/expert_parallel.h computes on them).
#pragma once
#include <vector>

namespace dsv3::dist {

struct ExpertPlacement {
  int ranks = 1, slots = 0;    // physical experts per rank
  std::vector<int> phy2log;    // (ranks * slots) logical expert of each physical slot, rank-major
                               // (-1: an empty replica slot)
  std::vector<int> replicas;   // per logical expert
};

// Expert e on rank e / (E / ranks), no replicas: what expert parallelism does without EPLB.
ExpertPlacement home_placement(int experts, int ranks);
// DeepSeek's placement for `load` (one entry per logical expert) on `ranks` ranks with
// `redundant` extra slots ((E + redundant) must be a multiple of ranks).
ExpertPlacement eplb_place(const std::vector<double>& load, int ranks, int redundant);
// Replicas with every expert kept on its home rank: rank r's slots [0, E/ranks) are its own
// experts [r E/ranks, (r+1) E/ranks), slots [E/ranks, slots) its redundant/ranks replica slots.
// Each replica in turn is the (expert, rank) pair that lowers the sum of squared per-rank loads
// most (the expert's load split evenly over its copies; a rank never holds two copies of one
// expert); slots that would not lower it stay empty (-1), so a placement never plans worse
// than the homes alone.
ExpertPlacement eplb_place_on_homes(const std::vector<double>& load, int ranks, int redundant);
// Per rank, the load it would get: each logical expert's load split evenly over its replicas.
std::vector<double> rank_loads(const ExpertPlacement& p, const std::vector<double>& load);
// max / mean of per-rank loads (1 = perfectly balanced; 0 when there is no load).
double imbalance(const std::vector<double>& rank_load);

}  // namespace dsv3::dist

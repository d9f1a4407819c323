// The parallel layout: how the world's ranks are arranged into data (dp), tensor (tp),
// pipeline (pp) and expert (ep) parallel groups, and the communicators of each rank's groups.
//
// Rank order, fastest first: tp, then dp, then pp (Megatron's order):
//   world rank = tp + TP * (dp + DP * pp)
// tp fastest because tensor parallelism all-reduces activations inside every layer, so its ranks
// must be neighbours (the GPUs of one node); pp slowest because stages only pass activations to
// the next stage, the lightest traffic, so stages may sit on different nodes.
//
// Expert parallelism is carved out of data parallelism (as Megatron and DeepSeek-V3 do): the dp
// ranks of one (tp, pp) position form DP/EP expert groups of EP consecutive dp ranks;
//   ep index = dp % EP   (which shard of the experts this rank holds)
//   edp index = dp / EP  (which replica of that shard)
// Consecutive dp ranks keep each expert group's all-to-all on neighbouring ranks. Dense
// parameters are replicated over the whole dp group; expert parameters over the edp group (the
// ranks holding the same experts), so their gradients are reduced there. See docs/parallel.md.
#pragma once
#include <string>
#include <vector>

#include "core/fields.h"
#include "dist/comm.h"

namespace dsv3::dist {

struct ParallelLayout {
  // ep divides dp; dp * tp * pp = world size. dp 0 (the default): the world size / (tp * pp).
  int dp = 0, tp = 1, pp = 1, ep = 1;
};

// The layout flags --dp, --tp, --pp, --ep (the settings group "parallel").
const std::vector<FieldSpec>& parallel_fields();

// The layout with dp filled in when it is 0 (world_size / (tp * pp), an Error if that is not whole).
ParallelLayout resolve(ParallelLayout layout, int world_size);
// Throws Error unless (resolved) every degree is >= 1, dp * tp * pp == world_size and ep
// divides dp.
void validate(const ParallelLayout& layout, int world_size);
std::string describe(const ParallelLayout& layout);  // "dp 2 x tp 2 x pp 1, ep 2"

// A rank's position in every dimension (see the order above).
struct RankCoords {
  int dp = 0, tp = 0, pp = 0;
  int ep = 0;   // dp % EP: the expert shard this rank holds
  int edp = 0;  // dp / EP: the replica of that shard
};
RankCoords rank_coords(const ParallelLayout& layout, int rank);
int rank_at(const ParallelLayout& layout, int dp, int tp, int pp);  // inverse of rank_coords

// The groups of one rank, each ordered by its index in that dimension:
//   tp:  same dp, pp          dp:  same tp, pp
//   pp:  same dp, tp          ep:  same tp, pp, edp    edp: same tp, pp, ep
// and, with pp > 1 (null otherwise), the gradient groups of the tensors two pipeline ranks
// both hold, pp rank s and its mirror P-1-s (the embedding on the first and last stage, which
// MTP reads; under DualPipe every tensor: train/pipeline.h), ordered by (pp, dp) and (pp, edp):
//   dp_mirror: same tp, pp in {s, P-1-s}    edp_mirror: same tp, ep, pp in {s, P-1-s}
struct ParallelGroups {
  ParallelLayout layout;
  int rank = 0;  // in the world
  RankCoords at;
  Comm tp, pp, dp, ep, edp;
  Comm dp_mirror, edp_mirror;
  std::string describe() const;  // "rank 3: dp 1 tp 1 pp 0 ep 1"
};
// Collective over world: resolves and validates the layout and splits world into every group.
ParallelGroups make_parallel_groups(const Comm& world, const ParallelLayout& layout);

// For commands that run as one process: throws Error naming `what` (e.g. "bench") when the world
// has more than one rank, instead of every rank doing the whole job alone.
void require_single_process(const char* what);

}  // namespace dsv3::dist

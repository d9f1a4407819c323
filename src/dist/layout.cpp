#include "dist/layout.h"

#include <algorithm>

#include "core/check.h"

namespace dsv3::dist {

const std::vector<FieldSpec>& parallel_fields() {
  using P = ParallelLayout;
  static const std::vector<FieldSpec> f = {
      field("dp", &P::dp, "data-parallel degree (0 = the world size / (tp * pp))", in_range(0, 1 << 20)),
      field("tp", &P::tp, "tensor-parallel degree", in_range(1, 1 << 20)),
      field("pp", &P::pp, "pipeline-parallel degree", in_range(1, 1 << 20)),
      field("ep", &P::ep, "expert-parallel degree (carved out of dp)", in_range(1, 1 << 20)),
  };
  return f;
}

ParallelLayout resolve(ParallelLayout l, int world_size) {
  if (l.dp != 0) return l;
  DSV3_CHECK(l.tp >= 1 && l.pp >= 1, "parallel layout ", describe(l),
             ": every degree must be at least 1");
  DSV3_CHECK(world_size % (l.tp * l.pp) == 0, "the world has ", world_size, " ranks, not a "
             "multiple of tp * pp = ", l.tp * l.pp, " (set --dp, --tp, --pp)");
  l.dp = world_size / (l.tp * l.pp);
  return l;
}

void validate(const ParallelLayout& given, int world_size) {
  const ParallelLayout l = resolve(given, world_size);
  DSV3_CHECK(l.dp >= 1 && l.tp >= 1 && l.pp >= 1 && l.ep >= 1,
             "parallel layout ", describe(l), ": every degree must be at least 1");
  DSV3_CHECK(l.dp * l.tp * l.pp == world_size, "parallel layout ", describe(l),
             " needs dp * tp * pp = ", l.dp * l.tp * l.pp, " ranks, but the world has ", world_size);
  DSV3_CHECK(l.dp % l.ep == 0, "parallel layout ", describe(l), ": ep (", l.ep,
             ") must divide dp (", l.dp,
             "): expert parallelism is carved out of the data-parallel ranks");
}

std::string describe(const ParallelLayout& l) {
  return cat("dp ", l.dp, " x tp ", l.tp, " x pp ", l.pp, ", ep ", l.ep);
}

RankCoords rank_coords(const ParallelLayout& l, int rank) {
  RankCoords c;
  c.tp = rank % l.tp;
  c.dp = (rank / l.tp) % l.dp;
  c.pp = rank / (l.tp * l.dp);
  c.ep = c.dp % l.ep;
  c.edp = c.dp / l.ep;
  return c;
}

int rank_at(const ParallelLayout& l, int dp, int tp, int pp) {
  return tp + l.tp * (dp + l.dp * pp);
}

std::string ParallelGroups::describe() const {
  return cat("rank ", rank, ": dp ", at.dp, " tp ", at.tp, " pp ", at.pp, " ep ", at.ep);
}

ParallelGroups make_parallel_groups(const Comm& world, const ParallelLayout& given) {
  const ParallelLayout l = resolve(given, world.size());
  validate(l, world.size());
  ParallelGroups g;
  g.layout = l;
  g.rank = world.rank();
  g.at = rank_coords(l, g.rank);
  const RankCoords& c = g.at;
  // Colors number the groups; keys order each group by its own dimension. Every rank makes the
  // same calls in the same order (split is collective).
  const int tp_pp = c.pp * l.tp + c.tp;  // the (tp, pp) position dp/ep/edp groups share
  g.tp = world.split(c.pp * l.dp + c.dp, c.tp);
  g.pp = world.split(c.dp * l.tp + c.tp, c.pp);
  g.dp = world.split(tp_pp, c.dp);
  g.ep = world.split(tp_pp * (l.dp / l.ep) + c.edp, c.ep);
  g.edp = world.split(tp_pp * l.ep + c.ep, c.edp);
  if (l.pp > 1) {
    const int pair = std::min(c.pp, l.pp - 1 - c.pp);  // stages s and P-1-s
    g.dp_mirror = world.split(pair * l.tp + c.tp, c.pp * l.dp + c.dp);
    g.edp_mirror = world.split((pair * l.tp + c.tp) * l.ep + c.ep, c.pp * (l.dp / l.ep) + c.edp);
  }
  return g;
}

void require_single_process(const char* what) {
  const int n = world().size();
  DSV3_CHECK(n == 1, "dsv3 ", what, " was started as ", n, " processes (mpirun/srun), but it runs "
             "as one process (train and curate are the distributed commands): each process would "
             "do the whole job alone. Run it as one process");
}

}  // namespace dsv3::dist

#include "model/moe_layer.h"

#include <cstring>

#include "ops/gemm.h"

namespace dsv3 {

MoeWeights bind_moe(const ParamTable& t, float* base, const std::string& p, const ModelConfig& c) {
  MoeWeights w;
  w.gate = base + t.at(p + ".mlp.gate.weight").offset;
  if (const ParamInfo* b = t.find(p + ".mlp.gate.e_score_correction_bias")) w.bias = base + b->offset;
  for (int e = 0; e < c.experts; e++)
    w.experts.push_back(bind_ffn(t, base, p + ".mlp.experts." + std::to_string(e)));
  if (c.shared_experts > 0) w.shared = bind_ffn(t, base, p + ".mlp.shared_experts");
  return w;
}

void alloc_moe_acts(MoeActs& a, Arena& ar, const ModelConfig& c, Dims d) {
  const size_t N = d.N(), E = c.experts, K = c.topk, NK = N * K, C = c.hidden;
  a.logits = ar.f(N * E);
  a.scores = ar.f(N * E);
  a.gates = ar.f(N * K);
  a.idx = ar.i32(N * K);
  a.slot_token = ar.i32(NK);
  a.slot_of = ar.i32(NK);
  a.offsets = ar.i32(E + 1);
  a.xp = ar.f(NK * C);
  alloc_ffn_acts(a.expert, ar, NK, c.moe_inter);
  a.outp = ar.f(NK * C);
  if (c.shared_experts > 0) {
    alloc_ffn_acts(a.shared, ar, N, c.shared_experts * c.moe_inter);
  }
}

void alloc_moe_scratch(MoeScratch& s, Arena& ar, const ModelConfig& c, Dims d) {
  const size_t N = d.N(), NK = N * c.topk, C = c.hidden;
  s.dlogits = ar.f(N * c.experts);
  s.dgates = ar.f(N * c.topk);
  s.doutp = ar.f(NK * C);
  s.dxp = ar.f(NK * C);
  s.expert.dh13 = ar.f(NK * 2 * c.moe_inter);
  s.expert.dact = ar.f(NK * c.moe_inter);
}

RouterShape router_shape(const ModelConfig& c, const TrainingLossConfig& l, Dims d) {
  RouterShape s;
  s.N = d.N();
  s.E = c.experts;
  s.K = c.topk;
  s.groups = c.groups;
  s.topk_groups = c.topk_groups;
  s.segment = l.balance_scope == BalanceScope::Sequence ? d.T : d.N();
  s.sigmoid = c.router == RouterKind::Sigmoid;
  s.norm_topk = c.norm_topk;
  s.route_scale = c.route_scale;
  s.balance_alpha = l.balance_alpha;
  return s;
}

namespace {
// Offset of expert e's rows inside the expert-sorted (N*K, width) buffers.
inline size_t rows_at(const MoeActs& a, int e, int width) { return size_t(a.offsets[e]) * width; }
}  // namespace

void moe_forward(const Exec& ex, float* y, const float* x, const MoeWeights& w, MoeActs& a,
                 MoeStats& stats, const ModelConfig& c, const TrainingLossConfig& l, Dims d,
                 bool count_loads) {
  const int N = d.N(), C = c.hidden, E = c.experts, K = c.topk, D = c.moe_inter;
  linear_forward(ex, a.logits, x, w.gate, N, C, E);
  std::vector<int64_t> loads(E, 0);
  stats.balance_loss = router_forward(ex, a.idx, a.gates, a.scores, loads.data(), a.logits,
                                      w.bias, router_shape(c, l, d));
  if (count_loads) {
    if (stats.loads.size() != size_t(E)) stats.loads.assign(E, 0);
    for (int e = 0; e < E; e++) stats.loads[e] += loads[e];
  }
  moe_permutation(a.slot_token, a.slot_of, a.offsets, a.idx, N, K, E);
  moe_gather(ex, a.xp, x, a.slot_token, N * K, C);
  for (int e = 0; e < E; e++) {  // each expert: one GEMM chain over its contiguous rows
    const int rows = a.offsets[e + 1] - a.offsets[e];
    if (rows == 0) continue;
    FfnActs fa{a.expert.h13 + rows_at(a, e, 2 * D), a.expert.act + rows_at(a, e, D)};
    ffn_forward(ex, a.outp + rows_at(a, e, C), a.xp + rows_at(a, e, C), w.experts[e], fa, rows, C);
  }
  if (c.shared_experts > 0) {
    ffn_forward(ex, y, x, w.shared, a.shared, N, C);
    moe_combine(ex, y, a.outp, a.gates, a.slot_of, N, K, C, /*accumulate=*/true);
  } else {
    moe_combine(ex, y, a.outp, a.gates, a.slot_of, N, K, C, /*accumulate=*/false);
  }
}

void moe_backward(const Exec& ex, float* dx, const float* dy, const float* x, const MoeWeights& w,
                  const MoeWeights& g, const MoeActs& a, MoeScratch& s, FfnScratch& shared_scratch,
                  double dbalance, const ModelConfig& c, const TrainingLossConfig& l, Dims d) {
  const int N = d.N(), C = c.hidden, E = c.experts, K = c.topk, D = c.moe_inter;
  if (c.shared_experts > 0)
    ffn_backward(ex, dx, dy, x, w.shared, g.shared, a.shared, shared_scratch, N, C);
  moe_combine_backward(ex, s.doutp, s.dgates, dy, a.outp, a.gates, a.slot_of, N, K, C);
  std::memset(s.dxp, 0, size_t(N) * K * C * sizeof(float));
  for (int e = 0; e < E; e++) {
    const int rows = a.offsets[e + 1] - a.offsets[e];
    if (rows == 0) continue;
    FfnActs fa{a.expert.h13 + rows_at(a, e, 2 * D), a.expert.act + rows_at(a, e, D)};
    FfnScratch fs{s.expert.dh13 + rows_at(a, e, 2 * D), s.expert.dact + rows_at(a, e, D)};
    ffn_backward(ex, s.dxp + rows_at(a, e, C), s.doutp + rows_at(a, e, C), a.xp + rows_at(a, e, C),
                 w.experts[e], g.experts[e], fa, fs, rows, C);
  }
  moe_scatter_add(ex, dx, s.dxp, a.slot_of, N, K, C);
  std::memset(s.dlogits, 0, size_t(N) * E * sizeof(float));
  router_backward(ex, s.dlogits, s.dgates, dbalance, a.scores, a.idx, router_shape(c, l, d));
  linear_backward(ex, dx, g.gate, s.dlogits, x, w.gate, N, C, E);
}

}  // namespace dsv3

#include "model/moe_layer.h"

#include "ops/elementwise.h"
#include "ops/gemm.h"
#include "ops/swiglu.h"

namespace dsv3 {

MoeParams bind_moe(const ParamTable& t, const Tensor& base, const Tensor& buffers,
                   const std::string& p, const ModelConfig& c) {
  MoeParams w;
  const ParamInfo& gate = t.at(p + ".mlp.gate.weight");
  w.gate = base.slice(gate.offset, gate.numel);
  if (const ParamInfo* b = t.find(p + ".mlp.gate.e_score_correction_bias"))
    w.bias = buffers ? buffers.slice(b->buffer_offset, b->numel) : base.slice(b->offset, b->numel);
  w.inter = c.moe_inter;
  if (c.experts > 0) {
    const std::string e0 = p + ".mlp.experts.0";
    const size_t g0 = t.at(e0 + ".gate_proj.weight").offset, d0 = t.at(e0 + ".down_proj.weight").offset;
    w.expert_stride = c.experts > 1 ? t.at(p + ".mlp.experts.1.gate_proj.weight").offset - g0 : 0;
    for (int e = 0; e < c.experts; e++) {  // the grouped GEMMs need one stride for every expert
      const std::string pe = p + ".mlp.experts." + std::to_string(e);
      bind_ffn(t, base, pe);  // checks gate/up adjacency
      DSV3_CHECK(t.at(pe + ".gate_proj.weight").offset == g0 + e * w.expert_stride &&
                     t.at(pe + ".down_proj.weight").offset == d0 + e * w.expert_stride,
                 "internal: experts of ", p, " are not laid out with a uniform stride");
    }
    // sizes from the table (an int8 model's float table has its experts without storage)
    const size_t span = (c.experts - 1) * w.expert_stride;
    w.experts_w13 = base.slice(g0, span + 2 * t.at(e0 + ".gate_proj.weight").numel);
    w.experts_w2 = base.slice(d0, span + t.at(e0 + ".down_proj.weight").numel);
  }
  if (c.shared_experts > 0) w.shared = bind_ffn(t, base, p + ".mlp.shared_experts");
  return w;
}

void alloc_moe_acts(MoeActs& a, Arena& ar, const ModelConfig& c, DType t, Dims d) {
  const size_t N = d.N(), E = c.experts, K = c.topk, NK = N * K, C = c.hidden;
  const DType acc = accum_dtype(t);
  a.logits = ar.take(acc, N * E);
  a.scores = ar.take(acc, N * E);
  a.gates = ar.take(acc, N * K);
  a.idx = ar.take(DType::I32, N * K);
  a.slot_token = ar.take(DType::I32, NK);
  a.slot_of = ar.take(DType::I32, NK);
  a.offsets = ar.take(DType::I32, E + 1);
  a.xp = ar.take(t, NK * C);
  alloc_ffn_acts(a.expert, ar, t, NK, c.moe_inter);
  a.outp = ar.take(t, NK * C);
  if (c.shared_experts > 0) alloc_ffn_acts(a.shared, ar, t, N, c.shared_experts * c.moe_inter);
}

void alloc_moe_scratch(MoeScratch& s, Arena& ar, const ModelConfig& c, DType t, Dims d) {
  const size_t N = d.N(), NK = N * c.topk, C = c.hidden;
  const DType acc = accum_dtype(t);
  s.dlogits = ar.take(acc, N * c.experts);
  if (t != acc) s.dlogits_t = ar.take(t, N * c.experts);
  s.dgates = ar.take(acc, N * c.topk);
  s.doutp = ar.take(t, NK * C);
  s.dxp = ar.take(t, NK * C);
  alloc_ffn_scratch(s.expert, ar, t, NK, c.moe_inter);
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
GroupedShape up_shape(const MoeParams& w, const ModelConfig& c) {
  return {c.experts, c.hidden, 2 * w.inter, w.expert_stride};
}
GroupedShape down_shape(const MoeParams& w, const ModelConfig& c) {
  return {c.experts, w.inter, c.hidden, w.expert_stride};
}
}  // namespace

void moe_forward(const Exec& ex, const Tensor& y, const Tensor& x, const MoeParams& w,
                 const MoeActs& a, const MoeStatsOut& st, const ModelConfig& c,
                 const TrainingLossConfig& l, Dims d) {
  const int N = d.N(), C = c.hidden, E = c.experts, K = c.topk, D = w.inter;
  linear_forward(ex, a.logits, x, w.gate, N, C, E);
  router_forward(ex, {a.idx, a.gates, a.scores, st.loads, st.stats}, a.logits, w.bias,
                 router_shape(c, l, d));
  moe_permutation(ex, a.slot_token, a.slot_of, a.offsets, a.idx, N, K, E);
  moe_gather(ex, a.xp, x, a.slot_token, N * K, C);
  grouped_linear_forward(ex, a.expert.h13, a.xp, w.experts_w13, a.offsets, up_shape(w, c));
  swiglu_forward(ex, a.expert.act, a.expert.h13, N * K, D);
  grouped_linear_forward(ex, a.outp, a.expert.act, w.experts_w2, a.offsets, down_shape(w, c));
  const bool shared = c.shared_experts > 0;
  if (shared) ffn_forward(ex, y, x, w.shared, a.shared, N, C);
  moe_combine(ex, y, a.outp, a.gates, a.slot_of, N, K, C, /*accumulate=*/shared);
}

void moe_backward(const Exec& ex, const Tensor& dx, const Tensor& dy, const Tensor& x,
                  const MoeParams& w, const MoeParams& g, const MoeActs& a, const MoeScratch& s,
                  const FfnScratch& shared_scratch, double dbalance, const ModelConfig& c,
                  const TrainingLossConfig& l, Dims d) {
  const int N = d.N(), C = c.hidden, E = c.experts, K = c.topk, D = w.inter;
  const size_t NK = size_t(N) * K;
  if (c.shared_experts > 0)
    ffn_backward(ex, dx, dy, x, w.shared, g.shared, a.shared, shared_scratch, N, C);
  moe_combine_backward(ex, s.doutp, s.dgates, dy, a.outp, a.gates, a.slot_of, N, K, C);
  const Tensor dact = s.expert.dact.slice(0, NK * D), dh13 = s.expert.dh13.slice(0, NK * 2 * D);
  grouped_linear_backward(ex, dact, g.experts_w2, s.doutp, a.expert.act, w.experts_w2, a.offsets,
                          down_shape(w, c), Write::Overwrite);
  swiglu_backward(ex, dh13, dact, a.expert.h13, N * K, D, Write::Overwrite);
  const Tensor dxp = s.dxp.slice(0, NK * C);
  grouped_linear_backward(ex, dxp, g.experts_w13, dh13, a.xp, w.experts_w13, a.offsets,
                          up_shape(w, c), Write::Overwrite);
  moe_scatter_add(ex, dx, dxp, a.slot_of, N, K, C);
  const Tensor dlogits = s.dlogits.slice(0, size_t(N) * E);
  backend::zero(ex, dlogits);
  router_backward(ex, dlogits, s.dgates, dbalance, a.scores, a.idx, router_shape(c, l, d));
  const Tensor dl = as_dtype(ex, dlogits, x.dtype, s.dlogits_t);
  linear_backward(ex, dx, g.gate, dl, x, w.gate, N, C, E);
}

}  // namespace dsv3

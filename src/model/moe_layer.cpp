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
  w.first_expert = t.expert_first;
  w.local_experts = t.expert_count;
  if (const size_t dot = p.rfind('.'); dot != std::string::npos && p.compare(0, dot, "model.layers") == 0)
    w.hf_layer = std::stoi(p.substr(dot + 1));
  if (c.experts > 0) {
    const int E0 = w.first_expert, EL = w.local_experts;
    const auto name = [&](int e) { return p + ".mlp.experts." + std::to_string(e); };
    const size_t g0 = t.at(name(E0) + ".gate_proj.weight").offset,
                 d0 = t.at(name(E0) + ".down_proj.weight").offset;
    w.expert_stride = EL > 1 ? t.at(name(E0 + 1) + ".gate_proj.weight").offset - g0 : 0;
    for (int e = 0; e < EL; e++) {  // the grouped GEMMs need one stride for every expert
      const std::string pe = name(E0 + e);
      bind_ffn(t, base, pe);  // checks gate/up adjacency
      DSV3_CHECK(t.at(pe + ".gate_proj.weight").offset == g0 + e * w.expert_stride &&
                     t.at(pe + ".down_proj.weight").offset == d0 + e * w.expert_stride,
                 "internal: experts of ", p, " are not laid out with a uniform stride");
    }
    // sizes from the table (an int8 model's float table has its experts without storage); EL:
    // the experts this process holds
    const size_t span = size_t(EL - 1) * w.expert_stride;
    w.experts_w13 = base.slice(g0, span + 2 * t.at(name(E0) + ".gate_proj.weight").numel);
    w.experts_w2 = base.slice(d0, span + t.at(name(E0) + ".down_proj.weight").numel);
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
// The grouped GEMMs run over the experts held here (all of them without expert parallelism).
GroupedShape up_shape(const MoeParams& w, const ModelConfig& c) {
  return {w.local_experts, c.hidden, 2 * w.inter, w.expert_stride};
}
GroupedShape down_shape(const MoeParams& w, const ModelConfig& c) {
  return {w.local_experts, w.inter, c.hidden, w.expert_stride};
}
}  // namespace

void alloc_expert_side(ExpertSide& s, Arena& kept, Arena& scratch, const ModelConfig& c,
                       DType t, int rows, int local_experts) {
  const size_t R = size_t(rows), C = c.hidden;
  s.rows = rows;
  s.offsets = kept.take(DType::I32, size_t(local_experts) + 1);
  s.xp = kept.take(t, R * C);
  alloc_ffn_acts(s.acts, kept, t, R, c.moe_inter);
  s.out = scratch.take(t, R * C);
  s.dxp = scratch.take(t, R * C);
  alloc_ffn_scratch(s.scratch, scratch, t, R, c.moe_inter);
}

namespace {
bool all_local(const MoeParams& w, const ModelConfig& c) { return w.local_experts == c.experts; }
ExpertExchange& exchange_of(ExpertExchange* ep) {
  DSV3_CHECK(ep, "internal: an MoE layer holding a shard of the experts needs an expert "
             "exchange (the workspace has none)");
  return *ep;
}
// The replicas' grouped GEMMs run over the side's last rows with the exchange's copies.
GroupedShape replica_up(const ExpertReplicas& r, const MoeParams& w, const ModelConfig& c) {
  return {r.experts, c.hidden, 2 * w.inter, r.stride};
}
GroupedShape replica_down(const ExpertReplicas& r, const MoeParams& w, const ModelConfig& c) {
  return {r.experts, w.inter, c.hidden, r.stride};
}
bool has_replica_rows(const ExpertSide& s) { return s.replicas.experts > 0 && s.replicas.rows > 0; }
}  // namespace

void moe_forward(const Exec& ex, const Tensor& y, const Tensor& x, const MoeParams& w,
                 const MoeActs& a, const MoeStatsOut& st, const ModelConfig& c,
                 const TrainingLossConfig& l, Dims d, ExpertExchange* ep) {
  const int N = d.N(), C = c.hidden, E = c.experts, K = c.topk, D = w.inter;
  linear_forward(ex, a.logits, x, w.gate, N, C, E);
  router_forward(ex, {a.idx, a.gates, a.scores, st.loads, st.stats}, a.logits, w.bias,
                 router_shape(c, l, d));
  moe_permutation(ex, a.slot_token, a.slot_of, a.offsets, a.idx, N, K, E);
  moe_gather(ex, a.xp, x, a.slot_token, N * K, C);
  if (all_local(w, c)) {
    grouped_linear_forward(ex, a.expert.h13, a.xp, w.experts_w13, a.offsets, up_shape(w, c));
    swiglu_forward(ex, a.expert.act, a.expert.h13, N * K, D);
    grouped_linear_forward(ex, a.outp, a.expert.act, w.experts_w2, a.offsets, down_shape(w, c));
  } else {  // expert parallel: the rows of other ranks' experts travel there and back
    ExpertExchange& xc = exchange_of(ep);
    const ExpertSide& s = xc.dispatch(ex, &a, w.hf_layer, a.xp, a.offsets, N * K, C);
    const ExpertReplicas& r = s.replicas;
    const size_t h = size_t(s.rows - r.rows), n = size_t(r.rows);  // own rows, then replicas'
    grouped_linear_forward(ex, s.acts.h13, s.xp, w.experts_w13, s.offsets, up_shape(w, c));
    if (has_replica_rows(s))
      grouped_linear_forward(ex, s.acts.h13.slice(h * 2 * D, n * 2 * D), s.xp.slice(h * C, n * C),
                             r.w13, r.offsets, replica_up(r, w, c));
    swiglu_forward(ex, s.acts.act, s.acts.h13, s.rows, D);
    grouped_linear_forward(ex, s.out, s.acts.act, w.experts_w2, s.offsets, down_shape(w, c));
    if (has_replica_rows(s))
      grouped_linear_forward(ex, s.out.slice(h * C, n * C), s.acts.act.slice(h * D, n * D), r.w2,
                             r.offsets, replica_down(r, w, c));
    xc.combine(ex, &a, s.out, a.outp);
  }
  const bool shared = c.shared_experts > 0;
  if (shared) ffn_forward(ex, y, x, w.shared, a.shared, N, C);
  moe_combine(ex, y, a.outp, a.gates, a.slot_of, N, K, C, /*accumulate=*/shared);
}

void moe_backward(const Exec& ex, const Tensor& dx, const Tensor& dy, const Tensor& x,
                  const MoeParams& w, const MoeParams& g, const MoeActs& a, const MoeScratch& s,
                  const FfnScratch& shared_scratch, double dbalance, const ModelConfig& c,
                  const TrainingLossConfig& l, Dims d, ExpertExchange* ep, TensorParallel* tp,
                  bool sp_rows) {
  const int N = d.N(), C = c.hidden, E = c.experts, K = c.topk, D = w.inter;
  const size_t NK = size_t(N) * K;
  if (c.shared_experts > 0)
    ffn_backward(ex, dx, dy, x, w.shared, g.shared, a.shared, shared_scratch, N, C);
  moe_combine_backward(ex, s.doutp, s.dgates, dy, a.outp, a.gates, a.slot_of, N, K, C);
  tp_sum(tp, ex, s.dgates.slice(0, NK));  // <dy, expert output>: each rank has its slice's part
  const Tensor dxp = s.dxp.slice(0, NK * C);
  if (all_local(w, c)) {
    const Tensor dact = s.expert.dact.slice(0, NK * D), dh13 = s.expert.dh13.slice(0, NK * 2 * D);
    grouped_linear_backward(ex, dact, g.experts_w2, s.doutp, a.expert.act, w.experts_w2,
                            a.offsets, down_shape(w, c), Write::Overwrite);
    swiglu_backward(ex, dh13, dact, a.expert.h13, N * K, D, Write::Overwrite);
    grouped_linear_backward(ex, dxp, g.experts_w13, dh13, a.xp, w.experts_w13, a.offsets,
                            up_shape(w, c), Write::Overwrite);
  } else {
    ExpertExchange& xc = exchange_of(ep);
    const ExpertSide& e = xc.side(&a);
    const size_t R = size_t(e.rows);
    const Tensor dout = e.out.slice(0, R * C), edxp = e.dxp.slice(0, R * C);
    const Tensor dact = e.scratch.dact.slice(0, R * D), dh13 = e.scratch.dh13.slice(0, R * 2 * D);
    const ExpertReplicas& r = e.replicas;
    const size_t h = size_t(e.rows - r.rows), n = size_t(r.rows);  // own rows, then replicas'
    xc.dispatch_rows(ex, &a, s.doutp.slice(0, NK * C), dout);
    grouped_linear_backward(ex, dact, g.experts_w2, dout, e.acts.act, w.experts_w2, e.offsets,
                            down_shape(w, c), Write::Overwrite);
    if (has_replica_rows(e))
      grouped_linear_backward(ex, dact.slice(h * D, n * D), r.g2, dout.slice(h * C, n * C),
                              e.acts.act.slice(h * D, n * D), r.w2, r.offsets,
                              replica_down(r, w, c), Write::Overwrite);
    swiglu_backward(ex, dh13, dact, e.acts.h13, e.rows, D, Write::Overwrite);
    grouped_linear_backward(ex, edxp, g.experts_w13, dh13, e.xp, w.experts_w13, e.offsets,
                            up_shape(w, c), Write::Overwrite);
    if (has_replica_rows(e))
      grouped_linear_backward(ex, edxp.slice(h * C, n * C), r.g13, dh13.slice(h * 2 * D, n * 2 * D),
                              e.xp.slice(h * C, n * C), r.w13, r.offsets, replica_up(r, w, c),
                              Write::Overwrite);
    xc.combine(ex, &a, edxp, dxp);
    xc.return_replica_grads(ex, &a, g);
  }
  moe_scatter_add(ex, dx, dxp, a.slot_of, N, K, C);
  if (!sp_rows) tp_sum(tp, ex, dx.slice(0, size_t(N) * C));  // the experts' partial input gradients
  const Tensor dlogits = s.dlogits.slice(0, size_t(N) * E);
  backend::zero(ex, dlogits);
  router_backward(ex, dlogits, s.dgates, dbalance, a.scores, a.idx, router_shape(c, l, d));
  const Tensor dl = as_dtype(ex, dlogits, x.dtype, s.dlogits_t);
  if (sp_rows && tp && tp->size() > 1) {  // the weight's gradient from every row, dx on this rank's
    const size_t n = size_t(N / tp->size()), r = size_t(tp->rank());
    linear_backward(ex, Tensor{}, g.gate, dl, x, w.gate, N, C, E);
    linear_backward(ex, dx.slice(r * n * C, n * C), Tensor{}, dl.slice(r * n * E, n * E),
                    x.slice(r * n * C, n * C), w.gate, int(n), C, E);
  } else {
    linear_backward(ex, dx, g.gate, dl, x, w.gate, N, C, E);
  }
}

}  // namespace dsv3

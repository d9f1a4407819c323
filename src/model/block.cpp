#include "model/block.h"

#include <algorithm>

#include "ops/elementwise.h"
#include "ops/rmsnorm.h"

namespace dsv3 {

const char* recompute_name(Recompute r) {
  switch (r) {
    case Recompute::None: return "none";
    case Recompute::Selective: return "selective";
    case Recompute::Block: return "block";
  }
  return "?";
}
Recompute parse_recompute(const std::string& s) {
  if (s == "none" || s == "off") return Recompute::None;
  if (s == "selective") return Recompute::Selective;
  if (s == "block" || s == "full" || s == "on") return Recompute::Block;
  fail("unknown recompute mode '", s, "' (expected none, selective or block)");
}

BlockParams bind_block(const ParamTable& t, const Tensor& base, const Tensor& buffers,
                       int hf_layer, bool moe, const ModelConfig& c) {
  const std::string p = "model.layers." + std::to_string(hf_layer);
  auto at = [&](const std::string& name) {
    const ParamInfo& i = t.at(name);
    return base.slice(i.offset, i.numel);
  };
  BlockParams w;
  w.in_norm = at(p + ".input_layernorm.weight");
  w.attn = bind_attn(t, base, p);
  w.post_norm = at(p + ".post_attention_layernorm.weight");
  w.moe = moe;
  if (moe) w.moe_p = bind_moe(t, base, buffers, p, c);
  else w.dense = bind_ffn(t, base, p + ".mlp");
  return w;
}

void alloc_recomputable(BlockActs& a, Arena& ar, const ModelConfig& c, DType t, Dims d) {
  const size_t N = d.N(), C = c.hidden, H = c.heads;
  a.xn1 = ar.take(t, N * C);
  a.xn2 = ar.take(t, N * C);
  if (c.q_lora > 0) a.attn.qan = ar.take(t, N * c.q_lora);
  a.attn.q = ar.take(t, N * c.q_dim());
  a.attn.ckvn = ar.take(t, N * c.kv_lora);
  a.attn.kvb = ar.take(t, N * H * (c.qk_nope + c.v_head));
  a.attn.k = ar.take(t, N * c.q_dim());
  a.attn.v = ar.take(t, N * H * c.v_head);
}

void alloc_block_acts(BlockActs& a, Arena& ar, const ModelConfig& c, DType t, Dims d, bool moe,
                      const BlockActs* shared) {
  const size_t N = d.N(), C = c.hidden;
  const DType acc = accum_dtype(t);
  a = {};
  a.rstd1 = ar.take(acc, N);
  a.h1 = ar.take(t, N * C);
  a.rstd2 = ar.take(acc, N);
  if (shared) {
    a.xn1 = shared->xn1;
    a.xn2 = shared->xn2;
  } else {
    a.xn1 = ar.take(t, N * C);
    a.xn2 = ar.take(t, N * C);
  }
  alloc_attn_acts(a.attn, ar, c, t, d, shared ? &shared->attn : nullptr);
  if (moe) alloc_moe_acts(a.moe, ar, c, t, d);
  else alloc_ffn_acts(a.dense, ar, t, N, c.dense_inter);
}

void alloc_block_scratch(BlockScratch& s, Arena& ar, const ModelConfig& c, DType t, Dims d) {
  const size_t N = d.N(), C = c.hidden;
  s.dh1 = ar.take(t, N * C);
  s.dxn1 = ar.take(t, N * C);
  s.dxn2 = ar.take(t, N * C);
  alloc_attn_scratch(s.attn, ar, c, t, d);
  const int inter = std::max(c.dense_layers > 0 ? c.dense_inter : 0,
                             c.experts > 0 ? c.shared_experts * c.moe_inter : 0);
  alloc_ffn_scratch(s.ffn, ar, t, N, std::max(inter, 1));
  if (c.experts > 0) alloc_moe_scratch(s.moe, ar, c, t, d);
}

namespace {
struct SpRows {  // this rank's rows under sequence parallelism
  int n;         // N / tp
  size_t nC, at;  // n x C; where its block starts in an (N, C) buffer
};
SpRows sp_rows(const BlockCtx& k) {
  const int n = k.d.N() / k.tp->size();
  const size_t nC = size_t(n) * k.c.hidden;
  return {n, nC, size_t(k.tp->rank()) * nC};
}

// norm forward on this rank's rows into its block of `full`, then every rank's rows gathered
void norm_gather(const BlockCtx& k, const Tensor& full, const Tensor& rstd, const Tensor& x,
                 const Tensor& w) {
  const SpRows r = sp_rows(k);
  const int C = k.c.hidden;
  rmsnorm_forward(k.ex, full.slice(r.at, r.nC), rstd, x, w, {r.n, C, C, C}, float(k.c.rms_eps));
  k.tp->all_gather(k.ex, full.slice(0, size_t(k.d.N()) * C));
}

// dx += norm backward of this rank's rows; the weight's gradient summed over the tp ranks' rows
void norm_backward_sp(const BlockCtx& k, const Tensor& dx, const Tensor& g, const Tensor& dnorm,
                      const Tensor& x, const Tensor& w, const Tensor& rstd) {
  const SpRows r = sp_rows(k);
  const int C = k.c.hidden;
  const Tensor t = k.sp_normg.slice(0, size_t(C));
  backend::zero(k.ex, t);
  rmsnorm_backward(k.ex, dx, t, dnorm, x, w, rstd, {r.n, C, C, C});
  k.tp->all_reduce_sum(k.ex, t);
  add_inplace(k.ex, g, t);
}

void block_forward_sp(const BlockCtx& k, const Tensor& y, const Tensor& x, const BlockParams& w,
                      const BlockActs& a, const MoeStatsOut& st) {
  const SpRows r = sp_rows(k);
  const int N = k.d.N(), C = k.c.hidden;
  const size_t NC = size_t(N) * C;
  const Tensor full = k.sp_rows.slice(0, NC), xl = x.slice(0, r.nC);
  const Tensor h1 = a.h1.slice(0, r.nC), out = y.slice(0, r.nC);
  norm_gather(k, a.xn1, a.rstd1, xl, w.in_norm);
  mla_forward(k.ex, full, a.xn1, w.attn, a.attn, k.c, k.d, k.rope);
  k.tp->reduce_scatter(k.ex, full, h1);  // this rank's rows of the heads' summed outputs
  add_inplace(k.ex, h1, xl);
  norm_gather(k, a.xn2, a.rstd2, h1, w.post_norm);
  if (w.moe) moe_forward(k.ex, full, a.xn2, w.moe_p, a.moe, st, k.c, k.loss, k.d, k.experts);
  else ffn_forward(k.ex, full, a.xn2, w.dense, a.dense, N, C);
  k.tp->reduce_scatter(k.ex, full, out);
  add_inplace(k.ex, out, h1);
}

void block_backward_sp(const BlockCtx& k, const Tensor& dres, const Tensor& x, const BlockParams& w,
                       const BlockParams& g, const BlockActs& a, const BlockScratch& s,
                       double dbalance) {
  const SpRows r = sp_rows(k);
  const int N = k.d.N(), C = k.c.hidden;
  const size_t NC = size_t(N) * C;
  const bool selective = k.recompute == Recompute::Selective;
  const Tensor full = k.sp_rows.slice(0, NC), dy = dres.slice(0, r.nC), xl = x.slice(0, r.nC);
  const Tensor h1 = a.h1.slice(0, r.nC), dh1 = s.dh1.slice(0, r.nC);
  const Tensor dxn1 = s.dxn1.slice(0, NC), dxn2 = s.dxn2.slice(0, NC);
  // FFN half: every row's dy, the FFN's partial input gradient reduce-scattered to this rank's
  if (selective) norm_gather(k, a.xn2, a.rstd2, h1, w.post_norm);
  backend::copy(k.ex, full.slice(r.at, r.nC), dy);
  k.tp->all_gather(k.ex, full);
  backend::copy(k.ex, dh1, dy);
  backend::zero(k.ex, dxn2);
  if (w.moe)
    moe_backward(k.ex, dxn2, full, a.xn2, w.moe_p, g.moe_p, a.moe, s.moe, s.ffn, dbalance, k.c,
                 k.loss, k.d, k.experts, k.tp, /*sp_rows=*/true);
  else
    ffn_backward(k.ex, dxn2, full, a.xn2, w.dense, g.dense, a.dense, s.ffn, N, C);
  const Tensor dxn2_own = dxn1.slice(0, r.nC);  // dxn1 is free until the attention half
  k.tp->reduce_scatter(k.ex, dxn2, dxn2_own);
  norm_backward_sp(k, dh1, g.post_norm, dxn2_own, h1, w.post_norm, a.rstd2);
  // attention half: every row's dh1; MLA's input gradient comes out whole (its latents are
  // summed over tp inside), so this rank takes its rows
  if (selective) {
    norm_gather(k, a.xn1, a.rstd1, xl, w.in_norm);
    mla_recompute(k.ex, a.xn1, w.attn, a.attn, k.c, k.d, k.rope);
  }
  backend::copy(k.ex, full.slice(r.at, r.nC), dh1);
  k.tp->all_gather(k.ex, full);
  backend::copy(k.ex, dy, dh1);
  backend::zero(k.ex, dxn1);
  mla_backward(k.ex, dxn1, full, a.xn1, w.attn, g.attn, a.attn, s.attn, k.c, k.d, k.rope, k.tp);
  norm_backward_sp(k, dy, g.in_norm, dxn1.slice(r.at, r.nC), xl, w.in_norm, a.rstd1);
}
}  // namespace

void block_forward(const BlockCtx& k, const Tensor& y, const Tensor& x, const BlockParams& w,
                   const BlockActs& a, const MoeStatsOut& st) {
  if (k.sp) return block_forward_sp(k, y, x, w, a, st);
  const int N = k.d.N(), C = k.c.hidden;
  const float eps = float(k.c.rms_eps);
  const Tensor h1 = a.h1.slice(0, size_t(N) * C), out = y.slice(0, size_t(N) * C);
  rmsnorm_forward(k.ex, a.xn1, a.rstd1, x, w.in_norm, {N, C, C, C}, eps);
  mla_forward(k.ex, h1, a.xn1, w.attn, a.attn, k.c, k.d, k.rope);
  tp_sum(k.tp, k.ex, h1);  // o_proj is row-parallel: each tp rank holds its heads' share
  add_inplace(k.ex, h1, x);
  rmsnorm_forward(k.ex, a.xn2, a.rstd2, h1, w.post_norm, {N, C, C, C}, eps);
  if (w.moe) moe_forward(k.ex, out, a.xn2, w.moe_p, a.moe, st, k.c, k.loss, k.d, k.experts);
  else ffn_forward(k.ex, out, a.xn2, w.dense, a.dense, N, C);
  tp_sum(k.tp, k.ex, out);  // down_proj row-parallel: shared + routed partial sums, one reduce
  add_inplace(k.ex, out, h1);
}

void block_backward(const BlockCtx& k, const Tensor& dres, const Tensor& x, const BlockParams& w,
                    const BlockParams& g, const BlockActs& a, const BlockScratch& s,
                    double dbalance) {
  if (k.sp) return block_backward_sp(k, dres, x, w, g, a, s, dbalance);
  const int N = k.d.N(), C = k.c.hidden;
  const size_t NC = size_t(N) * C;
  const float eps = float(k.c.rms_eps);
  const bool selective = k.recompute == Recompute::Selective;
  const Tensor dy = dres.slice(0, NC), dh1 = s.dh1.slice(0, NC);
  const Tensor dxn1 = s.dxn1.slice(0, NC), dxn2 = s.dxn2.slice(0, NC);
  // FFN half: dh1 = dy + d(ffn(rmsnorm(h1)))/dh1
  if (selective) rmsnorm_forward(k.ex, a.xn2, a.rstd2, a.h1, w.post_norm, {N, C, C, C}, eps);
  backend::copy(k.ex, dh1, dy);
  backend::zero(k.ex, dxn2);
  if (w.moe)
    moe_backward(k.ex, dxn2, dy, a.xn2, w.moe_p, g.moe_p, a.moe, s.moe, s.ffn, dbalance, k.c,
                 k.loss, k.d, k.experts, k.tp);
  else {
    ffn_backward(k.ex, dxn2, dy, a.xn2, w.dense, g.dense, a.dense, s.ffn, N, C);
    tp_sum(k.tp, k.ex, dxn2);  // gate/up column-parallel: each rank's input gradient is partial
  }
  rmsnorm_backward(k.ex, dh1, g.post_norm, dxn2, a.h1, w.post_norm, a.rstd2, {N, C, C, C});
  // attention half: dx = dh1 + d(mla(rmsnorm(x)))/dx
  if (selective) {
    rmsnorm_forward(k.ex, a.xn1, a.rstd1, x, w.in_norm, {N, C, C, C}, eps);
    mla_recompute(k.ex, a.xn1, w.attn, a.attn, k.c, k.d, k.rope);
  }
  backend::copy(k.ex, dy, dh1);
  backend::zero(k.ex, dxn1);
  mla_backward(k.ex, dxn1, dh1, a.xn1, w.attn, g.attn, a.attn, s.attn, k.c, k.d, k.rope, k.tp);
  rmsnorm_backward(k.ex, dy, g.in_norm, dxn1, x, w.in_norm, a.rstd1, {N, C, C, C});
}

}  // namespace dsv3

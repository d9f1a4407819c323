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

void block_forward(const BlockCtx& k, const Tensor& y, const Tensor& x, const BlockParams& w,
                   const BlockActs& a, const MoeStatsOut& st) {
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

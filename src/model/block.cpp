#include "model/block.h"

#include <algorithm>
#include <cstring>

#include "ops/rmsnorm.h"

namespace dsv3 {

BlockWeights bind_block(const ParamTable& t, float* base, int hf_layer, bool moe,
                        const ModelConfig& c) {
  const std::string p = "model.layers." + std::to_string(hf_layer);
  BlockWeights w;
  w.in_norm = base + t.at(p + ".input_layernorm.weight").offset;
  w.attn = bind_attn(t, base, p);
  w.post_norm = base + t.at(p + ".post_attention_layernorm.weight").offset;
  w.moe = moe;
  if (moe) w.moe_w = bind_moe(t, base, p, c);
  else w.dense = bind_ffn(t, base, p + ".mlp");
  return w;
}

void alloc_block_acts(BlockActs& a, Arena& ar, const ModelConfig& c, Dims d, bool moe) {
  const size_t N = d.N(), C = c.hidden;
  a = {};
  a.xn1 = ar.f(N * C);
  a.rstd1 = ar.f(N);
  a.h1 = ar.f(N * C);
  a.xn2 = ar.f(N * C);
  a.rstd2 = ar.f(N);
  alloc_attn_acts(a.attn, ar, c, d);
  if (moe) alloc_moe_acts(a.moe, ar, c, d);
  else alloc_ffn_acts(a.dense, ar, N, c.dense_inter);
}

void alloc_block_scratch(BlockScratch& s, Arena& ar, const ModelConfig& c, Dims d) {
  const size_t N = d.N(), C = c.hidden;
  s.dh1 = ar.f(N * C);
  s.dxn1 = ar.f(N * C);
  s.dxn2 = ar.f(N * C);
  alloc_attn_scratch(s.attn, ar, c, d);
  const int inter = std::max(c.dense_layers > 0 ? c.dense_inter : 0,
                             c.experts > 0 ? c.shared_experts * c.moe_inter : 0);
  s.ffn.dh13 = ar.f(N * 2 * std::max(inter, 1));
  s.ffn.dact = ar.f(N * std::max(inter, 1));
  if (c.experts > 0) alloc_moe_scratch(s.moe, ar, c, d);
}

void block_forward(const BlockCtx& k, float* y, const float* x, const BlockWeights& w,
                   BlockActs& a, MoeStats& stats, bool count_loads) {
  const int N = k.d.N(), C = k.c.hidden;
  const size_t NC = size_t(N) * C;
  const float eps = float(k.c.rms_eps);
  rmsnorm_forward(k.ex, a.xn1, a.rstd1, x, w.in_norm, {N, C, C, C}, eps);
  mla_forward(k.ex, a.h1, a.xn1, w.attn, a.attn, k.c, k.d, k.rope);
#pragma omp parallel for simd schedule(static)
  for (size_t i = 0; i < NC; i++) a.h1[i] += x[i];
  rmsnorm_forward(k.ex, a.xn2, a.rstd2, a.h1, w.post_norm, {N, C, C, C}, eps);
  if (w.moe) moe_forward(k.ex, y, a.xn2, w.moe_w, a.moe, stats, k.c, k.loss, k.d, count_loads);
  else ffn_forward(k.ex, y, a.xn2, w.dense, a.dense, N, C);
#pragma omp parallel for simd schedule(static)
  for (size_t i = 0; i < NC; i++) y[i] += a.h1[i];
}

void block_backward(const BlockCtx& k, float* dres, const float* x, const BlockWeights& w,
                    const BlockWeights& g, const BlockActs& a, BlockScratch& s, double dbalance) {
  const int N = k.d.N(), C = k.c.hidden;
  const size_t bytes = size_t(N) * C * sizeof(float);
  // FFN half: dh1 = dy + d(ffn(rmsnorm(h1)))/dh1
  std::memcpy(s.dh1, dres, bytes);
  std::memset(s.dxn2, 0, bytes);
  if (w.moe)
    moe_backward(k.ex, s.dxn2, dres, a.xn2, w.moe_w, g.moe_w, a.moe, s.moe, s.ffn, dbalance, k.c,
                 k.loss, k.d);
  else
    ffn_backward(k.ex, s.dxn2, dres, a.xn2, w.dense, g.dense, a.dense, s.ffn, N, C);
  rmsnorm_backward(k.ex, s.dh1, g.post_norm, s.dxn2, a.h1, w.post_norm, a.rstd2, {N, C, C, C});
  // attention half: dx = dh1 + d(mla(rmsnorm(x)))/dx
  std::memcpy(dres, s.dh1, bytes);
  std::memset(s.dxn1, 0, bytes);
  mla_backward(k.ex, s.dxn1, s.dh1, a.xn1, w.attn, g.attn, a.attn, s.attn, k.c, k.d, k.rope);
  rmsnorm_backward(k.ex, dres, g.in_norm, s.dxn1, x, w.in_norm, a.rstd1, {N, C, C, C});
}

}  // namespace dsv3

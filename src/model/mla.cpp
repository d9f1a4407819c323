#include "model/mla.h"

#include <cstring>

#include "ops/attention.h"
#include "ops/gemm.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"

namespace dsv3 {

AttnWeights bind_attn(const ParamTable& t, float* base, const std::string& p) {
  auto get = [&](const char* name) -> float* {
    const ParamInfo* info = t.find(p + ".self_attn." + name + ".weight");
    return info ? base + info->offset : nullptr;
  };
  return {get("q_a_proj"), get("q_a_layernorm"), get("q_b_proj"), get("q_proj"),
          get("kv_a_proj_with_mqa"), get("kv_a_layernorm"), get("kv_b_proj"), get("o_proj")};
}

void alloc_attn_acts(AttnActs& a, Arena& ar, const ModelConfig& c, Dims d) {
  const size_t N = d.N(), H = c.heads;
  a = {};
  if (c.q_lora > 0) {
    a.qa = ar.f(N * c.q_lora);
    a.qa_rstd = ar.f(N);
    a.qan = ar.f(N * c.q_lora);
  }
  a.q = ar.f(N * c.q_dim());
  a.kv = ar.f(N * (c.kv_lora + c.qk_rope));
  a.kv_rstd = ar.f(N);
  a.ckvn = ar.f(N * c.kv_lora);
  a.kvb = ar.f(N * H * (c.qk_nope + c.v_head));
  a.k = ar.f(N * c.q_dim());
  a.v = ar.f(N * H * c.v_head);
  a.probs = ar.f(size_t(d.B) * H * d.T * d.T);
  a.ao = ar.f(N * H * c.v_head);
}

void alloc_attn_scratch(AttnScratch& s, Arena& ar, const ModelConfig& c, Dims d) {
  const size_t N = d.N(), H = c.heads;
  s.dq = ar.f(N * c.q_dim());
  s.dkv = ar.f(N * (c.kv_lora + c.qk_rope));
  s.dkvb = ar.f(N * H * (c.qk_nope + c.v_head));
  s.dk = ar.f(N * c.q_dim());
  s.dv = ar.f(N * H * c.v_head);
  s.dao = ar.f(N * H * c.v_head);
  s.dqa = c.q_lora > 0 ? ar.f(N * c.q_lora) : nullptr;
  s.dqan = c.q_lora > 0 ? ar.f(N * c.q_lora) : nullptr;
  s.dckvn = ar.f(N * c.kv_lora);
}

RopeTables make_rope_tables(const ModelConfig& c, int T) {
  RopeTables r;
  r.cos.resize(size_t(T) * c.qk_rope / 2);
  r.sin.resize(r.cos.size());
  cpu::rope_tables<float>(r.cos.data(), r.sin.data(), T, c.rope());
  r.scale = c.attention_scale();
  return r;
}

namespace {
// RoPE slices: q has H heads of dqk with the rotary part after qk_nope; kv has one rotary key
// after the kv_lora latent.
RopeLayout q_rope_layout(const ModelConfig& c, Dims d) {
  return {d.N(), d.T, c.heads, c.q_dim(), c.qk_head(), c.qk_nope, c.qk_rope};
}
RopeLayout k_rope_layout(const ModelConfig& c, Dims d) {
  const int w = c.kv_lora + c.qk_rope;
  return {d.N(), d.T, 1, w, w, c.kv_lora, c.qk_rope};
}
}  // namespace

void mla_forward(const Exec& ex, float* out, const float* x, const AttnWeights& w, AttnActs& a,
                 const ModelConfig& c, Dims d, const RopeTables& rope) {
  const int N = d.N(), C = c.hidden, H = c.heads, nope = c.qk_nope, R = c.qk_rope;
  const int dqk = c.qk_head(), dv = c.v_head, kvw = c.kv_lora + R, kvbw = nope + dv;
  if (c.q_lora > 0) {
    linear_forward(ex, a.qa, x, w.q_a, N, C, c.q_lora);
    rmsnorm_forward(ex, a.qan, a.qa_rstd, a.qa, w.q_a_norm, {N, c.q_lora, c.q_lora, c.q_lora},
                    float(c.rms_eps));
    linear_forward(ex, a.q, a.qan, w.q_b, N, c.q_lora, c.q_dim());
  } else {
    linear_forward(ex, a.q, x, w.q_proj, N, C, c.q_dim());
  }
  linear_forward(ex, a.kv, x, w.kv_a, N, C, kvw);
  rmsnorm_forward(ex, a.ckvn, a.kv_rstd, a.kv, w.kv_a_norm, {N, c.kv_lora, kvw, c.kv_lora},
                  float(c.rms_eps));
  linear_forward(ex, a.kvb, a.ckvn, w.kv_b, N, c.kv_lora, H * kvbw);
  rope_forward(ex, a.q, rope.cos.data(), rope.sin.data(), q_rope_layout(c, d));
  rope_forward(ex, a.kv, rope.cos.data(), rope.sin.data(), k_rope_layout(c, d));
  // Per-head keys [k_nope_h | k_pe] and values, in the (N, H, d) layout attention reads.
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n++) {
    const float* kvb = a.kvb + size_t(n) * H * kvbw;
    const float* kpe = a.kv + size_t(n) * kvw + c.kv_lora;
    for (int h = 0; h < H; h++) {
      float* k = a.k + (size_t(n) * H + h) * dqk;
      std::memcpy(k, kvb + h * kvbw, sizeof(float) * nope);
      std::memcpy(k + nope, kpe, sizeof(float) * R);
      std::memcpy(a.v + (size_t(n) * H + h) * dv, kvb + h * kvbw + nope, sizeof(float) * dv);
    }
  }
  attention_forward(ex, a.ao, a.probs, a.q, a.k, a.v, {d.B, d.T, H, dqk, dv, rope.scale});
  linear_forward(ex, out, a.ao, w.o, N, H * dv, C);
}

void mla_backward(const Exec& ex, float* dx, const float* dout, const float* x,
                  const AttnWeights& w, const AttnWeights& g, const AttnActs& a, AttnScratch& s,
                  const ModelConfig& c, Dims d, const RopeTables& rope) {
  const int N = d.N(), C = c.hidden, H = c.heads, nope = c.qk_nope, R = c.qk_rope;
  const int dqk = c.qk_head(), dv = c.v_head, kvw = c.kv_lora + R, kvbw = nope + dv;
  const size_t nq = size_t(N) * c.q_dim(), nv = size_t(N) * H * dv;
  std::memset(s.dao, 0, nv * sizeof(float));
  linear_backward(ex, s.dao, g.o, dout, a.ao, w.o, N, H * dv, C);
  std::memset(s.dq, 0, nq * sizeof(float));
  std::memset(s.dk, 0, nq * sizeof(float));
  std::memset(s.dv, 0, nv * sizeof(float));
  attention_backward(ex, s.dq, s.dk, s.dv, s.dao, a.q, a.k, a.v, a.probs,
                     {d.B, d.T, H, dqk, dv, rope.scale});
  // Un-assemble: dk_nope, dv -> dkvb; dk_pe summed over heads -> dkv's rotary slice.
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n++) {
    float* dkvb = s.dkvb + size_t(n) * H * kvbw;
    float* dkpe = s.dkv + size_t(n) * kvw + c.kv_lora;
    for (int r = 0; r < R; r++) dkpe[r] = 0;
    for (int h = 0; h < H; h++) {
      const float* dk = s.dk + (size_t(n) * H + h) * dqk;
      std::memcpy(dkvb + h * kvbw, dk, sizeof(float) * nope);
      std::memcpy(dkvb + h * kvbw + nope, s.dv + (size_t(n) * H + h) * dv, sizeof(float) * dv);
      for (int r = 0; r < R; r++) dkpe[r] += dk[nope + r];
    }
    for (int i = 0; i < c.kv_lora; i++) s.dkv[size_t(n) * kvw + i] = 0;
  }
  rope_backward(ex, s.dq, rope.cos.data(), rope.sin.data(), q_rope_layout(c, d));
  rope_backward(ex, s.dkv, rope.cos.data(), rope.sin.data(), k_rope_layout(c, d));
  // latent path: kvb = kv_b(rmsnorm(c_kv))
  std::memset(s.dckvn, 0, size_t(N) * c.kv_lora * sizeof(float));
  linear_backward(ex, s.dckvn, g.kv_b, s.dkvb, a.ckvn, w.kv_b, N, c.kv_lora, H * kvbw);
  rmsnorm_backward(ex, s.dkv, g.kv_a_norm, s.dckvn, a.kv, w.kv_a_norm, a.kv_rstd,
                   {N, c.kv_lora, kvw, c.kv_lora});
  linear_backward(ex, dx, g.kv_a, s.dkv, x, w.kv_a, N, C, kvw);
  // query path
  if (c.q_lora > 0) {
    const size_t nqa = size_t(N) * c.q_lora;
    std::memset(s.dqan, 0, nqa * sizeof(float));
    linear_backward(ex, s.dqan, g.q_b, s.dq, a.qan, w.q_b, N, c.q_lora, c.q_dim());
    std::memset(s.dqa, 0, nqa * sizeof(float));
    rmsnorm_backward(ex, s.dqa, g.q_a_norm, s.dqan, a.qa, w.q_a_norm, a.qa_rstd,
                     {N, c.q_lora, c.q_lora, c.q_lora});
    linear_backward(ex, dx, g.q_a, s.dqa, x, w.q_a, N, C, c.q_lora);
  } else {
    linear_backward(ex, dx, g.q_proj, s.dq, x, w.q_proj, N, C, c.q_dim());
  }
}

}  // namespace dsv3

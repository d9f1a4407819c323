#include "model/mla.h"

#include "ops/attention.h"
#include "ops/gemm.h"
#include "ops/mla_kv.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"
#include "ops/sparse_attention.h"

namespace dsv3 {

AttnParams bind_attn(const ParamTable& t, const Tensor& base, const std::string& p) {
  auto get = [&](const char* name) -> Tensor {
    const ParamInfo* info = t.find(p + ".self_attn." + name + ".weight");
    return info ? base.slice(info->offset, info->numel) : Tensor{};
  };
  return {get("q_a_proj"), get("q_a_layernorm"), get("q_b_proj"), get("q_proj"),
          get("kv_a_proj_with_mqa"), get("kv_a_layernorm"), get("kv_b_proj"), get("o_proj")};
}

void alloc_attn_acts(AttnActs& a, Arena& ar, const ModelConfig& c, DType t, Dims d,
                     const AttnActs* shared) {
  const size_t N = d.N(), H = c.heads;
  const DType acc = accum_dtype(t);
  a = {};
  if (c.q_lora > 0) {
    a.qa = ar.take(t, N * c.q_lora);
    a.qa_rstd = ar.take(acc, N);
  }
  a.kv = ar.take(t, N * (c.kv_lora + c.qk_rope));
  a.kv_rstd = ar.take(acc, N);
  if (c.attention == AttentionKind::Dense) {
    // P on the CPU, the log-sum-exp per row on CUDA (ops/attention.h)
    const AttentionSaved saved =
        attention_saved(ar.device, t, {d.B, d.T, c.heads, c.qk_head(), c.v_head, 1.0});
    a.probs = ar.take(saved.dtype, saved.numel);
  } else {  // window / LSH: P over each query's W keys or LSH slots (ops/sparse_attention.h)
    a.probs = ar.take(t, size_t(d.B) * H * d.T * c.attention_keys(d.T));
    if (c.attention == AttentionKind::Lsh) a.index = ar.take(DType::I32, size_t(d.B) * H * c.lsh_rounds * 2 * d.T);
  }
  a.ao = ar.take(t, N * H * c.v_head);
  if (shared) {
    a.qan = shared->qan, a.q = shared->q, a.ckvn = shared->ckvn;
    a.kvb = shared->kvb, a.k = shared->k, a.v = shared->v;
    return;
  }
  if (c.q_lora > 0) a.qan = ar.take(t, N * c.q_lora);
  a.q = ar.take(t, N * c.q_dim());
  a.ckvn = ar.take(t, N * c.kv_lora);
  a.kvb = ar.take(t, N * H * (c.qk_nope + c.v_head));
  a.k = ar.take(t, N * c.q_dim());
  a.v = ar.take(t, N * H * c.v_head);
}

void alloc_attn_scratch(AttnScratch& s, Arena& ar, const ModelConfig& c, DType t, Dims d) {
  const size_t N = d.N(), H = c.heads;
  s.dq = ar.take(t, N * c.q_dim());
  s.dkv = ar.take(t, N * (c.kv_lora + c.qk_rope));
  s.dkvb = ar.take(t, N * H * (c.qk_nope + c.v_head));
  s.dk = ar.take(t, N * c.q_dim());
  s.dv = ar.take(t, N * H * c.v_head);
  s.dao = ar.take(t, N * H * c.v_head);
  if (c.q_lora > 0) {
    s.dqa = ar.take(t, N * c.q_lora);
    s.dqan = ar.take(t, N * c.q_lora);
  }
  s.dckvn = ar.take(t, N * c.kv_lora);
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
MlaKvShape kv_shape(const ModelConfig& c, Dims d) {
  return {d.N(), c.heads, c.qk_nope, c.qk_rope, c.v_head, c.kv_lora};
}
AttentionShape attn_shape(const ModelConfig& c, Dims d, const RopeTables& rope) {
  return {d.B, d.T, c.heads, c.qk_head(), c.v_head, rope.scale};
}
size_t rows(Dims d, int width) { return size_t(d.N()) * width; }
SparseAttentionShape window_shape(const ModelConfig& c, Dims d, const RopeTables& rope) {
  return {d.B, d.T, c.heads, c.qk_head(), c.v_head, rope.scale, c.window, c.window};
}
LshAttentionShape lsh_shape(const ModelConfig& c, Dims d, const RopeTables& rope) {
  return {d.B,           d.T,          c.heads,     c.qk_head(), c.v_head,
          rope.scale,    c.lsh_buckets, c.lsh_rounds, c.lsh_chunk};
}

// The attention core of the configured pattern (M6): dense, window, or LSH (its bucket-sorted
// orders are made from this pass's q and k, then kept for backward).
void core_forward(const Exec& ex, const AttnActs& a, const ModelConfig& c, Dims d, const RopeTables& rope) {
  switch (c.attention) {
    case AttentionKind::Dense: return attention_forward(ex, a.ao, a.probs, a.q, a.k, a.v, attn_shape(c, d, rope));
    case AttentionKind::Window:
      return sparse_attention_forward(ex, a.ao, a.probs, a.q, a.k, a.v, Tensor{}, window_shape(c, d, rope));
    case AttentionKind::Lsh:
      return lsh_attention_forward(ex, a.ao, a.probs, a.index, a.q, a.k, a.v, rope.lsh_rot, lsh_shape(c, d, rope));
  }
}
void core_backward(const Exec& ex, const Tensor& dq, const Tensor& dk, const Tensor& dv,
                   const Tensor& dao, const AttnActs& a, const ModelConfig& c, Dims d,
                   const RopeTables& rope) {
  switch (c.attention) {
    case AttentionKind::Dense:
      return attention_backward(ex, dq, dk, dv, dao, a.q, a.k, a.v, a.ao, a.probs, attn_shape(c, d, rope));
    case AttentionKind::Window:
      return sparse_attention_backward(ex, dq, dk, dv, dao, a.q, a.k, a.v, a.probs, Tensor{}, window_shape(c, d, rope));
    case AttentionKind::Lsh:
      return lsh_attention_backward(ex, dq, dk, dv, dao, a.q, a.k, a.v, a.probs, a.index, lsh_shape(c, d, rope));
  }
}

// The up-projections from the saved pre-norm projections qa and kv (and the norms before them):
// shared by the forward and by selective recompute, so both produce the same bits.
void up_projections(const Exec& ex, const AttnParams& w, const AttnActs& a, const ModelConfig& c,
                    Dims d, const RopeTables& rope) {
  const int N = d.N(), H = c.heads, kvw = c.kv_lora + c.qk_rope;
  const float eps = float(c.rms_eps);
  if (c.q_lora > 0) {
    rmsnorm_forward(ex, a.qan, a.qa_rstd, a.qa, w.q_a_norm, {N, c.q_lora, c.q_lora, c.q_lora}, eps);
    linear_forward(ex, a.q, a.qan, w.q_b, N, c.q_lora, c.q_dim());
  }
  rmsnorm_forward(ex, a.ckvn, a.kv_rstd, a.kv, w.kv_a_norm, {N, c.kv_lora, kvw, c.kv_lora}, eps);
  linear_forward(ex, a.kvb, a.ckvn, w.kv_b, N, c.kv_lora, H * (c.qk_nope + c.v_head));
  rope_forward(ex, a.q, rope.cos, rope.sin, q_rope_layout(c, d));
  mla_kv_expand_forward(ex, a.k, a.v, a.kvb, a.kv, kv_shape(c, d));
}
}  // namespace

void mla_forward(const Exec& ex, const Tensor& out, const Tensor& x, const AttnParams& w,
                 const AttnActs& a, const ModelConfig& c, Dims d, const RopeTables& rope) {
  const int N = d.N(), C = c.hidden, H = c.heads, kvw = c.kv_lora + c.qk_rope;
  if (c.q_lora > 0) linear_forward(ex, a.qa, x, w.q_a, N, C, c.q_lora);
  else linear_forward(ex, a.q, x, w.q_proj, N, C, c.q_dim());
  linear_forward(ex, a.kv, x, w.kv_a, N, C, kvw);
  rope_forward(ex, a.kv, rope.cos, rope.sin, k_rope_layout(c, d));  // k_pe; the latent is untouched
  up_projections(ex, w, a, c, d, rope);
  core_forward(ex, a, c, d, rope);
  linear_forward(ex, out, a.ao, w.o, N, H * c.v_head, C);
}

void mla_recompute(const Exec& ex, const Tensor& x, const AttnParams& w, const AttnActs& a,
                   const ModelConfig& c, Dims d, const RopeTables& rope) {
  if (c.q_lora == 0) linear_forward(ex, a.q, x, w.q_proj, d.N(), c.hidden, c.q_dim());
  up_projections(ex, w, a, c, d, rope);
}

void mla_backward(const Exec& ex, const Tensor& dx, const Tensor& dout, const Tensor& x,
                  const AttnParams& w, const AttnParams& g, const AttnActs& a,
                  const AttnScratch& s, const ModelConfig& c, Dims d, const RopeTables& rope,
                  TensorParallel* tp) {
  const int N = d.N(), C = c.hidden, H = c.heads, kvw = c.kv_lora + c.qk_rope;
  const int kvbw = c.qk_nope + c.v_head;
  const Tensor dao = s.dao.slice(0, rows(d, H * c.v_head));
  linear_backward(ex, dao, g.o, dout, a.ao, w.o, N, H * c.v_head, C, Write::Overwrite);
  const Tensor dq = s.dq.slice(0, rows(d, c.q_dim())), dk = s.dk.slice(0, rows(d, c.q_dim()));
  const Tensor dv = s.dv.slice(0, rows(d, H * c.v_head));
  backend::zero(ex, dq);
  backend::zero(ex, dk);
  backend::zero(ex, dv);
  core_backward(ex, dq, dk, dv, dao, a, c, d, rope);
  // dk_nope, dv -> dkvb; dk_pe summed over heads -> dkv's rotary slice; dkv's latent zeroed
  mla_kv_expand_backward(ex, s.dkvb, s.dkv, dk, dv, kv_shape(c, d));
  rope_backward(ex, dq, rope.cos, rope.sin, q_rope_layout(c, d));
  rope_backward(ex, s.dkv, rope.cos, rope.sin, k_rope_layout(c, d));
  // latent path: kvb = kv_b(rmsnorm(c_kv))
  const Tensor dckvn = s.dckvn.slice(0, rows(d, c.kv_lora));
  linear_backward(ex, dckvn, g.kv_b, s.dkvb, a.ckvn, w.kv_b, N, c.kv_lora, H * kvbw, Write::Overwrite);
  tp_sum(tp, ex, dckvn);                         // this rank's heads' share of the latent's
  tp_sum(tp, ex, s.dkv.slice(0, rows(d, kvw)));  // and of k_pe's (its latent part is zero here)
  rmsnorm_backward(ex, s.dkv, g.kv_a_norm, dckvn, a.kv, w.kv_a_norm, a.kv_rstd,
                   {N, c.kv_lora, kvw, c.kv_lora});
  // q_proj (no q_lora) is column-parallel on x itself: under tp its share of dx is summed before
  // the replicated kv_a_proj adds its (whole) part
  const bool partial_dx = tp && tp->size() > 1 && c.q_lora == 0;
  if (partial_dx) {
    linear_backward(ex, dx, g.q_proj, dq, x, w.q_proj, N, C, c.q_dim());
    tp_sum(tp, ex, dx.slice(0, rows(d, C)));
  }
  linear_backward(ex, dx, g.kv_a, s.dkv, x, w.kv_a, N, C, kvw);
  // query path
  if (c.q_lora > 0) {
    const Tensor dqan = s.dqan.slice(0, rows(d, c.q_lora)), dqa = s.dqa.slice(0, rows(d, c.q_lora));
    linear_backward(ex, dqan, g.q_b, dq, a.qan, w.q_b, N, c.q_lora, c.q_dim(), Write::Overwrite);
    tp_sum(tp, ex, dqan);
    backend::zero(ex, dqa);
    rmsnorm_backward(ex, dqa, g.q_a_norm, dqan, a.qa, w.q_a_norm, a.qa_rstd,
                     {N, c.q_lora, c.q_lora, c.q_lora});
    linear_backward(ex, dx, g.q_a, dqa, x, w.q_a, N, C, c.q_lora);
  } else if (!partial_dx) {
    linear_backward(ex, dx, g.q_proj, dq, x, w.q_proj, N, C, c.q_dim());
  }
}

}  // namespace dsv3

// Multi-head latent attention, training path (M2). Math: docs/model.md "MLA".
#pragma once
#include <string>
#include <vector>

#include "backend/backend.h"
#include "model/arena.h"
#include "model/config.h"
#include "model/params.h"

namespace dsv3 {

struct AttnWeights {   // null where the config has no such tensor
  float* q_a;          // (q_lora, C)
  float* q_a_norm;     // (q_lora)
  float* q_b;          // (H*dqk, q_lora)
  float* q_proj;       // (H*dqk, C)        when q_lora == 0
  float* kv_a;         // (kv_lora + rope, C)
  float* kv_a_norm;    // (kv_lora)
  float* kv_b;         // (H*(nope+v), kv_lora)
  float* o;            // (C, H*v)
};
AttnWeights bind_attn(const ParamTable& t, float* base, const std::string& layer_prefix);

struct AttnActs {      // saved by forward for backward; N = B*T rows
  float* qa;           // (N, q_lora) pre-norm
  float* qa_rstd;      // (N)
  float* qan;          // (N, q_lora)
  float* q;            // (N, H*dqk) after RoPE
  float* kv;           // (N, kv_lora + rope), k_pe part after RoPE
  float* kv_rstd;      // (N)
  float* ckvn;         // (N, kv_lora) normalised latent
  float* kvb;          // (N, H*(nope+v))
  float* k;            // (N, H*dqk) per-head keys [k_nope | shared k_pe]
  float* v;            // (N, H*v)
  float* probs;        // (B, H, T, T)
  float* ao;           // (N, H*v) attention output before o_proj
};
void alloc_attn_acts(AttnActs& a, Arena& ar, const ModelConfig& c, Dims d);

struct AttnScratch {   // backward temporaries, shared by all layers
  float *dq, *dkv, *dkvb, *dk, *dv, *dao, *dqa, *dqan, *dckvn;
};
void alloc_attn_scratch(AttnScratch& s, Arena& ar, const ModelConfig& c, Dims d);

struct RopeTables {
  std::vector<float> cos, sin;  // (T, qk_rope/2)
  double scale = 1;             // softmax scale incl. the YaRN multiplier
};
RopeTables make_rope_tables(const ModelConfig& c, int T);

// out (N,C) = attention(x (N,C)), overwriting out.
void mla_forward(const Exec& ex, float* out, const float* x, const AttnWeights& w, AttnActs& a,
                 const ModelConfig& c, Dims d, const RopeTables& rope);
// dx += d/dx, g (gradients bound like the weights) +=.
void mla_backward(const Exec& ex, float* dx, const float* dout, const float* x,
                  const AttnWeights& w, const AttnWeights& g, const AttnActs& a, AttnScratch& s,
                  const ModelConfig& c, Dims d, const RopeTables& rope);

}  // namespace dsv3

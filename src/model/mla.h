// Multi-head latent attention, training path (M2). Math: docs/model.md "MLA".
#pragma once
#include <string>

#include "backend/backend.h"
#include "model/arena.h"
#include "model/config.h"
#include "model/params.h"
#include "model/tensor_parallel.h"

namespace dsv3 {

struct AttnParams {    // empty where the config has no such tensor
  Tensor q_a;          // (q_lora, C)
  Tensor q_a_norm;     // (q_lora)
  Tensor q_b;          // (H*dqk, q_lora)
  Tensor q_proj;       // (H*dqk, C)        when q_lora == 0
  Tensor kv_a;         // (kv_lora + rope, C)
  Tensor kv_a_norm;    // (kv_lora)
  Tensor kv_b;         // (H*(nope+v), kv_lora)
  Tensor o;            // (C, H*v)
};
AttnParams bind_attn(const ParamTable& t, const Tensor& base, const std::string& layer_prefix);

// Saved by forward for backward; N = B*T rows; compute dtype unless noted. The members marked
// (recomputable) are what `--recompute selective` does not keep per layer: they point into one
// set shared by all layers and are recomputed from qa and kv inside backward (mla_recompute).
struct AttnActs {
  Tensor qa;           // (N, q_lora) pre-norm
  Tensor qa_rstd;      // (N) accum
  Tensor qan;          // (N, q_lora)                  (recomputable)
  Tensor q;            // (N, H*dqk) after RoPE        (recomputable)
  Tensor kv;           // (N, kv_lora + rope), k_pe part after RoPE
  Tensor kv_rstd;      // (N) accum
  Tensor ckvn;         // (N, kv_lora) normalised latent  (recomputable)
  Tensor kvb;          // (N, H*(nope+v))              (recomputable)
  Tensor k;            // (N, H*dqk) [k_nope | shared k_pe]  (recomputable)
  Tensor v;            // (N, H*v)                     (recomputable)
  // saved by attention: dense, P (B, H, T, T) on the CPU and lse (B, H, T) on CUDA; window/LSH,
  // P (B, H, T, W) for a window, (B, H, rounds, T, 2 chunk + 1) for LSH
  Tensor probs;
  Tensor index;        // (B, H, rounds, 2, T) i32: LSH's bucket-sorted orders (empty otherwise)
  Tensor ao;           // (N, H*v) attention output before o_proj
};
// shared: where the recomputable members go (null: this layer's own memory).
void alloc_attn_acts(AttnActs& a, Arena& ar, const ModelConfig& c, DType t, Dims d,
                     const AttnActs* shared = nullptr);

struct AttnScratch {   // backward temporaries, shared by all layers
  Tensor dq, dkv, dkvb, dk, dv, dao, dqa, dqan, dckvn;
};
void alloc_attn_scratch(AttnScratch& s, Arena& ar, const ModelConfig& c, DType t, Dims d);

struct RopeTables {
  Tensor cos, sin;  // (T_max, qk_rope/2) accum: position t is row t
  double scale = 1;  // softmax scale incl. the YaRN multiplier
  Tensor lsh_rot;   // LSH attention: (H, rounds, dqk, buckets/2) f32 rotations (else empty)
};

// out (N,C) = attention(x (N,C)), overwriting out.
void mla_forward(const Exec& ex, const Tensor& out, const Tensor& x, const AttnParams& w,
                 const AttnActs& a, const ModelConfig& c, Dims d, const RopeTables& rope);
// Rebuilds the recomputable members of a from the saved qa and kv (selective recompute): the
// normalised latents, the up-projections q_b(...) and kv_b(...) (q_proj(x) without the query
// low-rank path), RoPE on q, keys and values. x: the attention input (N,C).
void mla_recompute(const Exec& ex, const Tensor& x, const AttnParams& w, const AttnActs& a,
                   const ModelConfig& c, Dims d, const RopeTables& rope);
// dx += d/dx, g (gradients bound like the weights) +=.
// tp: tensor parallelism (c holds this rank's heads; dout is whole). The latent down-projections
// and their norms are replicated, so the gradients reaching them from this rank's heads (dqan,
// the latent's and k_pe's) are summed over tp first: they, dx and the replicated weights'
// gradients are then whole and identical on every rank. Without q_lora the column-parallel
// q_proj's share of dx is summed instead; dx must then be zero on entry.
void mla_backward(const Exec& ex, const Tensor& dx, const Tensor& dout, const Tensor& x,
                  const AttnParams& w, const AttnParams& g, const AttnActs& a,
                  const AttnScratch& s, const ModelConfig& c, Dims d, const RopeTables& rope,
                  TensorParallel* tp = nullptr);

}  // namespace dsv3

// MLA's key/value assembly (training path): kv_b's output holds per head [k_nope | v]; the one
// rotary key k_pe (after RoPE, in the kv_a output row after the latent) is shared by all heads.
//   k[n,h] = [kvb[n,h,:nope] | kv[n, kv_lora:]]   (N, H, nope + rope)
//   v[n,h] =  kvb[n,h,nope:]                       (N, H, dv)
// so attention sees ordinary per-head keys and values. Storage dtype T throughout.
#pragma once
#include "backend/backend.h"

namespace dsv3 {

struct MlaKvShape {
  int N, H;
  int nope, rope, dv;
  int kv_lora;  // kv row: [latent (kv_lora) | k_pe (rope)]
};

// k, v overwritten.
void mla_kv_expand_forward(const Exec& ex, const Tensor& k, const Tensor& v, const Tensor& kvb,
                           const Tensor& kv, MlaKvShape s);
// dkvb overwritten from dk's nope parts and dv; dkv's k_pe slice overwritten with dk's rope parts
// summed over heads (fixed order); dkv's latent slice zeroed, ready for the norm's backward to
// add into.
void mla_kv_expand_backward(const Exec& ex, const Tensor& dkvb, const Tensor& dkv,
                            const Tensor& dk, const Tensor& dv, MlaKvShape s);

}  // namespace dsv3

// Causal multi-head attention core of MLA's training path: per (batch, head)
//   S = q k^T * scale (causal), P = softmax(S) in fp32 (or wider), out = P v.
// q and k have the same head width dqk (MLA: qk_nope + qk_rope), v may differ (v_head).
// P is saved for backward: (B, H, T, T); T = sequence length.
#pragma once
#include "backend/backend.h"

namespace dsv3 {
struct AttentionShape {
  int B, T, H, dqk, dv;
  double scale;  // softmax scale, (dqk)^-0.5 * rope multiplier
};
namespace cpu {
// q, k: (B,T,H,dqk); v: (B,T,H,dv); out: (B,T,H,dv) overwritten; probs: (B,H,T,T).
template <typename T>
void attention_forward(T* out, T* probs, const T* q, const T* k, const T* v, AttentionShape s);
// dq, dk, dv += gradients.
template <typename T>
void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v,
                        const T* probs, AttentionShape s);
}  // namespace cpu
void attention_forward(const Exec& ex, float* out, float* probs, const float* q, const float* k,
                       const float* v, AttentionShape s);
void attention_backward(const Exec& ex, float* dq, float* dk, float* dv, const float* dout,
                        const float* q, const float* k, const float* v, const float* probs,
                        AttentionShape s);
}  // namespace dsv3

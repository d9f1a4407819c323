// Causal multi-head attention core of MLA's training path: per (batch, head)
//   S = q k^T * scale (causal), P = softmax(S) in the accumulation dtype, out = P v.
// q and k have the same head width dqk (MLA: qk_nope + qk_rope), v may differ (v_head).
// q, k, v, out, probs and the gradients are in the compute dtype T; scores, the softmax and the
// score gradients are computed in fp32 (fp64 for the oracle) and P is stored rounded to T, the
// operand of the P v GEMM. P is saved for backward: (B, H, T, T); T = sequence length.
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
void attention_forward(const Exec& ex, const Tensor& out, const Tensor& probs, const Tensor& q,
                       const Tensor& k, const Tensor& v, AttentionShape s);
void attention_backward(const Exec& ex, const Tensor& dq, const Tensor& dk, const Tensor& dv,
                        const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& probs, AttentionShape s);
}  // namespace dsv3

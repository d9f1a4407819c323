// Causal multi-head attention core of MLA's training path: per (batch, head)
//   S = q k^T * scale (causal), P = softmax(S) in the accumulation dtype, out = P v.
// q and k have the same head width dqk (MLA: qk_nope + qk_rope), v may differ (v_head).
// q, k, v, out, probs and the gradients are in the compute dtype T; scores, the softmax and the
// score gradients are computed in fp32 (fp64 for the oracle) and P is stored rounded to T, the
// operand of the P v GEMM. T = sequence length.
//
// What forward saves for backward (`saved`) depends on the device: the CPU keeps P itself,
// (B, H, T, T) in T; CUDA runs flash attention (src/ops/cuda/kernels/attention.cuh), which never
// holds a T x T matrix in memory, and keeps the log-sum-exp of each row, (B, H, T) in fp32, from
// which backward recomputes P. attention_saved() says which, so callers allocate the right one.
#pragma once
#include "backend/backend.h"

namespace dsv3 {
struct AttentionShape {
  int B, T, H, dqk, dv;
  double scale;  // softmax scale, (dqk)^-0.5 * rope multiplier
};
struct AttentionSaved {
  DType dtype;
  size_t numel;
};
AttentionSaved attention_saved(Device d, DType t, AttentionShape s);
namespace cpu {
// q, k: (B,T,H,dqk); v: (B,T,H,dv); out: (B,T,H,dv) overwritten; probs: (B,H,T,T).
template <typename T>
void attention_forward(T* out, T* probs, const T* q, const T* k, const T* v, AttentionShape s);
// dq, dk, dv += gradients.
template <typename T>
void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v,
                        const T* probs, AttentionShape s);
}  // namespace cpu
void attention_forward(const Exec& ex, const Tensor& out, const Tensor& saved, const Tensor& q,
                       const Tensor& k, const Tensor& v, AttentionShape s);
// `out` is forward's output (flash backward needs rowsum(dout * out); the CPU ignores it).
void attention_backward(const Exec& ex, const Tensor& dq, const Tensor& dk, const Tensor& dv,
                        const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& out, const Tensor& saved, AttentionShape s);
}  // namespace dsv3

// MoE op family: the router (scores, group-limited top-k, gate weights, balance loss) and the
// token permutation that lets each expert run as ONE GEMM over its contiguous tokens.
// Math: docs/model.md "MoE FFN" and "Balance loss".
#pragma once
#include <cstdint>

#include "backend/backend.h"

namespace dsv3 {

struct RouterShape {
  int N;            // tokens
  int E;            // routed experts
  int K;            // experts per token
  int groups;       // G (1 = no group limit)
  int topk_groups;  // groups kept
  int segment;      // tokens per balance-loss segment (T for sequence-wise, N for batch)
  bool sigmoid;     // sigmoid scores (+bias) vs softmax scores
  bool norm_topk;
  double route_scale;
  double balance_alpha;  // 0 disables the balance loss
};

namespace cpu {
// logits (N,E) -> scores (N,E) saved for backward, idx (N,K), gates (N,K), loads (E) += slots
// per expert. Returns the balance loss; *entropy (if not null) gets the mean over tokens of the
// entropy of the normalised scores (sigmoid: s / sum s; softmax: the scores), in nats.
// bias (E, fp32) may be null (softmax router / no bias). A is the accumulation dtype.
template <typename A>
double router_forward(int32_t* idx, A* gates, A* scores, int64_t* loads, const A* logits,
                      const float* bias, RouterShape s, double* entropy);
// dlogits (N,E) += from the gate gradients dgates (N,K) and dbalance * d(balance loss).
template <typename A>
void router_backward(A* dlogits, const A* dgates, double dbalance, const A* scores,
                     const int32_t* idx, RouterShape s);

// Storage dtype T for the token rows, accumulation dtype for the gates.
template <typename T>
void moe_gather(T* xp, const T* x, const int32_t* slot_token, int NK, int C);  // xp[s] = x[tok]
// y[n] (+)= sum_k gates[n,k] * outp[slot_of[n,k]]
template <typename T>
void moe_combine(T* y, const T* outp, const accum_t<T>* gates, const int32_t* slot_of, int N,
                 int K, int C, bool accumulate);
// doutp[slot] = gates * dy[n] (overwrites), dgates[n,k] = dy[n] . outp[slot] (overwrites)
template <typename T>
void moe_combine_backward(T* doutp, accum_t<T>* dgates, const T* dy, const T* outp,
                          const accum_t<T>* gates, const int32_t* slot_of, int N, int K, int C);
// dx[n] += sum_k dxp[slot_of[n,k]]  (fixed order: deterministic)
template <typename T>
void moe_scatter_add(T* dx, const T* dxp, const int32_t* slot_of, int N, int K, int C);
// Counting sort of the N*K (token, expert) pairs by expert, stable in token order:
// slot_token[s] = token of slot s; slot_of[n*K+k] = slot of pair (n,k);
// offsets[e]..offsets[e+1] = the slots of expert e.
void moe_permutation(int32_t* slot_token, int32_t* slot_of, int32_t* offsets, const int32_t* idx,
                     int N, int K, int E);
}  // namespace cpu

// Entry points on the seam. Shapes as the kernels above; dtypes: logits, scores, gates, dgates,
// dlogits in the accumulation dtype; token rows (x, xp, y, outp and their gradients) in T.
struct RouterOutputs {
  Tensor idx;     // (N,K) i32
  Tensor gates;   // (N,K)
  Tensor scores;  // (N,E)
  Tensor loads;   // (E) i64, overwritten: slots per expert in this call
  Tensor stats;   // (2) f64, overwritten: balance loss, mean router entropy
};
void router_forward(const Exec& ex, const RouterOutputs& out, const Tensor& logits,
                    const Tensor& bias, RouterShape s);
void router_backward(const Exec& ex, const Tensor& dlogits, const Tensor& dgates, double dbalance,
                     const Tensor& scores, const Tensor& idx, RouterShape s);
// slot_token (N*K), slot_of (N*K), offsets (E+1), idx (N*K): all i32.
void moe_permutation(const Exec& ex, const Tensor& slot_token, const Tensor& slot_of,
                     const Tensor& offsets, const Tensor& idx, int N, int K, int E);
void moe_gather(const Exec& ex, const Tensor& xp, const Tensor& x, const Tensor& slot_token,
                int NK, int C);
void moe_combine(const Exec& ex, const Tensor& y, const Tensor& outp, const Tensor& gates,
                 const Tensor& slot_of, int N, int K, int C, bool accumulate);
void moe_combine_backward(const Exec& ex, const Tensor& doutp, const Tensor& dgates,
                          const Tensor& dy, const Tensor& outp, const Tensor& gates,
                          const Tensor& slot_of, int N, int K, int C);
void moe_scatter_add(const Exec& ex, const Tensor& dx, const Tensor& dxp, const Tensor& slot_of,
                     int N, int K, int C);

}  // namespace dsv3

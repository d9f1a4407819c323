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
// per expert, returns the balance loss. bias (E) may be null (softmax router / no bias).
template <typename T>
double router_forward(int32_t* idx, T* gates, T* scores, int64_t* loads, const T* logits,
                      const float* bias, RouterShape s);
// dlogits (N,E) += from the gate gradients dgates (N,K) and dbalance * d(balance loss).
template <typename T>
void router_backward(T* dlogits, const T* dgates, double dbalance, const T* scores,
                     const int32_t* idx, RouterShape s);

template <typename T>
void moe_gather(T* xp, const T* x, const int32_t* slot_token, int NK, int C);  // xp[s] = x[tok]
// y[n] (+)= sum_k gates[n,k] * outp[slot_of[n,k]]
template <typename T>
void moe_combine(T* y, const T* outp, const T* gates, const int32_t* slot_of, int N, int K, int C,
                 bool accumulate);
// doutp[slot] = gates * dy[n] (overwrites), dgates[n,k] = dy[n] . outp[slot] (overwrites)
template <typename T>
void moe_combine_backward(T* doutp, T* dgates, const T* dy, const T* outp, const T* gates,
                          const int32_t* slot_of, int N, int K, int C);
// dx[n] += sum_k dxp[slot_of[n,k]]  (fixed order: deterministic)
template <typename T>
void moe_scatter_add(T* dx, const T* dxp, const int32_t* slot_of, int N, int K, int C);
}  // namespace cpu

// Counting sort of the N*K (token, expert) pairs by expert, stable in token order:
// slot_token[s] = token of slot s; slot_of[n*K+k] = slot of pair (n,k);
// offsets[e]..offsets[e+1] = the slots of expert e.
void moe_permutation(int32_t* slot_token, int32_t* slot_of, int32_t* offsets, const int32_t* idx,
                     int N, int K, int E);

}  // namespace dsv3

namespace dsv3 {
// fp32 entry points (device dispatch; math as the cpu:: kernels above)
double router_forward(const Exec& ex, int32_t* idx, float* gates, float* scores, int64_t* loads,
                      const float* logits, const float* bias, RouterShape s);
void router_backward(const Exec& ex, float* dlogits, const float* dgates, double dbalance,
                     const float* scores, const int32_t* idx, RouterShape s);
void moe_gather(const Exec& ex, float* xp, const float* x, const int32_t* slot_token, int NK, int C);
void moe_combine(const Exec& ex, float* y, const float* outp, const float* gates,
                 const int32_t* slot_of, int N, int K, int C, bool accumulate);
void moe_combine_backward(const Exec& ex, float* doutp, float* dgates, const float* dy,
                          const float* outp, const float* gates, const int32_t* slot_of, int N,
                          int K, int C);
void moe_scatter_add(const Exec& ex, float* dx, const float* dxp, const int32_t* slot_of, int N,
                     int K, int C);
}  // namespace dsv3

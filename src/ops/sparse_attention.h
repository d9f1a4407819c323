// Sparse causal attention (M6): every query attends to a short list of earlier keys instead of
// all of them. Same shapes and dtypes as ops/attention.h (q, k: (B,T,H,dqk); v: (B,T,H,dv)), but
// P is (B, H, T, K) with K keys per query, so memory and work are O(T K), not O(T^2).
//   window W:  query i sees keys [i-W+1, i]; slot j of its row is key i-W+1+j (empty below 0).
//   explicit:  index (B, H, T, K) int32 lists each query's keys, ascending, each <= i, padded
//              with -1 (lsh_attention_index below; the model runs LSH through the blocked
//              lsh_attention_* instead).
// Window attention runs in query blocks with GEMMs, explicit lists one gathered key at a time.
// Per query: S_j = scale q_i . k_key(j), P = softmax over the listed keys (accumulation dtype,
// stored rounded to T), out_i = sum_j P_j v_key(j). Empty slots have P = 0. Equal to dense
// attention with the mask "key listed" (tests/cpp/test_sparse_attention.cpp checks it).
#pragma once
#include <cstdint>

#include "backend/backend.h"

namespace dsv3 {

struct SparseAttentionShape {
  int B, T, H, dqk, dv;
  double scale;
  int K;       // keys per query (slots of a P row)
  int window;  // > 0: the window W (K == W, index unused); 0: explicit index
};

namespace cpu {
template <typename T>
void sparse_attention_forward(T* out, T* probs, const T* q, const T* k, const T* v,
                              const int32_t* index, SparseAttentionShape s);
// dq, dk, dv += gradients.
template <typename T>
void sparse_attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k,
                               const T* v, const T* probs, const int32_t* index,
                               SparseAttentionShape s);
// The same ops one query row at a time, gathering the row's keys (dot products): what
// sparse_attention_* run for explicit key lists, and the tests' oracle for the blocked window.
template <typename T>
void sparse_attention_forward_gather(T* out, T* probs, const T* q, const T* k, const T* v,
                                     const int32_t* index, SparseAttentionShape s);
template <typename T>
void sparse_attention_backward_gather(T* dq, T* dk, T* dv, const T* dout, const T* q,
                                      const T* k, const T* v, const T* probs,
                                      const int32_t* index, SparseAttentionShape s);
}  // namespace cpu

void sparse_attention_forward(const Exec& ex, const Tensor& out, const Tensor& probs,
                              const Tensor& q, const Tensor& k, const Tensor& v,
                              const Tensor& index, SparseAttentionShape s);
void sparse_attention_backward(const Exec& ex, const Tensor& dq, const Tensor& dk,
                               const Tensor& dv, const Tensor& dout, const Tensor& q,
                               const Tensor& k, const Tensor& v, const Tensor& probs,
                               const Tensor& index, SparseAttentionShape s);

// LSH bucketing (Reformer's angular LSH, Kitaev et al. 2020, for separate queries and keys):
// for each round r, queries and keys of head h are hashed with the same random rotation
// R[h][r] (dqk x buckets/2): bucket(x) = argmax([x R, -x R]). Queries and keys are each sorted
// by (bucket, position) and cut into chunks of `chunk`; query chunk c attends to key chunks c
// and c-1 of the same round. A query's keys are the union over rounds of those keys at
// positions <= its own, plus itself (so no row is empty), ascending: at most
// K = rounds * 2 * chunk + 1 of them.
struct LshShape {
  int B, T, H, dqk;
  int buckets;  // even
  int rounds;
  int chunk;
  int K() const { return rounds * 2 * chunk + 1; }
};
// rotations: (H, rounds, dqk, buckets/2) accum dtype (fp32; fp64 for the oracle), the same for
// every layer and step: lsh_rotations makes them from a seed.
void lsh_rotations(float* out, int H, int rounds, int dqk, int buckets, uint64_t seed);
// index (B, H, T, K) int32, written whole; buckets (B, H, rounds, 2, T) int32 (queries, then
// keys) if not empty, for inspection.
void lsh_attention_index(const Exec& ex, const Tensor& index, const Tensor& buckets,
                         const Tensor& q, const Tensor& k, const Tensor& rotations, LshShape s);

// LSH attention in blocks (what the model runs): the keys of lsh_attention_index under one
// softmax, computed per (round, chunk) with GEMMs (Reformer's layout) instead of per query.
// Saved for backward:
//   order (B, H, rounds, 2, T) int32: per round the query positions sorted by (bucket, position),
//         then the key positions likewise;
//   probs (B, H, rounds, T, 2 chunk + 1) in T: row n of round r is the query of sorted rank n;
//         slot j < 2 chunk is the key of sorted rank (n / chunk - 1) chunk + j (0 if empty, past
//         T, or not before the query), slot 2 chunk the query itself. A key held by several
//         rounds has one copy per round sharing its probability (each P_copy = P / copies).
// Equal to sparse_attention_* over lsh_attention_index's lists (to rounding; the tests check it).
struct LshAttentionShape {
  int B, T, H, dqk, dv;
  double scale;
  int buckets, rounds, chunk;
  LshShape lsh() const { return {B, T, H, dqk, buckets, rounds, chunk}; }
  int slots() const { return rounds * (2 * chunk + 1); }  // P entries per query
};
namespace cpu {
template <typename T>
void lsh_attention_forward(T* out, T* probs, int32_t* order, const T* q, const T* k, const T* v,
                           const float* rotations, LshAttentionShape s);
template <typename T>  // dq, dk, dv += gradients
void lsh_attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k,
                            const T* v, const T* probs, const int32_t* order, LshAttentionShape s);
}  // namespace cpu
void lsh_attention_forward(const Exec& ex, const Tensor& out, const Tensor& probs,
                           const Tensor& order, const Tensor& q, const Tensor& k, const Tensor& v,
                           const Tensor& rotations, LshAttentionShape s);
void lsh_attention_backward(const Exec& ex, const Tensor& dq, const Tensor& dk, const Tensor& dv,
                            const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                            const Tensor& probs, const Tensor& order, LshAttentionShape s);

}  // namespace dsv3

// Vocabulary-parallel embedding and cross-entropy (P4, Megatron's VocabParallelEmbedding and
// vocab_parallel_cross_entropy): a tensor-parallel rank holds vocabulary rows [first, first + V)
// of the embedding and of the head. The full (N, V_total) logits never exist on one rank; the
// cross-entropy is three per-row reductions over the ranks (model/head.cpp runs them):
//   1. m = max_j x_j                       local maxima, all-reduced with max
//   2. s = sum_j exp(x_j - m), t = x_target  local parts (t: 0 off this shard), all-reduced sum
//   3. loss = log s + m - t
// and the backward needs no communication: dlogits = row_scale (exp(x - m) / s - onehot).
// `stats` is (3, N) accumulation dtype: rows of m, then s, then t, so steps 2's two sums are one
// all-reduce of stats[N, 3N). Targets < 0 are ignored (loss 0, gradient 0). CPU kernels (tensor
// parallel training runs on the CPU, as all distributed training does for now).
#pragma once
#include <cstdint>

#include "backend/backend.h"

namespace dsv3 {
namespace cpu {
template <typename T>
void embedding_shard_forward(T* out, const int32_t* ids, const T* table, int first, int V, int N,
                             int C);
template <typename T>
void embedding_shard_backward(accum_t<T>* dtable, const T* dout, const int32_t* ids, int first,
                              int V, int N, int C);
template <typename A>
void ce_shard_max(A* stats, const A* logits, int N, int V);
template <typename A>
void ce_shard_sums(A* stats, const A* logits, const int32_t* targets, int first, int N, int V);
template <typename A>
void ce_shard_loss(A* losses, const A* stats, const int32_t* targets, int N);
template <typename A, typename T>
void ce_shard_backward(T* dlogits, const A* logits, const A* stats, const int32_t* targets,
                       const A* row_scale, int first, int N, int V);
}  // namespace cpu

// out (N,C) = table[ids - first] for ids in [first, first + V), zero rows for the others.
void embedding_shard_forward(const Exec& ex, const Tensor& out, const Tensor& ids,
                             const Tensor& table, int first, int V, int N, int C);
// dtable (V,C) accum += dout rows of the ids in this shard.
void embedding_shard_backward(const Exec& ex, const Tensor& dtable, const Tensor& dout,
                              const Tensor& ids, int first, int V, int N, int C);
// logits (N,V) accum, the shard's columns; stats (3,N) accum as above.
void ce_shard_max(const Exec& ex, const Tensor& stats, const Tensor& logits, int N, int V);
void ce_shard_sums(const Exec& ex, const Tensor& stats, const Tensor& logits,
                   const Tensor& targets, int first, int N, int V);
void ce_shard_loss(const Exec& ex, const Tensor& losses, const Tensor& stats,
                   const Tensor& targets, int N);
// OVERWRITES dlogits (accum: may alias logits; bf16/f16: the head GEMM's operand).
void ce_shard_backward(const Exec& ex, const Tensor& dlogits, const Tensor& logits,
                       const Tensor& stats, const Tensor& targets, const Tensor& row_scale,
                       int first, int N, int V);

}  // namespace dsv3

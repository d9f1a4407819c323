// Tensor parallelism (P4) as model code sees it: a hook that sums (or maxes) an activation over
// the ranks of a tensor-parallel group, and the rule that says which slice of each HF tensor a
// rank holds. The model stays single-device: a tp rank runs the ordinary passes over a model
// whose config has heads / tp, dense_inter / tp, moe_inter / tp and vocab / tp
// (tensor_parallel_config), so its parameter table holds exactly its slices under the HF names;
// the few places where a partial sum must become whole call tp_sum/tp_max, which do nothing
// without a hook (one process). The implementation over MPI lives outside model code
// (train/tensor_parallel.h). Design and the placement of each reduction: docs/parallel.md
// "Tensor parallelism".
//
//   column-parallel (rows = dim 0 split): q_b_proj / q_proj and kv_b_proj by head, gate_proj and
//     up_proj of the dense FFN, shared and routed experts, embed_tokens and lm_head by vocabulary
//   row-parallel (columns = dim 1 split): o_proj, down_proj (outputs partial: one all-reduce)
//   replicated: norms, q_a_proj, kv_a_proj_with_mqa (the latent down-projections), the router
//     and its bias, eh_proj
#pragma once
#include <algorithm>
#include <string>

#include "backend/backend.h"
#include "model/config.h"

namespace dsv3 {

struct ParamInfo;

class TensorParallel {
 public:
  virtual ~TensorParallel() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // t becomes the element-wise sum (max) over the group's ranks, the same bits on every rank.
  virtual void all_reduce_sum(const Exec& ex, const Tensor& t) = 0;
  virtual void all_reduce_max(const Exec& ex, const Tensor& t) = 0;
  // Sequence parallelism: `full` holds size() blocks of full.numel / size(); all_gather fills
  // every block from its rank's (this rank's own block is the input, in place); reduce_scatter
  // writes the sum over ranks of block rank() of `full` into `own`.
  virtual void all_gather(const Exec& ex, const Tensor& full) = 0;
  virtual void reduce_scatter(const Exec& ex, const Tensor& full, const Tensor& own) = 0;
  // --sp: the residual stream between the main blocks holds this rank's N / size() rows
  // (rows [rank n, (rank+1) n)); see block_forward.
  bool sequence_parallel = false;
};
// No-ops without a hook (one process, or tp 1).
void tp_sum(TensorParallel* tp, const Exec& ex, const Tensor& t);
void tp_max(TensorParallel* tp, const Exec& ex, const Tensor& t);

// The model's whole vocabulary (c: this rank's config, whose vocab is its shard under tp).
int full_vocab(const ModelConfig& c, TensorParallel* tp);
// Embedding lookup out (N,C) = table[ids] and its backward (dtable +=), vocabulary-parallel
// under tp: this rank's V = c.vocab rows start at rank * V; the lookup is summed over tp (each
// token's row lives on one rank) and the backward needs no communication.
void embed_lookup(const Exec& ex, TensorParallel* tp, const Tensor& out, const Tensor& ids,
                  const Tensor& table, int N, int C, int V);
void embed_lookup_backward(const Exec& ex, TensorParallel* tp, const Tensor& dtable,
                           const Tensor& dout, const Tensor& ids, int N, int C, int V);

// What one tp rank all-reduces over its tp group in one training pass (forward + backward) of
// N rows through blocks [l0, l1), the embedding (embed) and the head with the MTP modules
// (head), where the reductions above sit: `act` elements of the compute dtype (hidden rows and
// MLA latents), `f32` of fp32 (the cross-entropy's row statistics, the gate weights'
// gradients), weighted so that the bytes a rank sends are (tp-1)/tp (act b + 4 f32): a ring
// all-reduce sends 2 (tp-1)/tp of its bytes (counted twice here), a reduce-scatter or all-gather
// (tp-1)/tp of the whole buffer (once) (dist/collectives.h). The planner (train/plan.cpp) and
// bench/bench_tp.py use this count; tests/cpp/mpi/test_tensor_mpi.cpp checks it against the
// bytes runs book.
struct TpElements {
  double act = 0, f32 = 0;
};
// recompute_blocks: Recompute::Block (each main block's forward, and its reductions, run again
// inside backward). sp: sequence parallelism (the main blocks, embedding and head gather and
// scatter rows; the MTP modules run as without it).
TpElements tp_pass_elements(const ModelConfig& c, double N, int l0, int l1, bool embed, bool head,
                            bool recompute_blocks, bool sp = false);

// Throws Error naming the dimension that tp does not divide (heads, vocab, dense_inter,
// moe_inter) and the unsupported features (LSH attention's per-head rotations).
void check_tensor_parallel(const ModelConfig& c, int tp);
// The config one tp rank's model is built from (c itself for tp 1).
ModelConfig tensor_parallel_config(const ModelConfig& c, int tp);

// The dimension of the HF tensor `name` split over tp ranks: 0 (rows), 1 (columns) or -1
// (replicated on every tp rank).
int tp_split_dim(const std::string& name);

// A rank's slice of a whole tensor as contiguous runs: fn(whole_begin, local_begin, count) in
// elements, covering the local tensor `local` (the shape the tp rank holds) in order.
// Replicated tensors are one run. tp 1: one run.
template <typename Fn>
void for_each_tp_run(const ParamInfo& local, int rank, int tp, Fn&& fn);
// The same for the part [lo, hi) of the local tensor (a ZeRO piece): the runs cut to it.
template <typename Fn>
void for_each_tp_run(const ParamInfo& local, int rank, int tp, size_t lo, size_t hi, Fn&& fn);

}  // namespace dsv3

#include "model/params.h"

namespace dsv3 {
template <typename Fn>
void for_each_tp_run(const ParamInfo& local, int rank, int tp, Fn&& fn) {
  const int dim = tp > 1 ? tp_split_dim(local.name) : -1;
  if (dim < 0) return fn(size_t(0), size_t(0), local.numel);
  if (dim == 0) return fn(size_t(rank) * local.numel, size_t(0), local.numel);
  const size_t rows = size_t(local.shape[0]), cols = size_t(local.shape[1]);
  for (size_t r = 0; r < rows; r++) fn(r * cols * tp + size_t(rank) * cols, r * cols, cols);
}
template <typename Fn>
void for_each_tp_run(const ParamInfo& local, int rank, int tp, size_t lo, size_t hi, Fn&& fn) {
  for_each_tp_run(local, rank, tp, [&](size_t whole, size_t at, size_t n) {
    const size_t a = std::max(at, lo), b = std::min(at + n, hi);
    if (a < b) fn(whole + (a - at), a, b - a);
  });
}
}  // namespace dsv3

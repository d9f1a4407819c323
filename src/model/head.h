// The output head (M1): final RMSNorm, lm_head GEMM and softmax cross-entropy per row, shared by
// the main model and every MTP module (each with its own norm, the one lm_head). Rows are done in
// chunks of kHeadChunk with the backward right behind the forward (an fp32 run overwrites the
// chunk's logits with their gradient; 16-bit runs write it in the compute dtype beside them), so
// the (N, V) logits never exist. Logits and losses are fp32
// in every precision (fp64 for the oracle).
#pragma once
#include "model/arena.h"
#include "model/config.h"
#include "tensor/tensor.h"

namespace dsv3 {

struct Exec;
class TensorParallel;  // model/tensor_parallel.h
struct SoftTargets;  // model/model.h
constexpr int kHeadChunk = 256;  // rows of logits alive at once

struct HeadActs {
  Tensor xn, rstd;   // (N,C), (N) accum: the norm's output (saved for backward)
  Tensor losses;     // (N) accum: cross-entropy of each row, 0 where the target is ignored
  Tensor logits;     // (kHeadChunk, V) accum; in fp32 runs overwritten by its gradient
  Tensor dlogits_t;  // (kHeadChunk, V) compute dtype, when it differs from accum
  Tensor dxn;        // (N,C)
  Tensor t_logits;   // (kHeadChunk, V) accum: a teacher's logits (distillation)
  Tensor kd_losses;  // (N) accum: the distillation loss of each row
  Tensor tp_stats;   // (3, kHeadChunk) accum: the vocabulary-parallel CE's row reductions
};
// soft: room for distillation targets (ops/distill.h).
void alloc_head_acts(HeadActs& a, Arena& ar, const ModelConfig& c, DType t, Dims d, bool backward,
                     bool soft = false);

struct HeadIo {
  Tensor x;            // (N,C) input to the norm
  Tensor norm_w;       // (C)
  Tensor norm_g;       // (C) its gradient (backward)
  Tensor targets;      // (N) i32, < 0 ignored
  Tensor row_scale;    // (N) accum: d(loss)/d(losses[n]) (backward)
  Tensor dx;           // (N,C) += gradient w.r.t. x (backward)
  float* logits_out = nullptr;  // optional host (N, V) fp32
  const SoftTargets* soft = nullptr;  // distillation: a teacher's logits as a second target
  // Tensor parallelism: head_w is this rank's vocabulary rows (c.vocab of them, from rank *
  // c.vocab); the cross-entropy reduces over tp (ops/vocab_parallel.h) and the input gradient is
  // summed. Neither logits_out nor soft targets (both need every logit on one rank).
  TensorParallel* tp = nullptr;
};

// Fills a.losses (and a.kd_losses with soft targets); with backward also dx +=, norm_g +=,
// head_g +=.
void head_forward_backward(const Exec& ex, const ModelConfig& c, const Tensor& head_w,
                           const Tensor& head_g, const HeadIo& io, const HeadActs& a, Dims d,
                           bool backward);

}  // namespace dsv3

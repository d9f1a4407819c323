// DeepSeekMoE FFN (M4): router -> tokens sorted by expert -> the routed experts as grouped GEMMs
// (one call for all experts) -> weighted combine, plus the shared experts.
// Math: docs/model.md "MoE FFN".
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/ffn.h"
#include "ops/moe.h"

namespace dsv3 {

struct MoeParams {
  Tensor gate;              // (E, C) router
  Tensor bias;              // (E) fp32 e_score_correction_bias (sigmoid router only)
  Tensor experts_w13;       // from expert 0's gate_proj: (2D, C) per expert, every expert_stride
  Tensor experts_w2;        // from expert 0's down_proj: (C, D) per expert, every expert_stride
  size_t expert_stride = 0;  // elements between consecutive experts' tensors
  int inter = 0;            // D
  FfnParams shared;         // w13 empty when there are no shared experts
};
// base: the parameter buffer; buffers: where Buffer-kind tensors (the bias) live, fp32, compact
// (ParamInfo::buffer_offset), or empty when they live in base (fp32 weights).
MoeParams bind_moe(const ParamTable& t, const Tensor& base, const Tensor& buffers,
                   const std::string& layer_prefix, const ModelConfig& c);

struct MoeActs {
  Tensor logits;      // (N, E) accum
  Tensor scores;      // (N, E) accum: sigmoid or softmax
  Tensor gates;       // (N, K) accum
  Tensor idx;         // (N, K) i32 chosen experts
  Tensor slot_token;  // (N*K) i32 token of each expert-sorted slot
  Tensor slot_of;     // (N*K) i32 slot of (n, k)
  Tensor offsets;     // (E+1) i32 slots of expert e: offsets[e]..offsets[e+1]
  Tensor xp;          // (N*K, C) gathered inputs
  FfnActs expert;     // (N*K, .) all experts' activations, expert-sorted
  Tensor outp;        // (N*K, C) expert outputs
  FfnActs shared;
};
void alloc_moe_acts(MoeActs& a, Arena& ar, const ModelConfig& c, DType t, Dims d);

struct MoeScratch {
  Tensor dlogits;    // (N, E) accum
  Tensor dlogits_t;  // (N, E) compute dtype, when it differs from accum (the router GEMM's dy)
  Tensor dgates;     // (N, K) accum
  Tensor doutp, dxp;  // (N*K, C)
  FfnScratch expert;  // sized for N*K rows
};
void alloc_moe_scratch(MoeScratch& s, Arena& ar, const ModelConfig& c, DType t, Dims d);

// Where one MoE layer's router statistics go (per layer, so recomputation cannot mix them).
struct MoeStatsOut {
  Tensor loads;  // (E) i64 slots per expert
  Tensor stats;  // (2) f64 balance loss, mean router entropy
};

RouterShape router_shape(const ModelConfig& c, const TrainingLossConfig& l, Dims d);

// y (N,C) = moe(x), overwriting y.
void moe_forward(const Exec& ex, const Tensor& y, const Tensor& x, const MoeParams& w,
                 const MoeActs& a, const MoeStatsOut& st, const ModelConfig& c,
                 const TrainingLossConfig& l, Dims d);
// dx +=, g +=; dbalance: the factor of this layer's balance loss in what is differentiated (the
// pass's grad scale: loss scale / grad_accum).
void moe_backward(const Exec& ex, const Tensor& dx, const Tensor& dy, const Tensor& x,
                  const MoeParams& w, const MoeParams& g, const MoeActs& a, const MoeScratch& s,
                  const FfnScratch& shared_scratch, double dbalance, const ModelConfig& c,
                  const TrainingLossConfig& l, Dims d);

}  // namespace dsv3

// DeepSeekMoE FFN (M4): router -> tokens sorted by expert -> the routed experts as grouped GEMMs
// (one call for all experts) -> weighted combine, plus the shared experts.
// Math: docs/model.md "MoE FFN".
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/ffn.h"
#include "model/tensor_parallel.h"
#include "ops/moe.h"

namespace dsv3 {

struct MoeParams {
  Tensor gate;              // (E, C) router
  Tensor bias;              // (E) fp32 e_score_correction_bias (sigmoid router only)
  Tensor experts_w13;       // from expert 0's gate_proj: (2D, C) per expert, every expert_stride
  Tensor experts_w2;        // from expert 0's down_proj: (C, D) per expert, every expert_stride
  size_t expert_stride = 0;  // elements between consecutive experts' tensors
  int inter = 0;            // D
  // The routed experts held here: [first_expert, first_expert + local_experts). Fewer than E
  // under expert parallelism, where the other experts' tokens travel through an ExpertExchange.
  int first_expert = 0, local_experts = 0;
  int hf_layer = -1;        // the layer's HF index (model.layers.<i>): names it to an exchange
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

// ---- Expert parallelism (P3). The layer stays single-device: when it holds only some experts
// it hands the expert-sorted slot rows to an ExpertExchange, implemented outside model code
// (src/dist/expert_exchange.cpp, all-to-all over the expert-parallel group), and runs its own
// experts on whatever rows arrive.

// Copies of other processes' experts that compute a share of those experts' rows (EPLB,
// src/train/expert_parallel.h): the last `rows` rows of an ExpertSide, sorted by copy. The
// exchange owns their weights (kept equal to the originals) and gradient accumulators (returned
// to the originals by ExpertExchange::return_replica_grads).
struct ExpertReplicas {
  int experts = 0, rows = 0;
  Tensor offsets;     // (experts + 1) i32, relative to the first replica row
  Tensor w13, w2;     // laid out as MoeParams::experts_w13/_w2, `stride` apart
  Tensor g13, g2;     // dw accumulators (accumulation dtype), the same layout
  size_t stride = 0;
};

// The expert side of one MoE layer: the R rows (from every rank of the group) this process's
// experts compute, sorted by local expert, and their activations; with replicas, their rows last.
struct ExpertSide {
  int rows = 0;        // R
  Tensor offsets;      // (local experts + 1) i32: rows of local expert j: offsets[j]..offsets[j+1]
  Tensor xp;           // (R, C) inputs                                     kept for backward
  FfnActs acts;        // (R, 2D) and (R, D)                                kept for backward
  Tensor out;          // (R, C) forward: outputs; backward: their incoming gradients
  Tensor dxp;          // (R, C) backward: input gradients
  FfnScratch scratch;  // (R, 2D) and (R, D) backward
  ExpertReplicas replicas;
};
// Lays out an ExpertSide of `rows` rows (Arena: measure first, then over memory): `kept` holds
// the members kept for backward (xp, acts, offsets), `scratch` the rest.
void alloc_expert_side(ExpertSide& s, Arena& kept, Arena& scratch, const ModelConfig& c,
                       DType t, int rows, int local_experts);

class ExpertExchange {
 public:
  virtual ~ExpertExchange() = default;
  // Forward: slot rows xp (N*K, C; global expert e's slots at offsets[e]..offsets[e+1], i32 on
  // the device) go to the processes holding their experts. Returns the expert side of `layer`
  // (a key: the layer's MoeActs) with rows, offsets and xp filled.
  // hf_layer: MoeParams::hf_layer (which layer's replicas, if any, take part).
  virtual const ExpertSide& dispatch(const Exec& ex, const void* layer, int hf_layer,
                                     const Tensor& xp, const Tensor& offsets, int NK, int C) = 0;
  // The expert side of `layer` as the last dispatch left it.
  virtual const ExpertSide& side(const void* layer) = 0;
  // Rows (R, C) of the expert side back to slot order (N*K, C), along the last dispatch's routes.
  virtual void combine(const Exec& ex, const void* layer, const Tensor& side_rows,
                       const Tensor& slot_rows) = 0;
  // Slot-order rows (N*K, C) to the expert side (R, C), along the same routes (backward).
  virtual void dispatch_rows(const Exec& ex, const void* layer, const Tensor& slot_rows,
                             const Tensor& side_rows) = 0;
  // Backward, after the expert GEMMs of `layer`: the replicas' weight gradients go to the
  // processes holding the originals and are added into g (this process's experts' gradients).
  virtual void return_replica_grads(const Exec& ex, const void* layer, const MoeParams& g) = 0;
};

// y (N,C) = moe(x), overwriting y. ep: the exchange when w holds fewer than all experts.
void moe_forward(const Exec& ex, const Tensor& y, const Tensor& x, const MoeParams& w,
                 const MoeActs& a, const MoeStatsOut& st, const ModelConfig& c,
                 const TrainingLossConfig& l, Dims d, ExpertExchange* ep = nullptr);
// dx +=, g +=; dbalance: the factor of this layer's balance loss in what is differentiated (the
// pass's grad scale: loss scale / grad_accum).
// tp: tensor parallelism, every expert's (routed and shared) intermediate dim split over the
// ranks (c.moe_inter is this rank's part; the router is replicated). The forward's output is
// then a partial sum (block_forward sums it); here the gate weights' gradients (N, K) and the
// experts' share of dx are summed over tp before the router's backward, which is the same on
// every rank and adds its whole part. dx must be zero on entry under tp.
void moe_backward(const Exec& ex, const Tensor& dx, const Tensor& dy, const Tensor& x,
                  const MoeParams& w, const MoeParams& g, const MoeActs& a, const MoeScratch& s,
                  const FfnScratch& shared_scratch, double dbalance, const ModelConfig& c,
                  const TrainingLossConfig& l, Dims d, ExpertExchange* ep = nullptr,
                  TensorParallel* tp = nullptr, bool sp_rows = false);
// sp_rows (sequence parallelism): dx stays the experts' partial sum (the block reduce-scatters
// it) and the router adds its part on this rank's rows only, so the sum counts it once.

}  // namespace dsv3

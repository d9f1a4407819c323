// DeepSeekMoE FFN (M4): router -> tokens sorted by expert -> one GEMM chain per expert ->
// weighted combine, plus the shared experts. Math: docs/model.md "MoE FFN".
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/ffn.h"
#include "ops/moe.h"

namespace dsv3 {

struct MoeWeights {
  float* gate = nullptr;  // (E, C) router
  float* bias = nullptr;  // (E) e_score_correction_bias (sigmoid router only)
  std::vector<FfnWeights> experts;
  FfnWeights shared;      // w13 == nullptr when there are no shared experts
};
MoeWeights bind_moe(const ParamTable& t, float* base, const std::string& layer_prefix,
                    const ModelConfig& c);

struct MoeActs {
  float* logits;        // (N, E)
  float* scores;        // (N, E) sigmoid or softmax
  float* gates;         // (N, K)
  int32_t* idx;         // (N, K) chosen experts
  int32_t* slot_token;  // (N*K) token of each expert-sorted slot
  int32_t* slot_of;     // (N*K) slot of (n, k)
  int32_t* offsets;     // (E+1) slots of expert e: offsets[e]..offsets[e+1]
  float* xp;            // (N*K, C) gathered inputs
  FfnActs expert;       // (N*K, .) all experts' activations, expert-sorted
  float* outp;          // (N*K, C) expert outputs
  FfnActs shared;
};
void alloc_moe_acts(MoeActs& a, Arena& ar, const ModelConfig& c, Dims d);

struct MoeScratch {
  float *dlogits, *dgates, *doutp, *dxp;
  FfnScratch expert;  // sized for N*K rows
};
void alloc_moe_scratch(MoeScratch& s, Arena& ar, const ModelConfig& c, Dims d);

struct MoeStats {
  std::vector<int64_t> loads;  // (E) slots per expert, accumulated until reset
  double balance_loss = 0;     // of the last forward
};

RouterShape router_shape(const ModelConfig& c, const TrainingLossConfig& l, Dims d);

// y (N,C) = moe(x), overwriting y. Adds this forward's expert loads to stats when count_loads.
void moe_forward(const Exec& ex, float* y, const float* x, const MoeWeights& w, MoeActs& a,
                 MoeStats& stats, const ModelConfig& c, const TrainingLossConfig& l, Dims d,
                 bool count_loads);
// dx +=, g +=; dbalance is d(total loss)/d(this layer's balance loss).
void moe_backward(const Exec& ex, float* dx, const float* dy, const float* x, const MoeWeights& w,
                  const MoeWeights& g, const MoeActs& a, MoeScratch& s, FfnScratch& shared_scratch,
                  double dbalance, const ModelConfig& c, const TrainingLossConfig& l, Dims d);

}  // namespace dsv3

// Structured pruning (I4): whole FFN channels and whole routed experts come out, the config
// shrinks with them, and the result is an ordinary model (a checkpoint that trains, evaluates,
// quantises and exports like any other). Recovery fine-tuning is `dsv3 train --init_from`.
//
// FFN channels: in every SwiGLU (dense FFN, each routed expert, the shared experts) channel j's
// importance is its L1 norm, |gate_proj[j,:]|_1 + |up_proj[j,:]|_1 + |down_proj[:,j]|_1; the
// round(keep * D) most important stay (each expert chooses its own), in their original order.
// Experts: in every MoE layer (the MTP modules' too) expert e scores
//     load_e / sum(load) * L1(e) / mean(L1)
// (its share of the routed slots measured on data, times its weights' L1 norm relative to the
// layer's mean): an expert never routed contributes nothing, one with small weights little. With
// group-limited routing every group keeps the same number of experts, so the groups stay
// groups. The router's rows and routing-bias entries of a dropped expert go with it.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/fields.h"
#include "model/weights.h"

namespace dsv3 {

struct PruneConfig {
  double ffn_keep = 1.0;        // fraction of the dense FFN's and the shared experts' channels kept
  double expert_ffn_keep = -1;  // fraction of each routed expert's channels kept (< 0: ffn_keep)
  double experts_keep = 1.0;    // fraction of the routed experts kept per MoE layer
};
const std::vector<FieldSpec>& prune_fields();
void validate(const PruneConfig& p);

// Routed slots per expert of every MoE layer (moe_layer_names order, the MTP modules' included),
// summed over forward passes of `tokens` in batches of d (max_batches 0: all that fit).
std::vector<std::vector<int64_t>> measure_expert_loads(const ModelWeights& w,
                                                       const std::vector<int32_t>& tokens, Dims d,
                                                       int max_batches);

struct PrunedModel {
  ModelConfig config;
  std::vector<float> params;  // build_param_table(config) layout
  nlohmann::json report;      // what was kept: per layer expert ids, channel counts, scores
};
// loads: from measure_expert_loads (may be empty when experts_keep == 1). Throws an Error when
// the pruned config would be invalid (top-k larger than the experts left, ...), naming the fix.
PrunedModel prune_model(const ModelConfig& c, const std::vector<float>& params,
                        const std::vector<std::vector<int64_t>>& loads, const PruneConfig& p);

}  // namespace dsv3

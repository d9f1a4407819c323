// The whole DeepSeek-V3 model (M1-M5): embedding, blocks, final norm, head, MTP modules, and the
// loss. Single-device code (STYLE.md point 9): parallelism will wrap it from outside.
//
// A training micro-batch is B rows of T+1 tokens (inputs and shifted targets). One call of
// forward_backward() adds the gradient of grad_scale * loss to `grads`; the optimizer lives in
// src/optim and only sees the flat parameter and gradient buffers.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "model/block.h"

namespace dsv3 {

enum class Recompute : uint8_t {
  None,   // keep every block's activations
  Block,  // keep only block inputs; re-run each block's forward inside backward (T4)
};
const char* recompute_name(Recompute r);
Recompute parse_recompute(const std::string& s);

struct MtpWeights {
  float *enorm, *hnorm;  // (C)
  float* eh_proj;        // (C, 2C)
  BlockWeights block;
  float* head_norm;      // (C) shared_head.norm
};

struct ModelWeights {
  float* embed;  // (V, C)
  std::vector<BlockWeights> blocks;
  std::vector<MtpWeights> mtp;
  float* norm;   // (C)
  float* head;   // (V, C)
};
ModelWeights bind_model(const ModelConfig& c, const ParamTable& t, float* base);

struct LossReport {
  double loss = 0;          // main next-token cross-entropy (mean over targets)
  double mtp_loss = 0;      // mean over MTP modules of their cross-entropy
  double balance_loss = 0;  // sum over MoE layers of the weighted balance loss
  double total = 0;         // loss + mtp_weight * mtp_loss + balance_loss
  int64_t targets = 0;      // main-model targets counted
};

class Model {
 public:
  Model(const ModelConfig& c, const TrainingLossConfig& loss, Dims max_dims,
        Recompute recompute = Recompute::None, Exec ex = {});
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  // tokens: (B, T+1). Adds grad_scale * d(total)/d(params) into grads().
  LossReport forward_backward(const int32_t* tokens, Dims d, float grad_scale);
  // Loss only; optionally writes logits (B*T, V) and MTP logits (D, B*T, V).
  LossReport forward(const int32_t* tokens, Dims d, float* logits = nullptr,
                     float* mtp_logits = nullptr);
  // Last position's next-token logits (V) of a single sequence `tokens` of length T (sampling).
  void next_token_logits(const int32_t* tokens, int T, float* logits);

  void zero_grads();
  float* params() { return params_; }
  float* grads() { return grads_; }
  size_t num_params() const { return table_.total; }
  const ParamTable& table() const { return table_; }
  const ModelConfig& config() const { return c_; }
  const TrainingLossConfig& loss_config() const { return loss_; }
  void set_mtp_weight(double w) { loss_.mtp_weight = w; }  // the lambda schedule (M5)
  // Expert loads per MoE layer (main layers first, then MTP blocks), accumulated by
  // forward_backward until reset_loads().
  std::vector<MoeStats>& moe_stats() { return stats_; }
  void reset_loads();
  // Names of the MoE layers in moe_stats() order ("layer 3", "mtp 1").
  std::vector<std::string> moe_layer_names() const;
  int max_context() const { return max_.T; }
  size_t activation_bytes() const { return act_floats_ * sizeof(float); }
  // Activation + scratch floats the model would allocate for these dims (no allocation).
  static size_t measure_activation_floats(const ModelConfig& c, Dims d, Recompute r);

  struct Acts;  // activation layout (model.cpp); public only so the layout helper can fill it

 private:
  struct HeadIo;
  LossReport run(const int32_t* tokens, Dims d, bool backward, float grad_scale, float* logits,
                 float* mtp_logits, bool with_mtp);
  double head_loss(const HeadIo& io, Dims d, bool backward);

  ModelConfig c_;
  TrainingLossConfig loss_;
  Dims max_;
  Recompute recompute_;
  Exec ex_;
  ParamTable table_;
  float* params_ = nullptr;
  float* grads_ = nullptr;
  ModelWeights w_, g_;
  std::vector<MoeStats> stats_;
  std::unique_ptr<Acts> acts_;
  float* act_mem_ = nullptr;
  size_t act_floats_ = 0;
};

}  // namespace dsv3

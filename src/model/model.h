// The whole DeepSeek-V3 model (M1-M5) as passes over three separate things: the weights
// (model/weights.h: read-only, shared), a workspace (model/workspace.h: one micro-batch's
// activations) and, for training, the gradients (views bound like the weights). Single-device
// code (STYLE.md point 9): data, expert and pipeline parallelism wrap these passes from outside.
//
// A micro-batch is B rows of T+1 tokens (inputs and shifted targets). forward_backward() adds
// the gradient of grad_scale * total loss to the gradients; the optimizer lives in src/optim.
// The pieces below it compose into the same thing and let a pipeline stage run only its part:
// load_batch -> embed_forward -> blocks_forward(l0, l1) -> head_loss -> mtp_forward ->
// mtp_backward -> blocks_backward(l0, l1) -> embed_backward.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/weights.h"
#include "model/workspace.h"

namespace dsv3 {

// Distillation (I5): the teacher's distribution softened by a temperature as a second target of
// the main head. Its objective per target becomes (1 - alpha) CE + alpha kd (ops/distill.h), with
// the same row weights; `logits` writes the teacher's fp32 logits of rows [r0, r0 + rows) of the
// micro-batch into out (rows, V), so the head asks for them chunk by chunk.
struct SoftTargets {
  double alpha = 0.5, temperature = 2.0;
  std::function<void(int r0, int rows, const Tensor& out)> logits;
};

struct MicroBatch {
  Dims d;
  const int32_t* tokens = nullptr;        // host (B, T+1); a target < 0 is ignored
  // host (B, T): the weight of each target in the main loss (SFT masks, preference losses);
  // null: 1 for every target. The loss is sum(w * CE) / sum(w) over targets >= 0; MTP module k
  // weighs its target t+k+1 of row position t with w[t+k].
  const float* loss_weights = nullptr;
  // host (B, T), instead of loss_weights: the objective's coefficient on each target's
  // cross-entropy, any sign and not normalised, i.e. d(objective)/d(CE) = -d(objective)/d(log p)
  // (DPO, GRPO: computed from a forward pass's token_logprobs). The reported loss is then
  // sum(coef * CE), and the MTP modules are left out of it.
  const float* ce_coef = nullptr;
  // Distillation targets for the main head (needs a workspace with soft_targets), or null.
  const SoftTargets* soft = nullptr;
};

struct MoeLayerStats {
  std::vector<int64_t> loads;  // (E) slots per expert
  double balance_loss = 0;     // this layer's weighted balance loss
  double entropy = 0;          // mean router entropy over tokens (nats)
};

struct LossReport {
  double loss = 0;          // main next-token cross-entropy (weighted mean over targets)
  double mtp_loss = 0;      // mean over MTP modules of their cross-entropy
  double balance_loss = 0;  // sum over MoE layers of the weighted balance loss
  double distill_loss = 0;  // with soft targets: weighted mean of T^2 KL(teacher || student)
  // loss + mtp_weight * mtp_loss + balance_loss; with soft targets (1 - alpha) loss +
  // alpha distill_loss in place of loss
  double total = 0;
  int64_t targets = 0;      // main-model targets counted
  std::vector<MoeLayerStats> moe;  // per MoE layer (main layers in order, then MTP blocks)
};

struct ForwardOptions {
  float* logits = nullptr;          // host (B*T, V) main-model logits
  float* mtp_logits = nullptr;      // host (D, B*T, V)
  float* token_logprobs = nullptr;  // host (B*T): log p(target), 0 where ignored
  bool mtp = true;                  // run the MTP modules (their loss is reported)
};

// Names of the MoE layers in LossReport::moe order ("layer 3", "mtp 1").
std::vector<std::string> moe_layer_names(const ModelConfig& c);

// The whole model in one process.
LossReport forward(const ModelWeights& w, Workspace& ws, const TrainingLossConfig& loss,
                   const MicroBatch& mb, const ForwardOptions& opt = {});
// backward_done (optional) is called each time a part of the backward has finished, with the
// number of parts done so far: 1 after the MTP modules and the head (their gradients, and the
// final norm's, are then complete), 1 + (L - l) after block l, L + 2 after the embedding. Data
// parallelism starts reducing a gradient bucket as soon as its part is done (P2).
LossReport forward_backward(const ModelWeights& w, Workspace& ws, const TrainingLossConfig& loss,
                            const ModelParams& grads, const MicroBatch& mb, float grad_scale,
                            const std::function<void(int)>& backward_done = {});

// ---- The pieces.
struct Pass {
  const ModelWeights& w;
  Workspace& ws;
  const TrainingLossConfig& loss;
  Dims d;
  const ModelParams* g = nullptr;  // gradients (+=); null: forward only
  float grad_scale = 1;
  // filled by load_batch (host)
  int64_t targets = 0;
  std::vector<double> row_weight;                   // (N) main-loss weight of each row
  double weight_sum = 0;                            // their sum
  std::vector<std::vector<double>> mtp_row_weight;  // per MTP module, (N)
  std::vector<double> mtp_weight_sum;
  const SoftTargets* soft = nullptr;                // the micro-batch's distillation targets
  mutable double distill_loss = 0;                  // written by head_loss with soft targets

  Exec ex() const { return {w.device()}; }
  BlockCtx block_ctx() const {
    TensorParallel* tp = ws.tensor_parallel();
    const bool sp = tp && tp->sequence_parallel && tp->size() > 1;
    return {exec_,   w.config(),          loss, d, ws.rope, ws.config().recompute,
            ws.expert_exchange(), tp, sp, ws.sp_rows, ws.sp_normg};
  }
  Pass(const ModelWeights& w_, Workspace& ws_, const TrainingLossConfig& l, Dims d_,
       const ModelParams* g_ = nullptr, float scale = 1);

 private:
  Exec exec_;
};

// Token ids, targets and per-row loss coefficients of mb into the workspace (checks every id).
void load_batch(Pass& p, const MicroBatch& mb, bool mtp);
void embed_forward(const Pass& p);                        // ws.resid[0]
void blocks_forward(const Pass& p, int l0, int l1);       // ws.resid[l0] -> ws.resid[l1]
// Final norm, head and loss on ws.resid[L]; with gradients also its backward into ws.dres
// (which it zeroes first). Returns the weighted mean cross-entropy (and, with soft targets, sets
// p.distill_loss).
double head_loss(const Pass& p, const ForwardOptions& opt);
// MTP modules 1..D forward (each head's backward too, with gradients). Returns their mean loss.
double mtp_forward(const Pass& p, const ForwardOptions& opt);
void mtp_backward(const Pass& p);                          // D..1, into ws.dres and the embedding
void blocks_backward(const Pass& p, int l0, int l1);      // ws.dres at l1 -> at l0
void embed_backward(const Pass& p);
std::vector<MoeLayerStats> moe_stats(const Pass& p);      // router statistics of the last forward

}  // namespace dsv3

// What training adds to a model's weights (T1, T5): fp32 master weights (the weights' own buffer
// when they are fp32: never a second copy), fp32 gradients bound like the weights, the AdamW
// moments and the loss scaler. Checkpoints hold the master weights and the moments, so they are
// precision-independent: an fp32 checkpoint resumes in bf16 and back.
#pragma once
#include <vector>

#include "model/weights.h"
#include "optim/adamw.h"
#include "optim/precision.h"

namespace dsv3 {

class TrainState {
 public:
  TrainState(ModelWeights& w, const AdamWConfig& oc, const PrecisionConfig& pc);
  TrainState(const TrainState&) = delete;
  TrainState& operator=(const TrainState&) = delete;

  ModelWeights& weights() { return w_; }
  const Tensor& master() const { return master_ ? master_.view() : w_.data(); }  // fp32
  const Tensor& grads() const { return grads_.view(); }                         // fp32
  const ModelParams& grad_view() const { return grad_view_; }
  AdamW& optimizer() { return opt_; }
  LossScaler& scaler() { return scaler_; }
  Exec exec() const { return {w_.device()}; }

  // Master weights (and the compute copy) from fp32 host values: a fresh init or a checkpoint.
  void load_weights(const std::vector<float>& params);
  // Optimizer moments from a checkpoint.
  void load_moments(const std::vector<float>& m, const std::vector<float>& v);
  std::vector<float> master_host() const;
  std::vector<float> m_host() const;
  std::vector<float> v_host() const;
  void zero_grads();

 private:
  ModelWeights& w_;
  Buffer master_;  // empty when the weights are fp32 (then the master is w_.data())
  Buffer grads_;
  ModelParams grad_view_;
  AdamW opt_;
  LossScaler scaler_;
};

}  // namespace dsv3

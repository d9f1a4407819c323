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
  // qat (I3): quantisation-aware training. The master weights are always separate and the
  // compute copy's quantised linear layers (model/quant.h) hold fake_quant(master) (ops/quant.h),
  // so the passes see the int8 weights `dsv3 quantize` will produce, while their gradients
  // update the master as they are (the straight-through estimator: d fake_quant(w) / dw := 1).
  TrainState(ModelWeights& w, const AdamWConfig& oc, const PrecisionConfig& pc, bool qat = false);
  TrainState(const TrainState&) = delete;
  TrainState& operator=(const TrainState&) = delete;

  ModelWeights& weights() { return w_; }
  const Tensor& master() const { return master_ ? master_.view() : w_.data(); }  // fp32
  // The compute copy the optimizer rewrites with the master (empty when the master is it).
  Tensor compute_copy() const { return master_ ? w_.data() : Tensor{}; }
  bool qat() const { return qat_; }
  // After the master changed (an update, a rollback): with qat, the compute copy's quantised
  // layers become fake_quant(master) again and its routing biases the master's.
  void refresh_compute();
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
  bool qat_ = false;
};

}  // namespace dsv3

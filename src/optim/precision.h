// Mixed precision (T5). The compute dtype the forward and backward passes store weights and
// activations in (fp32 accumulation everywhere; fp32 norm statistics, softmax, router scores and
// loss), fp32 master weights, gradients and optimizer moments, and the dynamic loss scaler fp16
// needs: its 5 exponent bits underflow small gradients unless the loss is scaled up first.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "core/fields.h"

namespace dsv3 {

enum class Precision : uint8_t { FP32, BF16, FP16 };
const char* precision_name(Precision p);  // "fp32" | "bf16" | "fp16"
Precision parse_precision(const std::string& s);
DType compute_dtype(Precision p);

struct PrecisionConfig {
  Precision precision = Precision::FP32;
  double loss_scale = 65536;     // fp16: initial loss scale (2^16)
  int loss_scale_window = 1000;  // fp16: clean steps before the scale doubles
  bool tf32 = false;             // CUDA: fp32 GEMMs on TF32 tensor cores (fp32 accumulation)
};
const std::vector<FieldSpec>& precision_fields();
void validate(const PrecisionConfig& p);

// fp16's dynamic loss scaler (Micikevicius et al.; torch's GradScaler, Megatron's
// DynamicGradScaler): the loss is multiplied by scale() before backward and the gradients are
// divided by it before the update. A step with any inf/NaN gradient is skipped and the scale
// halves; after `window` clean steps in a row it doubles. Scales stay powers of two, so scaling
// and unscaling are exact. Disabled (scale 1, never skips) for fp32 and bf16. (The trainer sends a
// step whose loss itself is not finite to the guard instead: that is divergence, not overflow.)
class LossScaler {
 public:
  LossScaler() = default;
  explicit LossScaler(const PrecisionConfig& p);
  bool enabled() const { return enabled_; }
  double scale() const { return scale_; }
  // Records a step's outcome. Returns true when the update may be applied.
  bool update(bool grads_finite);
  int64_t overflows() const { return overflows_; }
  nlohmann::json state() const;            // for checkpoints (null when disabled)
  void restore(const nlohmann::json& s);   // from a checkpoint (null: keep the initial scale)

 private:
  bool enabled_ = false;
  double scale_ = 1;
  int window_ = 1000;
  int64_t clean_ = 0, overflows_ = 0;
};

}  // namespace dsv3

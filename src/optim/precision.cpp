#include "optim/precision.h"

#include <cmath>

#include "core/check.h"

namespace dsv3 {

const char* precision_name(Precision p) {
  switch (p) {
    case Precision::FP32: return "fp32";
    case Precision::BF16: return "bf16";
    case Precision::FP16: return "fp16";
  }
  return "?";
}

Precision parse_precision(const std::string& s) {
  if (s == "fp32" || s == "f32" || s == "float32") return Precision::FP32;
  if (s == "bf16" || s == "bfloat16") return Precision::BF16;
  if (s == "fp16" || s == "f16" || s == "float16") return Precision::FP16;
  fail("unknown precision '", s, "' (expected fp32, bf16 or fp16)");
}

DType compute_dtype(Precision p) {
  switch (p) {
    case Precision::FP32: return DType::F32;
    case Precision::BF16: return DType::BF16;
    case Precision::FP16: return DType::F16;
  }
  return DType::F32;
}

const std::vector<FieldSpec>& precision_fields() {
  using P = PrecisionConfig;
  static const std::vector<FieldSpec> f = {
      choice("precision", &P::precision, "fp32|bf16|fp16",
             "compute dtype of weights and activations (fp32 master weights and optimizer state)",
             precision_name, parse_precision),
      field("loss_scale", &P::loss_scale, "fp16: initial dynamic loss scale (a power of two)", in_range(1, 0x1p64)),
      field("loss_scale_window", &P::loss_scale_window,
            "fp16: clean steps before the loss scale doubles", in_range(1, 1e15)),
      field("tf32", &P::tf32,
            "CUDA, fp32: GEMMs on TF32 tensor cores (10-bit mantissa operands, fp32 sums)"),
  };
  return f;
}

void validate(const PrecisionConfig& p) {
  int e = 0;
  DSV3_CHECK(p.loss_scale >= 1 && p.loss_scale <= 0x1p64 && std::frexp(p.loss_scale, &e) == 0.5,
             "loss_scale must be a power of two in [1, 2^64], got ", p.loss_scale);
  DSV3_CHECK(p.loss_scale_window >= 1, "loss_scale_window must be >= 1, got ", p.loss_scale_window);
}

LossScaler::LossScaler(const PrecisionConfig& p)
    : enabled_(p.precision == Precision::FP16),
      scale_(enabled_ ? p.loss_scale : 1.0),
      window_(p.loss_scale_window) {}

bool LossScaler::update(bool grads_finite) {
  if (!enabled_) return true;
  if (!grads_finite) {
    overflows_++;
    clean_ = 0;
    scale_ = std::max(1.0, scale_ / 2);
    return false;
  }
  if (++clean_ >= window_) {
    clean_ = 0;
    scale_ = std::min(0x1p64, scale_ * 2);
  }
  return true;
}

nlohmann::json LossScaler::state() const {
  if (!enabled_) return nullptr;  // fp32/bf16: nothing to carry (an fp16 resume starts afresh)
  return {{"scale", scale_}, {"clean_steps", clean_}, {"overflows", overflows_}};
}

void LossScaler::restore(const nlohmann::json& s) {
  // a checkpoint of an fp32/bf16 run (null) leaves this run's initial scale in place
  if (!enabled_ || s.is_null()) return;
  auto count = [&](const char* key) {
    if (!s.contains(key)) return int64_t(0);
    const nlohmann::json& v = s.at(key);
    DSV3_CHECK(v.is_number_integer() && v.get<int64_t>() >= 0, "checkpoint loss-scaler state: '",
               key, "' must be a non-negative integer, got ", v.dump());
    return v.get<int64_t>();
  };
  DSV3_CHECK(s.is_object() && s.contains("scale") && s.at("scale").is_number() &&
                 s.contains("clean_steps"),
             "checkpoint loss-scaler state is malformed (expected {scale, clean_steps})");
  const double sc = s.at("scale").get<double>();
  int e = 0;
  DSV3_CHECK(sc >= 1 && sc <= 0x1p64 && std::frexp(sc, &e) == 0.5, "checkpoint loss scale ", sc,
             " is not a power of two in [1, 2^64]");
  scale_ = sc;
  clean_ = count("clean_steps");
  overflows_ = count("overflows");
}

}  // namespace dsv3

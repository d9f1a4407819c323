#include "optim/adamw.h"

#include <cmath>

#include "ops/optimizer.h"

namespace dsv3 {

const std::vector<FieldSpec>& optimizer_fields() {
  using A = AdamWConfig;
  static const std::vector<FieldSpec> f = {
      field("beta1", &A::beta1, "AdamW beta1", in_range_open_hi(0, 1)),
      field("beta2", &A::beta2, "AdamW beta2", in_range_open_hi(0, 1)),
      field("eps", &A::eps, "AdamW epsilon", above(0)),
      field("weight_decay", &A::weight_decay, "decoupled weight decay (2-D weights only)", at_least(0)),
      field("clip", &A::clip, "clip the global gradient norm to this (0 = off)", at_least(0)),
  };
  return f;
}

void validate(const AdamWConfig& c) {
  DSV3_CHECK(c.beta1 >= 0 && c.beta1 < 1 && c.beta2 >= 0 && c.beta2 < 1, "betas must be in [0, 1)");
  DSV3_CHECK(c.eps > 0, "eps must be positive");
  DSV3_CHECK(c.weight_decay >= 0, "weight_decay must be >= 0");
  DSV3_CHECK(c.clip >= 0, "clip must be >= 0");
}

AdamW::AdamW(const AdamWConfig& c, const ParamTable& t, Device device)
    : cfg_(c), spans_(trainable_spans(t)), m_(device, DType::F32, t.total), v_(device, DType::F32, t.total) {}

void AdamW::step(const Exec& ex, const Tensor& master, const Tensor& grads, const Tensor& compute,
                 double lr, double grad_scale) {
  adamw_update(ex, master, grads, m_.view(), v_.view(), compute, spans_,
               {lr, cfg_.beta1, cfg_.beta2, cfg_.eps, cfg_.weight_decay, ++updates_, grad_scale});
}

double global_norm(const Exec& ex, const Tensor& grads, const std::vector<ParamSpan>& spans) {
  return std::sqrt(sum_squares(ex, grads, spans));
}

}  // namespace dsv3

#include "optim/adamw.h"

#include <cmath>

namespace dsv3 {

AdamW::AdamW(const AdamWConfig& c, const ParamTable& t) : cfg(c), m(t.total, 0.f), v(t.total, 0.f) {
  for (const auto& p : t.list)
    if (p.trainable()) spans_.push_back({p.offset, p.numel, p.decay()});
}

void AdamW::step(float* params, const float* grads, double lr, int64_t t) {
  const float b1 = float(cfg.beta1), b2 = float(cfg.beta2), eps = float(cfg.eps);
  const float bc1 = float(1.0 - std::pow(cfg.beta1, double(t)));
  const float bc2_sqrt = float(std::sqrt(1.0 - std::pow(cfg.beta2, double(t))));
  const float step_size = float(lr) / bc1;
  for (const Span& s : spans_) {
    const float decay = s.decay ? float(1.0 - lr * cfg.weight_decay) : 1.0f;
    float* p = params + s.offset;
    const float* g = grads + s.offset;
    float* mm = m.data() + s.offset;
    float* vv = v.data() + s.offset;
#pragma omp parallel for simd schedule(static) if (s.numel > 32768)
    for (size_t i = 0; i < s.numel; i++) {
      mm[i] = b1 * mm[i] + (1.0f - b1) * g[i];
      vv[i] = b2 * vv[i] + (1.0f - b2) * g[i] * g[i];
      const float denom = std::sqrt(vv[i]) / bc2_sqrt + eps;
      p[i] = p[i] * decay - step_size * mm[i] / denom;
    }
  }
}

double grad_global_norm(const float* grads, const ParamTable& t) {
  double total = 0;
  for (const auto& p : t.list) {
    if (!p.trainable()) continue;
    const float* g = grads + p.offset;
    double s = 0;
#pragma omp parallel for reduction(+ : s) schedule(static) if (p.numel > 32768)
    for (size_t i = 0; i < p.numel; i++) s += double(g[i]) * g[i];
    total += s;
  }
  return std::sqrt(total);
}

void scale_grads(float* grads, size_t n, float s) {
#pragma omp parallel for simd schedule(static)
  for (size_t i = 0; i < n; i++) grads[i] *= s;
}

double clip_grad_norm(float* grads, const ParamTable& t, double max_norm) {
  const double norm = grad_global_norm(grads, t);
  if (max_norm > 0 && norm > max_norm) scale_grads(grads, t.total, float(max_norm / (norm + 1e-6)));
  return norm;
}

}  // namespace dsv3

// AdamW over the flat parameter buffer (T1), torch.optim.AdamW semantics: decoupled weight decay
// on 2-D weights only (norm weights and other 1-D tensors are exempt), routing-bias buffers are
// not touched. Moments are fp32 and live beside the parameters in checkpoints.
#pragma once
#include <cstdint>
#include <vector>

#include "model/params.h"

namespace dsv3 {

struct AdamWConfig {
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
};

struct AdamW {
  AdamWConfig cfg;
  std::vector<float> m, v;  // same layout as the parameters

  AdamW(const AdamWConfig& c, const ParamTable& t);
  // One update with learning rate lr; t is the 1-based step count (bias correction).
  void step(float* params, const float* grads, double lr, int64_t t);

 private:
  struct Span {
    size_t offset, numel;
    bool decay;
  };
  std::vector<Span> spans_;  // trainable tensors
};

// sqrt(sum of squares) over trainable tensors, accumulated in double in a fixed order.
double grad_global_norm(const float* grads, const ParamTable& t);
// Multiplies every gradient by s.
void scale_grads(float* grads, size_t n, float s);
// torch.nn.utils.clip_grad_norm_: scale by max_norm / (norm + 1e-6) when norm > max_norm.
// Returns the norm before clipping.
double clip_grad_norm(float* grads, const ParamTable& t, double max_norm);

}  // namespace dsv3

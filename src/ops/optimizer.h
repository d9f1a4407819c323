// Optimizer kernels on the seam (T1, T5): the AdamW update over many tensors in one call (a
// multi-tensor kernel on a GPU), the sum of squares behind the global gradient norm, and scaling
// (clipping, loss-scale removal). Master weights, gradients and moments are in the accumulation
// dtype (fp32); the optional compute copy (bf16/fp16 weights the forward reads) is rewritten from
// the new master values in the same pass.
#pragma once
#include <cstdint>
#include <span>

#include "backend/backend.h"

namespace dsv3 {

struct ParamSpan {
  size_t offset, numel;  // elements, into every buffer laid out by the parameter table
  bool decay;            // decoupled weight decay applies (2-D weights)
};

// torch.optim.AdamW semantics, in fp32 arithmetic (g = grads * grad_scale, rounded to fp32):
//   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
//   p = p (1 - lr wd [decay]) - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
struct AdamwHyper {
  double lr, beta1, beta2, eps, weight_decay;
  int64_t step;             // t, 1-based (bias correction)
  double grad_scale = 1.0;  // g is read as g * float(grad_scale): clipping and loss-scale removal
                            // in this pass instead of one of their own (the gradients stay as they are)
};
void adamw_update(const Exec& ex, const Tensor& master, const Tensor& grads, const Tensor& m,
                  const Tensor& v, const Tensor& compute, std::span<const ParamSpan> spans,
                  const AdamwHyper& h);

// Auxiliary-loss-free balancing (DeepSeek-V3): bias (E, fp32) += gamma * sign(mean(loads) - load_e)
// for one MoE layer, loads (E, i64) being the slots routed to each expert over the step.
void routing_bias_update(const Exec& ex, const Tensor& bias, const Tensor& loads, double gamma);

// sum over the spans of x^2, accumulated in double in blocks of a fixed size and a fixed order:
// the same bits for any thread count. Inf or NaN anywhere gives a non-finite result.
double sum_squares(const Exec& ex, const Tensor& x, std::span<const ParamSpan> spans);

}  // namespace dsv3

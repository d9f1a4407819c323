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
  float lr_mult = 1.0f;  // the tensor's learning rate is lr * lr_mult (per-group rates)
};

// Annealed gradient noise (Neelakantan et al. 2015): g += std * z, z ~ N(0, 1) drawn from a
// counter-based generator keyed by (seed, update, element): no state, the same on any thread
// count or device, reproducible in a reference implementation (tests/python/test_optimizers.py).
struct GradNoise {
  double std = 0;  // 0 = off
  uint64_t seed = 0;
};
// The standard normal of element i at update t (splitmix64 hashes, Box-Muller in double).
double noise_normal(uint64_t seed, uint64_t t, uint64_t i);

// torch.optim.AdamW semantics, in fp32 arithmetic (g = grads * grad_scale, rounded to fp32):
//   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
//   p = p (1 - lr wd [decay]) - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
struct AdamwHyper {
  double lr, beta1, beta2, eps, weight_decay;
  int64_t step;             // t, 1-based (bias correction)
  double grad_scale = 1.0;  // g is read as g * float(grad_scale): clipping and loss-scale removal
                            // in this pass instead of one of their own (the gradients stay as they are)
  GradNoise noise = {};     // then g += float(std * z)
};
void adamw_update(const Exec& ex, const Tensor& master, const Tensor& grads, const Tensor& m,
                  const Tensor& v, const Tensor& compute, std::span<const ParamSpan> spans,
                  const AdamwHyper& h);

// LAMB (You et al. 2020), per tensor, with AdamW's moments and bias correction:
//   r = m^ / (sqrt(v^) + eps) + wd p [decay];  p -= lr * trust * r,
//   trust = ||p|| / ||r|| for 2-D weights (decay spans) when both are > 0, else 1.
// Norms are summed in double in a fixed order.
void lamb_update(const Exec& ex, const Tensor& master, const Tensor& grads, const Tensor& m,
                 const Tensor& v, const Tensor& compute, std::span<const ParamSpan> spans,
                 const AdamwHyper& h);

// Muon (Jordan et al. 2024) with Moonlight's scaling (Liu et al. 2025) for 2-D hidden weights:
//   buf = mu buf + g;  u = g + mu buf (Nesterov) or buf;  O = NewtonSchulz5(u / ||u||_F);
//   p = p (1 - lr wd) - lr * 0.2 sqrt(max(rows, cols)) * O
// NewtonSchulz: X <- a X + (b A + c A A) X with A = X X^T, (a, b, c) = (3.4445, -4.7750, 2.0315),
// on the wide orientation (rows <= cols), in the accumulation dtype (fp32; fp64 oracle).
struct MatrixSpan {
  size_t offset;
  int rows, cols;   // (out, in), row-major
  float lr_mult = 1.0f;
};
struct MuonHyper {
  double lr, momentum, weight_decay;
  bool nesterov;
  int ns_steps;
  double grad_scale = 1.0;
  GradNoise noise = {};
  int64_t step;  // t, 1-based (the noise key)
};
void muon_update(const Exec& ex, const Tensor& master, const Tensor& grads, const Tensor& buf,
                 const Tensor& compute, std::span<const MatrixSpan> mats, const MuonHyper& h);

// Auxiliary-loss-free balancing (DeepSeek-V3): bias (E, fp32) += gamma * sign(mean(loads) - load_e)
// for one MoE layer, loads (E, i64) being the slots routed to each expert over the step.
void routing_bias_update(const Exec& ex, const Tensor& bias, const Tensor& loads, double gamma);

// sum over the spans of x^2, accumulated in double in blocks of a fixed size and a fixed order:
// the same bits for any thread count. Inf or NaN anywhere gives a non-finite result.
double sum_squares(const Exec& ex, const Tensor& x, std::span<const ParamSpan> spans);

}  // namespace dsv3

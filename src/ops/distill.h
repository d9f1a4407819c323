// Knowledge distillation loss (I5), one chunk of rows of the output head at a time. With
// temperature T, p = softmax(z / T) of the student's logits z, q = softmax(t / T) of the
// teacher's t (the same rows, the same vocabulary):
//   kd[n]   = T^2 KL(q || p) = T^2 sum_v q_v (log q_v - log p_v)       (Hinton et al., 2015: the
//             T^2 keeps the gradient's scale independent of T)
// and the head's objective per row is (1 - alpha) CE + alpha kd. Logits, losses and gradients are
// in the accumulation dtype (fp32; fp64 for the oracle), as for cross_entropy. Rows whose target
// is < 0 are ignored (loss 0, gradient 0), as cross-entropy ignores them.
#pragma once
#include <cstdint>

#include "backend/backend.h"

namespace dsv3 {

// kd (N) from the student's and the teacher's logits (N, V).
void distill_forward(const Exec& ex, const Tensor& kd, const Tensor& logits,
                     const Tensor& teacher_logits, const Tensor& targets, int N, int V, double T);
// dlogits (N, V) = row_scale[n] * d/dz [(1 - alpha) CE(z, target) + alpha kd(z, t)]
//               = row_scale[n] * ((1 - alpha) (softmax(z) - onehot) + alpha T (p - q)).
// OVERWRITES dlogits, which may alias logits in the accumulation dtype or be the 16-bit operand
// of the head's backward GEMMs (each value rounded once), like cross_entropy_backward, which it
// replaces for a distilled row: the two terms are summed before any rounding.
void distill_backward(const Exec& ex, const Tensor& dlogits, const Tensor& logits,
                      const Tensor& teacher_logits, const Tensor& targets, const Tensor& row_scale,
                      int N, int V, double alpha, double T);

}  // namespace dsv3

// Softmax cross-entropy over the vocabulary, fused: the backward overwrites the logits with
// their gradient, so the (N, V) buffer is never duplicated. Targets < 0 are ignored (loss 0,
// gradient 0). Logits, losses and gradients are in the accumulation dtype (fp32; fp64 for the
// oracle) in every precision: the head GEMM writes fp32 logits from bf16/fp16 operands.
#pragma once
#include <cstdint>

#include "backend/backend.h"

namespace dsv3 {
namespace cpu {
// losses (N): -log softmax(logits[n])[targets[n]], 0 where targets[n] < 0.
template <typename A>
void cross_entropy_forward(A* losses, const A* logits, const int32_t* targets, int N, int V);
// dlogits (N,V) = row_scale[n] * (softmax(logits[n]) - onehot(target)), zero rows for ignored
// targets. row_scale[n] is d(loss)/d(losses[n]): 1/count for a mean, a token weight for masked
// or preference losses. OVERWRITES dlogits (see src/ops/README.md); in the accumulation dtype
// it may alias logits; a 16-bit dlogits (the operand of the head's backward GEMMs in bf16/fp16
// runs) gets each value rounded once.
template <typename A, typename T>
void cross_entropy_backward(T* dlogits, const A* logits, const int32_t* targets,
                            const A* row_scale, int N, int V);
}  // namespace cpu
void cross_entropy_forward(const Exec& ex, const Tensor& losses, const Tensor& logits,
                           const Tensor& targets, int N, int V);
void cross_entropy_backward(const Exec& ex, const Tensor& dlogits, const Tensor& logits,
                            const Tensor& targets, const Tensor& row_scale, int N, int V);
}  // namespace dsv3

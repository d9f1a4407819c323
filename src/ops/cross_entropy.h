// Softmax cross-entropy over the vocabulary, fused: the backward overwrites the logits with
// their gradient, so the (N, V) buffer is never duplicated. Targets < 0 are ignored (loss 0,
// gradient 0). Softmax statistics in fp32 (or wider), max-subtracted.
#pragma once
#include <cstdint>

#include "backend/backend.h"

namespace dsv3 {
namespace cpu {
// losses (N): -log softmax(logits[n])[targets[n]], 0 where targets[n] < 0.
template <typename T>
void cross_entropy_forward(T* losses, const T* logits, const int32_t* targets, int N, int V);
// dlogits (N,V) = dloss * (softmax(logits) - onehot(target)), zero rows for ignored targets.
// OVERWRITES dlogits (the one exception to +=); dlogits may alias logits.
template <typename T>
void cross_entropy_backward(T* dlogits, const T* logits, const int32_t* targets, T dloss, int N,
                            int V);
}  // namespace cpu
void cross_entropy_forward(const Exec& ex, float* losses, const float* logits,
                           const int32_t* targets, int N, int V);
void cross_entropy_backward(const Exec& ex, float* dlogits, const float* logits,
                            const int32_t* targets, float dloss, int N, int V);
}  // namespace dsv3

// Softmax cross-entropy over the vocabulary (ops/cross_entropy.h): one block per row of fp32
// logits; the max and the sum of exponentials in fixed trees. The head feeds it 256-row chunks
// of logits (model/head.cpp), so the batch's (N, V) fp32 logits never exist; the backward writes
// the gradient straight into the compute dtype, or in place over fp32 logits.
#pragma once
#include "ops/cuda/device.cuh"
#include "ops/cuda/launch.h"

namespace dsv3::cuda {

// m = max_j x_j and s = sum_j exp(x_j - m) of one row, every thread gets both.
DSV3_DEVICE void row_max_sum(const float* x, int V, float* red, float& m, float& s) {
  float mx = -INFINITY;
  for (int j = int(threadIdx.x); j < V; j += int(blockDim.x)) mx = fmaxf(mx, x[j]);
  m = block_max(mx, red);
  float sum = 0;
  for (int j = int(threadIdx.x); j < V; j += int(blockDim.x)) sum += expf(x[j] - m);
  s = block_sum(sum, red);
}

template <typename = void>
__global__ void cross_entropy_forward_kernel(float* losses, const float* logits,
                                             const int32_t* targets, int V) {
  __shared__ float red[32];
  const size_t n = blockIdx.x;
  const int tgt = targets[n];
  if (tgt < 0) {
    if (threadIdx.x == 0) losses[n] = 0;
    return;
  }
  const float* x = logits + n * V;
  float m, s;
  row_max_sum(x, V, red, m, s);
  if (threadIdx.x == 0) losses[n] = logf(s) + m - x[tgt];
}

// d = row_scale * (softmax - onehot). Each element is read and written by the same thread after
// the row's max and sum are known, so d may alias the (fp32) logits.
template <typename T>
__global__ void cross_entropy_backward_kernel(T* dlogits, const float* logits,
                                              const int32_t* targets, const float* row_scale,
                                              int V) {
  __shared__ float red[32];
  const size_t n = blockIdx.x;
  const int tgt = targets[n];
  T* d = dlogits + n * V;
  if (tgt < 0) {
    for (int j = int(threadIdx.x); j < V; j += int(blockDim.x)) d[j] = st<T>(0.0f);
    return;
  }
  const float* x = logits + n * V;
  float m, s;
  row_max_sum(x, V, red, m, s);
  const float dloss = row_scale[n], k = dloss / s;
  for (int j = int(threadIdx.x); j < V; j += int(blockDim.x)) {
    const float e = expf(x[j] - m);
    if constexpr (std::is_same_v<T, float>)
      d[j] = j == tgt ? k * e - dloss : k * e;  // as the CPU's fp32 path: scale, then subtract
    else
      d[j] = st<T>(k * (j == tgt ? e - s : e));  // as its 16-bit path: one rounding
  }
}

template <typename L>
void cross_entropy_forward_run(const L& launch, float* losses, const float* logits,
                               const int32_t* targets, int N, int V) {
  if (N == 0) return;
  launch(cross_entropy_forward_kernel<>, dim3(unsigned(N)), dim3(row_threads(size_t(V))), 0, losses,
         logits, targets, V);
}
template <typename L, typename T>
void cross_entropy_backward_run(const L& launch, T* dlogits, const float* logits,
                                const int32_t* targets, const float* row_scale, int N, int V) {
  if (N == 0) return;
  launch(cross_entropy_backward_kernel<T>, dim3(unsigned(N)), dim3(row_threads(size_t(V))), 0,
         dlogits, logits, targets, row_scale, V);
}

}  // namespace dsv3::cuda

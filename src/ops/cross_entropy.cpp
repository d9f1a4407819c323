// Fused softmax cross-entropy over the vocabulary; the backward may overwrite the logits.
#include "ops/cross_entropy.h"
#include "ops/fast_math.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstddef>

namespace dsv3 {
namespace cpu {


constexpr size_t kParallelWork = 16384;

template <typename T>
static T row_max(const T* x, int V) {
  T m = x[0];
#pragma omp simd reduction(max : m)
  for (int j = 1; j < V; j++) m = x[j] > m ? x[j] : m;
  return m;
}

// losses[n] = log(sum_j exp(x_j - m)) + m - x_target, m = max_j x_j.
template <typename T>
void cross_entropy_forward(T* losses, const T* logits, const int32_t* targets, int N, int V) {
#pragma omp parallel for schedule(static) if (size_t(N) * V > kParallelWork)
  for (int n = 0; n < N; n++) {
    if (targets[n] < 0) {
      losses[n] = 0;
      continue;
    }
    const T* x = logits + size_t(n) * V;
    T m = row_max(x, V), sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < V; j++) sum += exp_nonpos(x[j] - m);
    losses[n] = std::log(sum) + m - x[targets[n]];
  }
}

// dlogits = dloss * (softmax - onehot). Each element is read before it is written at the same
// index, so dlogits may alias logits: the exponentials are stored first, then scaled.
template <typename T>
void cross_entropy_backward(T* dlogits, const T* logits, const int32_t* targets, T dloss, int N,
                            int V) {
#pragma omp parallel for schedule(static) if (size_t(N) * V > kParallelWork)
  for (int n = 0; n < N; n++) {
    T* d = dlogits + size_t(n) * V;
    if (targets[n] < 0) {
      for (int j = 0; j < V; j++) d[j] = 0;
      continue;
    }
    const T* x = logits + size_t(n) * V;
    T m = row_max(x, V), sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < V; j++) {
      T e = exp_nonpos(x[j] - m);
      d[j] = e;
      sum += e;
    }
    T k = dloss / sum;
    for (int j = 0; j < V; j++) d[j] *= k;
    d[targets[n]] -= dloss;
  }
}

template void cross_entropy_forward<float>(float*, const float*, const int32_t*, int, int);
template void cross_entropy_forward<double>(double*, const double*, const int32_t*, int, int);
template void cross_entropy_backward<float>(float*, const float*, const int32_t*, float, int, int);
template void cross_entropy_backward<double>(double*, const double*, const int32_t*, double, int,
                                             int);

}  // namespace cpu

void cross_entropy_forward(const Exec& ex, float* losses, const float* logits,
                           const int32_t* targets, int N, int V) {
  require_cpu(ex, "cross_entropy_forward");
  cpu::cross_entropy_forward(losses, logits, targets, N, V);
}

void cross_entropy_backward(const Exec& ex, float* dlogits, const float* logits,
                            const int32_t* targets, float dloss, int N, int V) {
  require_cpu(ex, "cross_entropy_backward");
  cpu::cross_entropy_backward(dlogits, logits, targets, dloss, N, V);
}

}  // namespace dsv3

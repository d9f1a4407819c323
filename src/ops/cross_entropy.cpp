// Fused softmax cross-entropy over the vocabulary; the backward may overwrite the logits.
// Without it GCC keeps the clamps of exp_nonpos as branches and the softmax loops scalar (see
// swiglu.cpp); no value depends on FP flags here.
#pragma GCC optimize("no-trapping-math")
#include "ops/cross_entropy.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "core/profile.h"
#include "ops/cuda/ops_cuda.h"
#include "ops/dispatch.h"
#include "ops/fast_math.h"

namespace dsv3 {
namespace cpu {

constexpr size_t kParallelWork = 16384;

template <typename A>
static A row_max(const A* x, int V) {
  A m = x[0];
#pragma omp simd reduction(max : m)
  for (int j = 1; j < V; j++) m = x[j] > m ? x[j] : m;
  return m;
}

// losses[n] = log(sum_j exp(x_j - m)) + m - x_target, m = max_j x_j.
template <typename A>
void cross_entropy_forward(A* losses, const A* logits, const int32_t* targets, int N, int V) {
#pragma omp parallel for schedule(static) if (size_t(N) * V > kParallelWork)
  for (int n = 0; n < N; n++) {
    if (targets[n] < 0) {
      losses[n] = 0;
      continue;
    }
    const A* x = logits + size_t(n) * V;
    A m = row_max(x, V), sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < V; j++) sum += exp_nonpos(x[j] - m);
    losses[n] = std::log(sum) + m - x[targets[n]];
  }
}

// dlogits = row_scale * (softmax - onehot). In the accumulation dtype each element is read
// before it is written at the same index, so dlogits may alias logits: the exponentials are
// stored first, then scaled. A 16-bit dlogits gets the exponentials in an fp32 row first, so
// each value is rounded once.
template <typename A, typename T>
void cross_entropy_backward(T* dlogits, const A* logits, const int32_t* targets,
                            const A* row_scale, int N, int V) {
#pragma omp parallel for schedule(static) if (size_t(N) * V > kParallelWork)
  for (int n = 0; n < N; n++) {
    T* d = dlogits + size_t(n) * V;
    if (targets[n] < 0) {
      for (int j = 0; j < V; j++) d[j] = T(0.0f);
      continue;
    }
    const A* x = logits + size_t(n) * V;
    const A m = row_max(x, V), dloss = row_scale[n];
    A sum = 0;
    const int tgt = targets[n];
    if constexpr (std::is_same_v<T, A>) {
#pragma omp simd reduction(+ : sum)
      for (int j = 0; j < V; j++) {
        A e = exp_nonpos(x[j] - m);
        d[j] = e;
        sum += e;
      }
      const A k = dloss / sum;
      for (int j = 0; j < V; j++) d[j] *= k;
      d[tgt] -= dloss;
    } else {  // the exponentials in a per-thread fp32 row, then one rounding per element
      thread_local std::vector<A> e;
      if (e.size() < size_t(V)) e.resize(V);
#pragma omp simd reduction(+ : sum)
      for (int j = 0; j < V; j++) {
        e[j] = exp_nonpos(x[j] - m);
        sum += e[j];
      }
      const A k = dloss / sum;
      e[tgt] -= sum;  // k * (e - sum) = k e - dloss at the target
#pragma omp simd
      for (int j = 0; j < V; j++) d[j] = store<T>(k * e[j]);
    }
  }
}

template void cross_entropy_forward<float>(float*, const float*, const int32_t*, int, int);
template void cross_entropy_forward<double>(double*, const double*, const int32_t*, int, int);
template void cross_entropy_backward<float, float>(float*, const float*, const int32_t*,
                                                   const float*, int, int);
template void cross_entropy_backward<double, double>(double*, const double*, const int32_t*,
                                                     const double*, int, int);
template void cross_entropy_backward<float, bf16_t>(bf16_t*, const float*, const int32_t*,
                                                    const float*, int, int);
template void cross_entropy_backward<float, f16_t>(f16_t*, const float*, const int32_t*,
                                                   const float*, int, int);

}  // namespace cpu

void cross_entropy_forward(const Exec& ex, const Tensor& losses, const Tensor& logits,
                           const Tensor& targets, int N, int V) {
  const char* op = "cross_entropy_forward";
  profile::Scope prof(op);
  check_device(ex, op, {{"losses", losses}, {"logits", logits}, {"targets", targets}});
  DSV3_CHECK(logits.dtype == DType::F32 || logits.dtype == DType::F64, op,
             ": logits must be f32 or f64, not ", dtype_name(logits.dtype), " (internal error)");
  check_arg(op, "logits", logits, logits.dtype, size_t(N) * V);
  check_arg(op, "losses", losses, logits.dtype, size_t(N));
  check_arg(op, "targets", targets, DType::I32, size_t(N));
  if (ex.device == Device::CUDA) return cuda::cross_entropy_forward(ex, losses, logits, targets, N, V);
  if (logits.dtype == DType::F64)
    return cpu::cross_entropy_forward(losses.as<double>(), logits.as<double>(),
                                      targets.as<int32_t>(), N, V);
  cpu::cross_entropy_forward(losses.as<float>(), logits.as<float>(), targets.as<int32_t>(), N, V);
}

void cross_entropy_backward(const Exec& ex, const Tensor& dlogits, const Tensor& logits,
                            const Tensor& targets, const Tensor& row_scale, int N, int V) {
  const char* op = "cross_entropy_backward";
  profile::Scope prof(op);
  check_device(ex, op, {{"dlogits", dlogits}, {"logits", logits}, {"targets", targets},
                        {"row_scale", row_scale}});
  DSV3_CHECK(logits.dtype == DType::F32 || logits.dtype == DType::F64, op,
             ": logits must be f32 or f64, not ", dtype_name(logits.dtype), " (internal error)");
  check_arg(op, "logits", logits, logits.dtype, size_t(N) * V);
  DSV3_CHECK(dlogits.dtype == logits.dtype ||
                 (logits.dtype == DType::F32 && (dlogits.dtype == DType::BF16 || dlogits.dtype == DType::F16)),
             op, ": dlogits is ", dtype_name(dlogits.dtype), " for ", dtype_name(logits.dtype),
             " logits (internal error)");
  check_arg(op, "dlogits", dlogits, dlogits.dtype, size_t(N) * V);
  check_arg(op, "row_scale", row_scale, logits.dtype, size_t(N));
  check_arg(op, "targets", targets, DType::I32, size_t(N));
  if (ex.device == Device::CUDA) return cuda::cross_entropy_backward(ex, dlogits, logits, targets, row_scale, N, V);
  const int32_t* tg = targets.as<int32_t>();
  if (logits.dtype == DType::F64)
    return cpu::cross_entropy_backward(dlogits.as<double>(), logits.as<double>(), tg,
                                       row_scale.as<double>(), N, V);
  const float* lg = logits.as<float>();
  const float* rs = row_scale.as<float>();
  switch (dlogits.dtype) {
    case DType::BF16: return cpu::cross_entropy_backward(dlogits.as<bf16_t>(), lg, tg, rs, N, V);
    case DType::F16: return cpu::cross_entropy_backward(dlogits.as<f16_t>(), lg, tg, rs, N, V);
    default: return cpu::cross_entropy_backward(dlogits.as<float>(), lg, tg, rs, N, V);
  }
}

}  // namespace dsv3

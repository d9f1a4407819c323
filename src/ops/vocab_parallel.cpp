// Vocabulary-parallel embedding and cross-entropy kernels (the math is in the header).
#include "ops/vocab_parallel.h"

#include <cmath>
#include <cstddef>
#include <type_traits>

#include "core/profile.h"
#include "ops/dispatch.h"
#include "ops/fast_math.h"

namespace dsv3 {
namespace cpu {

constexpr size_t kParallelWork = 16384;

template <typename T>
void embedding_shard_forward(T* out, const int32_t* ids, const T* table, int first, int V, int N,
                             int C) {
#pragma omp parallel for schedule(static) if (size_t(N) * C > kParallelWork)
  for (int n = 0; n < N; n++) {
    const int r = ids[n] - first;
    T* o = out + size_t(n) * C;
    if (r >= 0 && r < V) std::copy_n(table + size_t(r) * C, C, o);
    else std::fill_n(o, C, T(0.0f));
  }
}

// In token order per element, as embedding_backward: bit-identical whatever the threads.
template <typename T>
void embedding_shard_backward(accum_t<T>* dtable, const T* dout, const int32_t* ids, int first,
                              int V, int N, int C) {
#pragma omp parallel for schedule(static) if (size_t(N) * C > kParallelWork)
  for (int c = 0; c < C; c++)
    for (int n = 0; n < N; n++) {
      const int r = ids[n] - first;
      if (r >= 0 && r < V) dtable[size_t(r) * C + c] += load(dout[size_t(n) * C + c]);
    }
}

template <typename A>
void ce_shard_max(A* stats, const A* logits, int N, int V) {
#pragma omp parallel for schedule(static) if (size_t(N) * V > kParallelWork)
  for (int n = 0; n < N; n++) {
    const A* x = logits + size_t(n) * V;
    A m = x[0];
    for (int j = 1; j < V; j++) m = x[j] > m ? x[j] : m;
    stats[n] = m;
  }
}

template <typename A>
void ce_shard_sums(A* stats, const A* logits, const int32_t* targets, int first, int N, int V) {
#pragma omp parallel for schedule(static) if (size_t(N) * V > kParallelWork)
  for (int n = 0; n < N; n++) {
    const A* x = logits + size_t(n) * V;
    const A m = stats[n];
    A sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < V; j++) sum += exp_nonpos(x[j] - m);
    const int t = targets[n] - first;
    stats[N + n] = sum;
    stats[2 * size_t(N) + n] = targets[n] >= 0 && t >= 0 && t < V ? x[t] : A(0);
  }
}

template <typename A>
void ce_shard_loss(A* losses, const A* stats, const int32_t* targets, int N) {
  for (int n = 0; n < N; n++)
    losses[n] = targets[n] < 0 ? A(0) : std::log(stats[N + n]) + stats[n] - stats[2 * size_t(N) + n];
}

template <typename A, typename T>
void ce_shard_backward(T* dlogits, const A* logits, const A* stats, const int32_t* targets,
                       const A* row_scale, int first, int N, int V) {
#pragma omp parallel for schedule(static) if (size_t(N) * V > kParallelWork)
  for (int n = 0; n < N; n++) {
    T* d = dlogits + size_t(n) * V;
    const A* x = logits + size_t(n) * V;
    if (targets[n] < 0) {
      for (int j = 0; j < V; j++) d[j] = T(0.0f);
      continue;
    }
    const A m = stats[n], k = row_scale[n] / stats[N + n];
    const int t = targets[n] - first;
    for (int j = 0; j < V; j++) {
      A g = k * exp_nonpos(x[j] - m);
      if (j == t) g -= row_scale[n];
      if constexpr (std::is_same_v<T, A>) d[j] = g;
      else d[j] = store<T>(g);
    }
  }
}

#define DSV3_VOCAB_EMB(T)                                                                   \
  template void embedding_shard_forward<T>(T*, const int32_t*, const T*, int, int, int, int); \
  template void embedding_shard_backward<T>(accum_t<T>*, const T*, const int32_t*, int, int, int, int);
DSV3_VOCAB_EMB(float)
DSV3_VOCAB_EMB(double)
DSV3_VOCAB_EMB(bf16_t)
DSV3_VOCAB_EMB(f16_t)
#define DSV3_VOCAB_CE(A)                                                             \
  template void ce_shard_max<A>(A*, const A*, int, int);                             \
  template void ce_shard_sums<A>(A*, const A*, const int32_t*, int, int, int);       \
  template void ce_shard_loss<A>(A*, const A*, const int32_t*, int);
DSV3_VOCAB_CE(float)
DSV3_VOCAB_CE(double)
template void ce_shard_backward<float, float>(float*, const float*, const float*, const int32_t*,
                                              const float*, int, int, int);
template void ce_shard_backward<double, double>(double*, const double*, const double*,
                                                const int32_t*, const double*, int, int, int);
template void ce_shard_backward<float, bf16_t>(bf16_t*, const float*, const float*, const int32_t*,
                                               const float*, int, int, int);
template void ce_shard_backward<float, f16_t>(f16_t*, const float*, const float*, const int32_t*,
                                              const float*, int, int, int);

}  // namespace cpu

void embedding_shard_forward(const Exec& ex, const Tensor& out, const Tensor& ids,
                             const Tensor& table, int first, int V, int N, int C) {
  const char* op = "embedding_shard_forward";
  profile::Scope prof(op);
  require_cpu_kernel(ex, op);
  check_arg(op, "out", out, table.dtype, size_t(N) * C);
  check_arg(op, "ids", ids, DType::I32, size_t(N));
  check_arg(op, "table", table, table.dtype, size_t(V) * C);
  dispatch_float(table.dtype, op, [&]<typename T>() {
    cpu::embedding_shard_forward<T>(out.as<T>(), ids.as<int32_t>(), table.as<T>(), first, V, N, C);
  });
}

void embedding_shard_backward(const Exec& ex, const Tensor& dtable, const Tensor& dout,
                              const Tensor& ids, int first, int V, int N, int C) {
  const char* op = "embedding_shard_backward";
  profile::Scope prof(op);
  require_cpu_kernel(ex, op);
  check_arg(op, "dout", dout, dout.dtype, size_t(N) * C);
  check_arg(op, "dtable", dtable, accum_dtype(dout.dtype), size_t(V) * C);
  check_arg(op, "ids", ids, DType::I32, size_t(N));
  dispatch_float(dout.dtype, op, [&]<typename T>() {
    cpu::embedding_shard_backward<T>(dtable.as<accum_t<T>>(), dout.as<T>(), ids.as<int32_t>(),
                                     first, V, N, C);
  });
}

namespace {
void check_ce(const char* op, const Exec& ex, const Tensor& logits, const Tensor& stats, int N,
              int V) {
  require_cpu_kernel(ex, op);
  DSV3_CHECK(logits.dtype == DType::F32 || logits.dtype == DType::F64, op,
             ": logits must be f32 or f64, not ", dtype_name(logits.dtype), " (internal error)");
  check_arg(op, "logits", logits, logits.dtype, size_t(N) * V);
  check_arg(op, "stats", stats, logits.dtype, 3 * size_t(N));
}
}  // namespace

void ce_shard_max(const Exec& ex, const Tensor& stats, const Tensor& logits, int N, int V) {
  const char* op = "ce_shard_max";
  profile::Scope prof(op);
  check_ce(op, ex, logits, stats, N, V);
  if (logits.dtype == DType::F64) return cpu::ce_shard_max(stats.as<double>(), logits.as<double>(), N, V);
  cpu::ce_shard_max(stats.as<float>(), logits.as<float>(), N, V);
}

void ce_shard_sums(const Exec& ex, const Tensor& stats, const Tensor& logits,
                   const Tensor& targets, int first, int N, int V) {
  const char* op = "ce_shard_sums";
  profile::Scope prof(op);
  check_ce(op, ex, logits, stats, N, V);
  check_arg(op, "targets", targets, DType::I32, size_t(N));
  if (logits.dtype == DType::F64)
    return cpu::ce_shard_sums(stats.as<double>(), logits.as<double>(), targets.as<int32_t>(),
                              first, N, V);
  cpu::ce_shard_sums(stats.as<float>(), logits.as<float>(), targets.as<int32_t>(), first, N, V);
}

void ce_shard_loss(const Exec& ex, const Tensor& losses, const Tensor& stats,
                   const Tensor& targets, int N) {
  const char* op = "ce_shard_loss";
  profile::Scope prof(op);
  require_cpu_kernel(ex, op);
  check_arg(op, "stats", stats, losses.dtype, 3 * size_t(N));
  check_arg(op, "targets", targets, DType::I32, size_t(N));
  if (losses.dtype == DType::F64)
    return cpu::ce_shard_loss(losses.as<double>(), stats.as<double>(), targets.as<int32_t>(), N);
  check_arg(op, "losses", losses, DType::F32, size_t(N));
  cpu::ce_shard_loss(losses.as<float>(), stats.as<float>(), targets.as<int32_t>(), N);
}

void ce_shard_backward(const Exec& ex, const Tensor& dlogits, const Tensor& logits,
                       const Tensor& stats, const Tensor& targets, const Tensor& row_scale,
                       int first, int N, int V) {
  const char* op = "ce_shard_backward";
  profile::Scope prof(op);
  check_ce(op, ex, logits, stats, N, V);
  check_arg(op, "targets", targets, DType::I32, size_t(N));
  check_arg(op, "row_scale", row_scale, logits.dtype, size_t(N));
  check_arg(op, "dlogits", dlogits, dlogits.dtype, size_t(N) * V);
  const int32_t* tg = targets.as<int32_t>();
  if (logits.dtype == DType::F64)
    return cpu::ce_shard_backward(dlogits.as<double>(), logits.as<double>(), stats.as<double>(),
                                  tg, row_scale.as<double>(), first, N, V);
  const float* lg = logits.as<float>();
  const float* st = stats.as<float>();
  const float* rs = row_scale.as<float>();
  switch (dlogits.dtype) {
    case DType::BF16:
      return cpu::ce_shard_backward(dlogits.as<bf16_t>(), lg, st, tg, rs, first, N, V);
    case DType::F16:
      return cpu::ce_shard_backward(dlogits.as<f16_t>(), lg, st, tg, rs, first, N, V);
    case DType::F32: return cpu::ce_shard_backward(dlogits.as<float>(), lg, st, tg, rs, first, N, V);
    default: fail(op, ": dlogits is ", dtype_name(dlogits.dtype), " (internal error)");
  }
}

}  // namespace dsv3

#include "ops/distill.h"

#include <cmath>
#include <type_traits>

#include "core/profile.h"
#include "ops/dispatch.h"
#include "ops/fast_math.h"

namespace dsv3 {
namespace {

constexpr size_t kParallelWork = 16384;

template <typename A>
A row_max(const A* x, int V) {
  A m = x[0];
#pragma omp simd reduction(max : m)
  for (int j = 1; j < V; j++) m = x[j] > m ? x[j] : m;
  return m;
}
// sum_j exp((x_j - m) * s), m the row max, s > 0
template <typename A>
A exp_sum(const A* x, A m, A s, int V) {
  A z = 0;
#pragma omp simd reduction(+ : z)
  for (int j = 0; j < V; j++) z += exp_nonpos((x[j] - m) * s);
  return z;
}

template <typename A>
void forward_rows(A* kd, const A* z, const A* t, const int32_t* tg, int N, int V, A T) {
  const A s = A(1) / T;
#pragma omp parallel for schedule(static) if (size_t(N) * V > kParallelWork)
  for (int n = 0; n < N; n++) {
    if (tg[n] < 0) {
      kd[n] = 0;
      continue;
    }
    const A* x = z + size_t(n) * V;
    const A* y = t + size_t(n) * V;
    const A mx = row_max(x, V), my = row_max(y, V);
    const A lzx = std::log(exp_sum(x, mx, s, V)), lzy = std::log(exp_sum(y, my, s, V));
    // sum_v q_v (log q_v - log p_v), log q_v = (y_v - my) s - lzy, log p_v = (x_v - mx) s - lzx
    A acc = 0;
#pragma omp simd reduction(+ : acc)
    for (int j = 0; j < V; j++) {
      const A lq = (y[j] - my) * s - lzy, lp = (x[j] - mx) * s - lzx;
      acc += exp_nonpos(lq) * (lq - lp);
    }
    kd[n] = T * T * acc;
  }
}

template <typename A, typename D>
void backward_rows(D* dz, const A* z, const A* t, const int32_t* tg, const A* rs, int N, int V,
                   A alpha, A T) {
  const A s = A(1) / T;
#pragma omp parallel for schedule(static) if (size_t(N) * V > kParallelWork)
  for (int n = 0; n < N; n++) {
    D* d = dz + size_t(n) * V;
    if (tg[n] < 0) {
      for (int j = 0; j < V; j++) d[j] = store<D>(A(0));
      continue;
    }
    const A* x = z + size_t(n) * V;
    const A* y = t + size_t(n) * V;
    const A mx = row_max(x, V), my = row_max(y, V);
    const A ce = rs[n] * (1 - alpha) / exp_sum(x, mx, A(1), V);  // softmax(z) = e^(x - mx) / Z
    const A kp = rs[n] * alpha * T / exp_sum(x, mx, s, V);       // p = e^((x - mx) s) / Zp
    const A kq = rs[n] * alpha * T / exp_sum(y, my, s, V);       // q = e^((y - my) s) / Zq
    const int target = tg[n];
    const A tgt_x = x[target];  // d may alias x: keep what the one-hot term needs
    // each element is read before it is written at the same index, so d may alias x
#pragma omp simd
    for (int j = 0; j < V; j++) {
      const A v = ce * exp_nonpos(x[j] - mx) + kp * exp_nonpos((x[j] - mx) * s) -
                  kq * exp_nonpos((y[j] - my) * s);
      d[j] = store<D>(v);
    }
    // the one-hot term, without a second rounding of a 16-bit d: the target's value again
    const A vt = ce * exp_nonpos(tgt_x - mx) + kp * exp_nonpos((tgt_x - mx) * s) -
                 kq * exp_nonpos((y[target] - my) * s) - rs[n] * (1 - alpha);
    d[target] = store<D>(vt);
  }
}

void check(const char* op, const Tensor& logits, const Tensor& teacher, const Tensor& targets,
           int N, int V) {
  DSV3_CHECK(logits.dtype == DType::F32 || logits.dtype == DType::F64, op, ": logits must be f32 "
             "or f64, not ", dtype_name(logits.dtype), " (internal error)");
  check_arg(op, "logits", logits, logits.dtype, size_t(N) * V);
  check_arg(op, "teacher_logits", teacher, logits.dtype, size_t(N) * V);
  check_arg(op, "targets", targets, DType::I32, size_t(N));
}

}  // namespace

void distill_forward(const Exec& ex, const Tensor& kd, const Tensor& logits,
                     const Tensor& teacher_logits, const Tensor& targets, int N, int V, double T) {
  const char* op = "distill_forward";
  profile::Scope prof(op);
  check_device(ex, op, {{"kd", kd}, {"logits", logits}, {"teacher_logits", teacher_logits},
                        {"targets", targets}});
  check(op, logits, teacher_logits, targets, N, V);
  check_arg(op, "kd", kd, logits.dtype, size_t(N));
  DSV3_CHECK(T > 0, op, ": temperature must be > 0 (internal error)");
  if (ex.device != Device::CPU) no_kernel(ex, op);
  if (logits.dtype == DType::F64)
    return forward_rows(kd.as<double>(), logits.as<double>(), teacher_logits.as<double>(),
                        targets.as<int32_t>(), N, V, T);
  forward_rows(kd.as<float>(), logits.as<float>(), teacher_logits.as<float>(),
               targets.as<int32_t>(), N, V, float(T));
}

void distill_backward(const Exec& ex, const Tensor& dlogits, const Tensor& logits,
                      const Tensor& teacher_logits, const Tensor& targets, const Tensor& row_scale,
                      int N, int V, double alpha, double T) {
  const char* op = "distill_backward";
  profile::Scope prof(op);
  check_device(ex, op, {{"dlogits", dlogits}, {"logits", logits},
                        {"teacher_logits", teacher_logits}, {"targets", targets},
                        {"row_scale", row_scale}});
  check(op, logits, teacher_logits, targets, N, V);
  DSV3_CHECK(dlogits.dtype == logits.dtype ||
                 (logits.dtype == DType::F32 && (dlogits.dtype == DType::BF16 || dlogits.dtype == DType::F16)),
             op, ": dlogits is ", dtype_name(dlogits.dtype), " for ", dtype_name(logits.dtype),
             " logits (internal error)");
  check_arg(op, "dlogits", dlogits, dlogits.dtype, size_t(N) * V);
  check_arg(op, "row_scale", row_scale, logits.dtype, size_t(N));
  DSV3_CHECK(dlogits.data != teacher_logits.data, op, ": dlogits aliases the teacher's logits "
             "(internal error)");
  DSV3_CHECK(T > 0 && alpha >= 0 && alpha <= 1, op, ": alpha ", alpha, ", T ", T, " (internal error)");
  if (ex.device != Device::CPU) no_kernel(ex, op);
  const int32_t* tg = targets.as<int32_t>();
  if (logits.dtype == DType::F64)
    return backward_rows(dlogits.as<double>(), logits.as<double>(), teacher_logits.as<double>(), tg,
                         row_scale.as<double>(), N, V, alpha, T);
  const float *z = logits.as<float>(), *t = teacher_logits.as<float>(), *rs = row_scale.as<float>();
  const float a = float(alpha), temp = float(T);
  switch (dlogits.dtype) {
    case DType::BF16: return backward_rows(dlogits.as<bf16_t>(), z, t, tg, rs, N, V, a, temp);
    case DType::F16: return backward_rows(dlogits.as<f16_t>(), z, t, tg, rs, N, V, a, temp);
    default: return backward_rows(dlogits.as<float>(), z, t, tg, rs, N, V, a, temp);
  }
}

}  // namespace dsv3

// SwiGLU on a fused [gate | up] row: out = silu(g) * u, silu(g) = g * sigmoid(g).
// GCC keeps the clamps of sigmoid_fast as branches (so the loops stay scalar, ~10x slower) unless
// it may assume that comparisons do not trap; no value changes, nothing here reads FP flags.
#pragma GCC optimize("no-trapping-math")
#include "ops/swiglu.h"

#include <cmath>
#include <cstddef>

#include "core/profile.h"
#include "ops/cuda/ops_cuda.h"
#include "ops/dispatch.h"
#include "ops/fast_math.h"

namespace dsv3 {
namespace cpu {

constexpr size_t kParallelWork = 16384;

// h: (N, 2D) = [g | u] per row; out: (N, D).
template <typename T>
void swiglu_forward(T* out, const T* h, int N, int D) {
  using A = accum_t<T>;
#pragma omp parallel for schedule(static) if (size_t(N) * D > kParallelWork)
  for (int n = 0; n < N; n++) {
    const T* g = h + size_t(n) * 2 * D;
    const T* u = g + D;
    T* o = out + size_t(n) * D;
#pragma omp simd
    for (int d = 0; d < D; d++) {
      const A gd = load(g[d]);
      o[d] = store<T>(gd * sigmoid_fast(gd) * load(u[d]));
    }
  }
}

// With s = sigmoid(g):  d silu / dg = s * (1 + g * (1 - s)).
//   dg += dout * u * s * (1 + g (1 - s)),   du += dout * g * s.
template <typename T, bool kAccumulate>
static void swiglu_backward_rows(T* dh, const T* dout, const T* h, int N, int D) {
  using A = accum_t<T>;
#pragma omp parallel for schedule(static) if (size_t(N) * D > kParallelWork)
  for (int n = 0; n < N; n++) {
    const T* g = h + size_t(n) * 2 * D;
    const T* u = g + D;
    const T* go = dout + size_t(n) * D;
    T* dg = dh + size_t(n) * 2 * D;
    T* du = dg + D;
#pragma omp simd
    for (int d = 0; d < D; d++) {
      const A gd = load(g[d]), ud = load(u[d]), o = load(go[d]);
      const A s = sigmoid_fast(gd);
      const A vg = o * ud * s * (A(1) + gd * (A(1) - s)), vu = o * gd * s;
      if constexpr (kAccumulate) {
        dg[d] = store<T>(load(dg[d]) + vg);
        du[d] = store<T>(load(du[d]) + vu);
      } else {
        dg[d] = store<T>(vg);
        du[d] = store<T>(vu);
      }
    }
  }
}

// With s = sigmoid(g):  d silu / dg = s * (1 + g * (1 - s)).
//   dg (+)= dout * u * s * (1 + g (1 - s)),   du (+)= dout * g * s.
template <typename T>
void swiglu_backward(T* dh, const T* dout, const T* h, int N, int D, bool accumulate) {
  if (accumulate) swiglu_backward_rows<T, true>(dh, dout, h, N, D);
  else swiglu_backward_rows<T, false>(dh, dout, h, N, D);
}

#define DSV3_SWIGLU_INSTANTIATE(T)                                  \
  template void swiglu_forward<T>(T*, const T*, int, int);          \
  template void swiglu_backward<T>(T*, const T*, const T*, int, int, bool);
DSV3_SWIGLU_INSTANTIATE(float)
DSV3_SWIGLU_INSTANTIATE(double)
DSV3_SWIGLU_INSTANTIATE(bf16_t)
DSV3_SWIGLU_INSTANTIATE(f16_t)

}  // namespace cpu

void swiglu_forward(const Exec& ex, const Tensor& out, const Tensor& h, int N, int D) {
  const char* op = "swiglu_forward";
  profile::Scope prof(op);
  check_device(ex, op, {{"out", out}, {"h", h}});
  check_arg(op, "h", h, h.dtype, size_t(N) * 2 * D);
  check_arg(op, "out", out, h.dtype, size_t(N) * D);
  if (ex.device == Device::CUDA) return cuda::swiglu_forward(ex, out, h, N, D);
  dispatch_float(h.dtype, op,
                 [&]<typename T>() { cpu::swiglu_forward<T>(out.as<T>(), h.as<T>(), N, D); });
}

void swiglu_backward(const Exec& ex, const Tensor& dh, const Tensor& dout, const Tensor& h, int N,
                     int D, Write mode) {
  const char* op = "swiglu_backward";
  profile::Scope prof(op);
  check_device(ex, op, {{"dh", dh}, {"dout", dout}, {"h", h}});
  check_arg(op, "h", h, h.dtype, size_t(N) * 2 * D);
  check_arg(op, "dh", dh, h.dtype, size_t(N) * 2 * D);
  check_arg(op, "dout", dout, h.dtype, size_t(N) * D);
  if (ex.device == Device::CUDA) return cuda::swiglu_backward(ex, dh, dout, h, N, D, mode);
  dispatch_float(h.dtype, op, [&]<typename T>() {
    cpu::swiglu_backward<T>(dh.as<T>(), dout.as<T>(), h.as<T>(), N, D, mode == Write::Accumulate);
  });
}

}  // namespace dsv3

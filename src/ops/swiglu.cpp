// SwiGLU on a fused [gate | up] row: out = silu(g) * u, silu(g) = g * sigmoid(g).
#include "ops/swiglu.h"

#include <cmath>
#include <cstddef>

#include "ops/dispatch.h"

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
    for (int d = 0; d < D; d++) {
      const A gd = load(g[d]);
      o[d] = store<T>(gd / (A(1) + std::exp(-gd)) * load(u[d]));
    }
  }
}

// With s = sigmoid(g):  d silu / dg = s * (1 + g * (1 - s)).
//   dg += dout * u * s * (1 + g (1 - s)),   du += dout * g * s.
template <typename T>
void swiglu_backward(T* dh, const T* dout, const T* h, int N, int D) {
  using A = accum_t<T>;
#pragma omp parallel for schedule(static) if (size_t(N) * D > kParallelWork)
  for (int n = 0; n < N; n++) {
    const T* g = h + size_t(n) * 2 * D;
    const T* u = g + D;
    const T* go = dout + size_t(n) * D;
    T* dg = dh + size_t(n) * 2 * D;
    T* du = dg + D;
    for (int d = 0; d < D; d++) {
      const A gd = load(g[d]), ud = load(u[d]), o = load(go[d]);
      const A s = A(1) / (A(1) + std::exp(-gd));
      dg[d] = store<T>(load(dg[d]) + o * ud * s * (A(1) + gd * (A(1) - s)));
      du[d] = store<T>(load(du[d]) + o * gd * s);
    }
  }
}

#define DSV3_SWIGLU_INSTANTIATE(T)                                  \
  template void swiglu_forward<T>(T*, const T*, int, int);          \
  template void swiglu_backward<T>(T*, const T*, const T*, int, int);
DSV3_SWIGLU_INSTANTIATE(float)
DSV3_SWIGLU_INSTANTIATE(double)
DSV3_SWIGLU_INSTANTIATE(bf16_t)
DSV3_SWIGLU_INSTANTIATE(f16_t)

}  // namespace cpu

void swiglu_forward(const Exec& ex, const Tensor& out, const Tensor& h, int N, int D) {
  const char* op = "swiglu_forward";
  check_device(ex, op, {{"out", out}, {"h", h}});
  check_arg(op, "h", h, h.dtype, size_t(N) * 2 * D);
  check_arg(op, "out", out, h.dtype, size_t(N) * D);
  if (ex.device != Device::CPU) no_kernel(ex, op);
  dispatch_float(h.dtype, op,
                 [&]<typename T>() { cpu::swiglu_forward<T>(out.as<T>(), h.as<T>(), N, D); });
}

void swiglu_backward(const Exec& ex, const Tensor& dh, const Tensor& dout, const Tensor& h, int N,
                     int D) {
  const char* op = "swiglu_backward";
  check_device(ex, op, {{"dh", dh}, {"dout", dout}, {"h", h}});
  check_arg(op, "h", h, h.dtype, size_t(N) * 2 * D);
  check_arg(op, "dh", dh, h.dtype, size_t(N) * 2 * D);
  check_arg(op, "dout", dout, h.dtype, size_t(N) * D);
  if (ex.device != Device::CPU) no_kernel(ex, op);
  dispatch_float(h.dtype, op, [&]<typename T>() {
    cpu::swiglu_backward<T>(dh.as<T>(), dout.as<T>(), h.as<T>(), N, D);
  });
}

}  // namespace dsv3

// SwiGLU on a fused [gate | up] row: out = silu(g) * u, silu(g) = g * sigmoid(g).
#include "ops/swiglu.h"

#include <cmath>
#include <cstddef>

namespace dsv3 {
namespace cpu {

constexpr size_t kParallelWork = 16384;

// h: (N, 2D) = [g | u] per row; out: (N, D).
template <typename T>
void swiglu_forward(T* out, const T* h, int N, int D) {
#pragma omp parallel for schedule(static) if (size_t(N) * D > kParallelWork)
  for (int n = 0; n < N; n++) {
    const T* g = h + size_t(n) * 2 * D;
    const T* u = g + D;
    T* o = out + size_t(n) * D;
    for (int d = 0; d < D; d++) o[d] = g[d] / (T(1) + std::exp(-g[d])) * u[d];
  }
}

// With s = sigmoid(g):  d silu / dg = s * (1 + g * (1 - s)).
//   dg += dout * u * s * (1 + g (1 - s)),   du += dout * g * s.
template <typename T>
void swiglu_backward(T* dh, const T* dout, const T* h, int N, int D) {
#pragma omp parallel for schedule(static) if (size_t(N) * D > kParallelWork)
  for (int n = 0; n < N; n++) {
    const T* g = h + size_t(n) * 2 * D;
    const T* u = g + D;
    const T* go = dout + size_t(n) * D;
    T* dg = dh + size_t(n) * 2 * D;
    T* du = dg + D;
    for (int d = 0; d < D; d++) {
      T s = T(1) / (T(1) + std::exp(-g[d]));
      dg[d] += go[d] * u[d] * s * (T(1) + g[d] * (T(1) - s));
      du[d] += go[d] * g[d] * s;
    }
  }
}

template void swiglu_forward<float>(float*, const float*, int, int);
template void swiglu_forward<double>(double*, const double*, int, int);
template void swiglu_backward<float>(float*, const float*, const float*, int, int);
template void swiglu_backward<double>(double*, const double*, const double*, int, int);

}  // namespace cpu

void swiglu_forward(const Exec& ex, float* out, const float* h, int N, int D) {
  require_cpu(ex, "swiglu_forward");
  cpu::swiglu_forward(out, h, N, D);
}

void swiglu_backward(const Exec& ex, float* dh, const float* dout, const float* h, int N, int D) {
  require_cpu(ex, "swiglu_backward");
  cpu::swiglu_backward(dh, dout, h, N, D);
}

}  // namespace dsv3

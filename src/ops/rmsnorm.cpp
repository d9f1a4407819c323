// RMSNorm over strided rows: out = x * rstd * w, rstd = 1 / sqrt(mean(x^2) + eps).
#include "ops/rmsnorm.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstddef>

namespace dsv3 {
namespace cpu {

// Elements below which a thread team costs more than it saves.
constexpr size_t kParallelWork = 16384;

// x: (N, x_stride), the first C of each row normalised; out: (N, out_stride); rstd: (N).
template <typename T>
void rmsnorm_forward(T* out, T* rstd, const T* x, const T* w, RmsNormShape s, float eps) {
  const int C = s.C;
#pragma omp parallel for schedule(static) if (size_t(s.N) * C > kParallelWork)
  for (int n = 0; n < s.N; n++) {
    const T* xr = x + size_t(n) * s.x_stride;
    T* o = out + size_t(n) * s.out_stride;
    T ss = 0;
#pragma omp simd reduction(+ : ss)
    for (int c = 0; c < C; c++) ss += xr[c] * xr[c];
    T r = T(1) / std::sqrt(ss / T(C) + T(eps));
    rstd[n] = r;
    for (int c = 0; c < C; c++) o[c] = xr[c] * r * w[c];
  }
}

// With g = dout:  dx_j += r w_j g_j - (r^3 / C) x_j sum_k g_k w_k x_k,
//                 dw_j += sum_n g_nj x_nj r_n.
// dx rows are independent. dw is a reduction over rows, so each thread owns a slice of columns and
// adds the rows in order: the sum order is fixed and independent of the thread count.
template <typename T>
void rmsnorm_backward(T* dx, T* dw, const T* dout, const T* x, const T* w, const T* rstd,
                      RmsNormShape s) {
  const int C = s.C;
#pragma omp parallel if (size_t(s.N) * C > kParallelWork)
  {
    if (dx) {  // either gradient may be null to skip it
#pragma omp for schedule(static) nowait
      for (int n = 0; n < s.N; n++) {
        const T* xr = x + size_t(n) * s.x_stride;
        const T* g = dout + size_t(n) * s.out_stride;
        T* d = dx + size_t(n) * s.x_stride;
        T r = rstd[n], dot = 0;
#pragma omp simd reduction(+ : dot)
        for (int c = 0; c < C; c++) dot += g[c] * w[c] * xr[c];
        T k = r * r * r * dot / T(C);
        for (int c = 0; c < C; c++) d[c] += r * w[c] * g[c] - k * xr[c];
      }
    }
    if (dw) {
      int nt = omp_get_num_threads(), t = omp_get_thread_num();
      int groups = (C + 15) / 16;  // whole 16-element groups: no cache line shared by threads
      int c0 = std::min(C, groups * t / nt * 16), c1 = std::min(C, groups * (t + 1) / nt * 16);
      for (int n = 0; n < s.N; n++) {
        const T* xr = x + size_t(n) * s.x_stride;
        const T* g = dout + size_t(n) * s.out_stride;
        T r = rstd[n];
        for (int c = c0; c < c1; c++) dw[c] += g[c] * xr[c] * r;
      }
    }
  }
}

template void rmsnorm_forward<float>(float*, float*, const float*, const float*, RmsNormShape,
                                     float);
template void rmsnorm_forward<double>(double*, double*, const double*, const double*,
                                      RmsNormShape, float);
template void rmsnorm_backward<float>(float*, float*, const float*, const float*, const float*,
                                      const float*, RmsNormShape);
template void rmsnorm_backward<double>(double*, double*, const double*, const double*,
                                       const double*, const double*, RmsNormShape);

}  // namespace cpu

void rmsnorm_forward(const Exec& ex, float* out, float* rstd, const float* x, const float* w,
                     RmsNormShape s, float eps) {
  require_cpu(ex, "rmsnorm_forward");
  cpu::rmsnorm_forward(out, rstd, x, w, s, eps);
}

void rmsnorm_backward(const Exec& ex, float* dx, float* dw, const float* dout, const float* x,
                      const float* w, const float* rstd, RmsNormShape s) {
  require_cpu(ex, "rmsnorm_backward");
  cpu::rmsnorm_backward(dx, dw, dout, x, w, rstd, s);
}

}  // namespace dsv3

// RMSNorm over strided rows: out = x * rstd * w, rstd = 1 / sqrt(mean(x^2) + eps).
#include "ops/rmsnorm.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstddef>

#include "core/profile.h"
#include "ops/cuda/ops_cuda.h"
#include "ops/dispatch.h"

namespace dsv3 {
namespace cpu {

// Elements below which a thread team costs more than it saves.
constexpr size_t kParallelWork = 16384;

// x: (N, x_stride), the first C of each row normalised; out: (N, out_stride); rstd: (N).
template <typename T>
void rmsnorm_forward(T* out, accum_t<T>* rstd, const T* x, const T* w, RmsNormShape s, float eps) {
  using A = accum_t<T>;
  const int C = s.C;
#pragma omp parallel for schedule(static) if (size_t(s.N) * C > kParallelWork)
  for (int n = 0; n < s.N; n++) {
    const T* xr = x + size_t(n) * s.x_stride;
    T* o = out + size_t(n) * s.out_stride;
    A ss = 0;
#pragma omp simd reduction(+ : ss)
    for (int c = 0; c < C; c++) ss += load(xr[c]) * load(xr[c]);
    const A r = A(1) / std::sqrt(ss / A(C) + A(eps));
    rstd[n] = r;
    for (int c = 0; c < C; c++) o[c] = store<T>(load(xr[c]) * r * load(w[c]));
  }
}

// With g = dout:  dx_j += r w_j g_j - (r^3 / C) x_j sum_k g_k w_k x_k,
//                 dw_j += sum_n g_nj x_nj r_n.
// dx rows are independent. dw is a reduction over rows, so each thread owns a slice of columns and
// adds the rows in order: the sum order is fixed and independent of the thread count.
template <typename T>
void rmsnorm_backward(T* dx, accum_t<T>* dw, const T* dout, const T* x, const T* w,
                      const accum_t<T>* rstd, RmsNormShape s) {
  using A = accum_t<T>;
  const int C = s.C;
#pragma omp parallel if (size_t(s.N) * C > kParallelWork)
  {
    if (dx) {
#pragma omp for schedule(static) nowait
      for (int n = 0; n < s.N; n++) {
        const T* xr = x + size_t(n) * s.x_stride;
        const T* g = dout + size_t(n) * s.out_stride;
        T* d = dx + size_t(n) * s.x_stride;
        const A r = rstd[n];
        A dot = 0;
#pragma omp simd reduction(+ : dot)
        for (int c = 0; c < C; c++) dot += load(g[c]) * load(w[c]) * load(xr[c]);
        const A k = r * r * r * dot / A(C);
        for (int c = 0; c < C; c++)
          d[c] = store<T>(load(d[c]) + r * load(w[c]) * load(g[c]) - k * load(xr[c]));
      }
    }
    if (dw) {
      const int nt = omp_get_num_threads(), t = omp_get_thread_num();
      const int groups = (C + 15) / 16;  // whole 16-element groups: no cache line shared by threads
      const int c0 = std::min(C, groups * t / nt * 16), c1 = std::min(C, groups * (t + 1) / nt * 16);
      for (int n = 0; n < s.N; n++) {
        const T* xr = x + size_t(n) * s.x_stride;
        const T* g = dout + size_t(n) * s.out_stride;
        const A r = rstd[n];
        for (int c = c0; c < c1; c++) dw[c] += load(g[c]) * load(xr[c]) * r;
      }
    }
  }
}

#define DSV3_RMSNORM_INSTANTIATE(T)                                                          \
  template void rmsnorm_forward<T>(T*, accum_t<T>*, const T*, const T*, RmsNormShape, float); \
  template void rmsnorm_backward<T>(T*, accum_t<T>*, const T*, const T*, const T*,          \
                                    const accum_t<T>*, RmsNormShape);
DSV3_RMSNORM_INSTANTIATE(float)
DSV3_RMSNORM_INSTANTIATE(double)
DSV3_RMSNORM_INSTANTIATE(bf16_t)
DSV3_RMSNORM_INSTANTIATE(f16_t)

}  // namespace cpu

namespace {
size_t rows_span(int N, int stride, int C) { return N > 0 ? size_t(N - 1) * stride + C : 0; }
}  // namespace

void rmsnorm_forward(const Exec& ex, const Tensor& out, const Tensor& rstd, const Tensor& x,
                     const Tensor& w, RmsNormShape s, float eps) {
  const char* op = "rmsnorm_forward";
  profile::Scope prof(op);
  check_device(ex, op, {{"out", out}, {"rstd", rstd}, {"x", x}, {"w", w}});
  check_arg(op, "x", x, x.dtype, rows_span(s.N, s.x_stride, s.C));
  check_arg(op, "out", out, x.dtype, rows_span(s.N, s.out_stride, s.C));
  check_arg(op, "w", w, x.dtype, size_t(s.C));
  check_arg(op, "rstd", rstd, accum_dtype(x.dtype), size_t(s.N));
  if (ex.device == Device::CUDA) return cuda::rmsnorm_forward(ex, out, rstd, x, w, s, eps);
  dispatch_float(x.dtype, op, [&]<typename T>() {
    cpu::rmsnorm_forward<T>(out.as<T>(), rstd.as<accum_t<T>>(), x.as<T>(), w.as<T>(), s, eps);
  });
}

void rmsnorm_backward(const Exec& ex, const Tensor& dx, const Tensor& dw, const Tensor& dout,
                      const Tensor& x, const Tensor& w, const Tensor& rstd, RmsNormShape s) {
  const char* op = "rmsnorm_backward";
  profile::Scope prof(op);
  check_device(ex, op, {{"dx", dx}, {"dw", dw}, {"dout", dout}, {"x", x}, {"w", w}, {"rstd", rstd}});
  check_arg(op, "x", x, x.dtype, rows_span(s.N, s.x_stride, s.C));
  check_arg(op, "dout", dout, x.dtype, rows_span(s.N, s.out_stride, s.C));
  check_opt(op, "dx", dx, x.dtype, rows_span(s.N, s.x_stride, s.C));
  check_opt(op, "dw", dw, accum_dtype(x.dtype), size_t(s.C));
  check_arg(op, "w", w, x.dtype, size_t(s.C));
  check_arg(op, "rstd", rstd, accum_dtype(x.dtype), size_t(s.N));
  if (ex.device == Device::CUDA) return cuda::rmsnorm_backward(ex, dx, dw, dout, x, w, rstd, s);
  dispatch_float(x.dtype, op, [&]<typename T>() {
    cpu::rmsnorm_backward<T>(dx ? dx.as<T>() : nullptr, dw ? dw.as<accum_t<T>>() : nullptr,
                             dout.as<T>(), x.as<T>(), w.as<T>(), rstd.as<accum_t<T>>(), s);
  });
}

}  // namespace dsv3

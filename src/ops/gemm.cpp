#include "ops/gemm.h"

#include <cblas.h>

namespace dsv3 {
namespace cpu {

template <>
void gemm<float>(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda,
                 const float* B, int ldb, float beta, float* C, int ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N,
              K, alpha, A, lda, B, ldb, beta, C, ldc);
}

template <>
void gemm<double>(bool ta, bool tb, int M, int N, int K, double alpha, const double* A, int lda,
                  const double* B, int ldb, double beta, double* C, int ldc) {
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N,
              K, alpha, A, lda, B, ldb, beta, C, ldc);
}

}  // namespace cpu

template <typename T>
void linear_forward(const Exec& ex, T* y, const T* x, const T* w, int N, int in, int out,
                    bool accumulate) {
  require_cpu(ex, "linear_forward");
  if (N == 0) return;
  cpu::gemm<T>(false, true, N, out, in, T(1), x, in, w, in, accumulate ? T(1) : T(0), y, out);
}

template <typename T>
void linear_backward(const Exec& ex, T* dx, T* dw, const T* dy, const T* x, const T* w, int N,
                     int in, int out) {
  require_cpu(ex, "linear_backward");
  if (N == 0) return;
  if (dx) cpu::gemm<T>(false, false, N, in, out, T(1), dy, out, w, in, T(1), dx, in);
  if (dw) cpu::gemm<T>(true, false, out, in, N, T(1), dy, out, x, in, T(1), dw, in);
}

template void linear_forward<float>(const Exec&, float*, const float*, const float*, int, int, int,
                                    bool);
template void linear_forward<double>(const Exec&, double*, const double*, const double*, int, int,
                                     int, bool);
template void linear_backward<float>(const Exec&, float*, float*, const float*, const float*,
                                     const float*, int, int, int);
template void linear_backward<double>(const Exec&, double*, double*, const double*, const double*,
                                      const double*, int, int, int);

}  // namespace dsv3

#include <algorithm>
#include <vector>

#include "core/timer.h"

namespace dsv3 {
double measure_gemm_peak_gflops(int n, int reps) {
  std::vector<float> a(size_t(n) * n, 0.5f), b(size_t(n) * n, 0.25f), c(size_t(n) * n);
  cpu::gemm<float>(false, false, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
  double best = 0;
  for (int r = 0; r < reps; r++) {
    const double t0 = now_seconds();
    cpu::gemm<float>(false, false, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
    best = std::max(best, 2.0 * n * double(n) * n / (now_seconds() - t0) / 1e9);
  }
  return best;
}
}  // namespace dsv3

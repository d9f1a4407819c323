// GEMM through BLAS (row-major). The product path is fp32 (sgemm); double is for the tests.
#pragma once
#include "backend/backend.h"

namespace dsv3 {
namespace cpu {
// C(M,N) = alpha * op(A) * op(B) + beta * C, op(X) = X or X^T; lda/ldb/ldc are row strides.
template <typename T>
void gemm(bool trans_a, bool trans_b, int M, int N, int K, T alpha, const T* A, int lda,
          const T* B, int ldb, T beta, T* C, int ldc);
}  // namespace cpu

// Linear layer with a weight stored (out, in) like torch / Hugging Face.
// y(N,out) = x(N,in) w^T, overwriting y (accumulate=false) or adding to it.
template <typename T>
void linear_forward(const Exec& ex, T* y, const T* x, const T* w, int N, int in, int out,
                    bool accumulate = false);
// dx(N,in) += dy w;  dw(out,in) += dy^T x.  Either of dx / dw may be null to skip it.
template <typename T>
void linear_backward(const Exec& ex, T* dx, T* dw, const T* dy, const T* x, const T* w, int N,
                     int in, int out);

}  // namespace dsv3

namespace dsv3 {
// fp32 GEMM throughput of this machine (n x n x n sgemm, all threads, best of a few runs), the
// denominator of CPU MFU.
double measure_gemm_peak_gflops(int n = 1536, int reps = 4);
}  // namespace dsv3

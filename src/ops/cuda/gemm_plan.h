// How a row-major GEMM (dsv3's convention, cpu::gemm) becomes a column-major cuBLASLt call. The
// row-major C (M x N) = op(A) op(B) is, read column-major, C^T (N x M) = op(B)^T op(A)^T: the
// column-major product of B then A, each keeping its transpose flag. Plain C++, so
// tests/cpp/test_cuda_host.cpp checks the mapping against a column-major reference on the CPU.
#pragma once

namespace dsv3::cuda {

struct LtOperand {
  bool trans;      // CUBLAS_OP_T
  int rows, cols;  // the stored column-major matrix
  int ld;
};
struct LtGemm {
  int m, n, k;     // column-major C (m x n) = op(a) (m x k) op(b) (k x n)
  LtOperand a, b;  // a = our B, b = our A
  LtOperand c;     // C and D
};

inline LtGemm lt_from_row_major(bool trans_a, bool trans_b, int M, int N, int K, int lda, int ldb,
                                int ldc) {
  LtGemm g;
  g.m = N;
  g.n = M;
  g.k = K;
  g.a = {trans_b, trans_b ? K : N, trans_b ? N : K, ldb};
  g.b = {trans_a, trans_a ? M : K, trans_a ? K : M, lda};
  g.c = {false, N, M, ldc};
  return g;
}

}  // namespace dsv3::cuda

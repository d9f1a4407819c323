// Linear layers on int8 weights (I3): what linear_forward, linear_backward (input gradient only)
// and grouped_linear_forward run when their weight is W8A8 or W8A16 (the row format of
// ops/quant.h). ops/gemm.cpp dispatches here after its argument checks; model code does not
// call these itself, so every forward path (training-style passes, eval, decoding) takes int8
// weights as they come. CPU kernels; other devices answer no_kernel.
//
//   W8A8   y[n,o] = sx_n * s_o * sum_k a[n,k] q[o,k], with x quantised per token (row) on the fly:
//          a = round(x / sx_n), sx_n = max|x[n,:]| / L (dynamic, symmetric), and the integer sum
//          exact in int32 by oneDNN's u8 x s8 GEMM (dnnl_gemm_u8s8s32; a is stored as a + L + 1
//          and the offset is passed as ao). L = q8_act_levels().
//   W8A16  the int8 values are widened (exactly) to x's dtype in blocks of rows and multiplied by
//          the float GEMM of that dtype (ops/gemm_cpu.h), then each column is scaled by s_o:
//          weights in int8, activations untouched (fp32, bf16 or fp16 as the run computes).
#pragma once
#include <cstdint>

#include "ops/gemm.h"

namespace dsv3 {

// Activation levels L of W8A8: 63, i.e. 7-bit activations (a + 64 in [1, 127]). On CPUs without
// VNNI oneDNN multiplies u8 x s8 pairs with vpmaddubsw, which saturates int16 when a pair sums
// past 32767 (255 * 127 * 2 does); 127 * 127 * 2 does not, so every CPU computes the same exact
// integers. (PyTorch's x86 backend, fbgemm, reduces activations to 7 bits for the same reason.)
int q8_act_levels();

void int8_linear_forward(const Exec& ex, const Tensor& y, const Tensor& x, const Tensor& w, int N,
                         int in, int out, Write mode);
// dx(N,in) (+)= dy(N,out) W with W = s_o q[o,:] dequantised (fp32 products): the input gradient
// or the W^T-form a decoder uses to absorb a projection. No weight gradient exists for int8.
void int8_linear_backward_dx(const Exec& ex, const Tensor& dx, const Tensor& dy, const Tensor& w,
                             int N, int in, int out, Write mode);
// offsets: host (E+1), already checked.
void int8_grouped_linear_forward(const Exec& ex, const Tensor& y, const Tensor& x, const Tensor& w,
                                 const int32_t* offsets, GroupedShape s);

namespace cpu {
// C(M,N) int32 = (A(M,K) - ao) B^T: A u8 row-major (lda), B (N, K) s8 with row stride ldb bytes
// (an int8 weight in the row format: ldb = q8_row_bytes(K)). Exact. Thread-safe; inside an
// OpenMP parallel region it runs on the calling thread alone.
void gemm_u8s8s32_nt(int M, int N, int K, const uint8_t* A, int lda, uint8_t ao, const void* B,
                     size_t ldb, int32_t* C, int ldc);
}  // namespace cpu

}  // namespace dsv3

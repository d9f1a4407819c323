// Linear layers on the backend seam. Weights are stored (out, in) like torch / Hugging Face.
// Operands x, w, dy and dx share the compute dtype T; a forward output y may be T or the
// accumulation dtype (the router and the output head write fp32 logits from bf16 operands);
// weight gradients are in the accumulation dtype (fp32 master gradients; fp64 for the oracle).
// The CPU kernels are src/ops/gemm_cpu.h (oneDNN / OpenBLAS, chosen per dtype in docs/gemm.md).
//
// Int8 weights (I3): w may instead be W8A8 or W8A16, int8 rows with a per-output-channel fp32
// scale (the row format of ops/quant.h: q8_matrix_bytes(out, in) bytes per matrix, and
// GroupedShape::w_stride in bytes), for linear_forward, grouped_linear_forward and the input
// gradient of linear_backward (never a weight gradient). The dtype says how the GEMM runs:
// W8A8 quantises x per token on the fly and multiplies in int8; W8A16 widens the weights to x's
// dtype (ops/gemm_int8.h). Callers pass int8 weights exactly where they pass float ones.
#pragma once
#include <cstddef>

#include "backend/backend.h"
#include "ops/write.h"

namespace dsv3 {

// y(N,out) = x(N,in) w^T, overwriting y or adding to it.
void linear_forward(const Exec& ex, const Tensor& y, const Tensor& x, const Tensor& w, int N,
                    int in, int out, Write mode = Write::Overwrite);
// dx(N,in) += dy w (or = with dx_mode Overwrite);  dw(out,in) += dy^T x.  Either of dx / dw
// may be empty to skip it.
void linear_backward(const Exec& ex, const Tensor& dx, const Tensor& dw, const Tensor& dy,
                     const Tensor& x, const Tensor& w, int N, int in, int out,
                     Write dx_mode = Write::Accumulate);

// Grouped linear: the MoE experts in one call (one launch for all experts on a GPU). Rows are
// sorted by expert: rows offsets[e]..offsets[e+1] of x and y belong to expert e, whose weight
// (out, in) starts at element e * w_stride of w (the experts' tensors are interleaved in the
// parameter buffer, so the stride is larger than out * in). offsets: (E+1) i32 on ex.device.
struct GroupedShape {
  int E;            // experts
  int in, out;
  size_t w_stride;  // elements from one expert's weight to the next
};
// y = x w_e^T per expert (overwrites).
void grouped_linear_forward(const Exec& ex, const Tensor& y, const Tensor& x, const Tensor& w,
                            const Tensor& offsets, GroupedShape s);
// dx += dy w_e (or = with dx_mode Overwrite); dw_e += dy^T x (dw laid out like w, accumulation
// dtype). Either may be empty.
void grouped_linear_backward(const Exec& ex, const Tensor& dx, const Tensor& dw, const Tensor& dy,
                             const Tensor& x, const Tensor& w, const Tensor& offsets,
                             GroupedShape s, Write dx_mode = Write::Accumulate);

}  // namespace dsv3

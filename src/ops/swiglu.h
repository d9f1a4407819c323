// SwiGLU activation on a fused input: h (N, 2D) holds [gate | up] per row (one GEMM with the
// gate_proj and up_proj weights stacked), out (N, D) = silu(gate) * up. Storage dtype T, math in
// its accumulation dtype.
#pragma once
#include "backend/backend.h"
#include "ops/write.h"

namespace dsv3 {
namespace cpu {
template <typename T>
void swiglu_forward(T* out, const T* h, int N, int D);
template <typename T>
void swiglu_backward(T* dh, const T* dout, const T* h, int N, int D, bool accumulate);  // dh (+)=
}  // namespace cpu
void swiglu_forward(const Exec& ex, const Tensor& out, const Tensor& h, int N, int D);
void swiglu_backward(const Exec& ex, const Tensor& dh, const Tensor& dout, const Tensor& h, int N,
                     int D, Write mode = Write::Accumulate);
}  // namespace dsv3

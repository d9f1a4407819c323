// RMSNorm: out = x * rstd * w, rstd = 1 / sqrt(mean(x^2) + eps), statistics in the accumulation
// dtype (fp32; fp64 for the oracle) whatever the storage dtype T of x, w and out.
// Rows may be strided (the MLA latent c_kv is a slice of a wider row), so x and out carry their
// own row strides; C is the normalised width.
#pragma once
#include "backend/backend.h"

namespace dsv3 {
struct RmsNormShape {
  int N;            // rows
  int C;            // normalised width
  int x_stride;     // elements between rows of x / dx
  int out_stride;   // elements between rows of out / dout
};
namespace cpu {
template <typename T>
void rmsnorm_forward(T* out, accum_t<T>* rstd, const T* x, const T* w, RmsNormShape s, float eps);
// dx += (may be null), dw += (may be null)
template <typename T>
void rmsnorm_backward(T* dx, accum_t<T>* dw, const T* dout, const T* x, const T* w,
                      const accum_t<T>* rstd, RmsNormShape s);
}  // namespace cpu
// out T, rstd (N) accum, x T, w (C) T.
void rmsnorm_forward(const Exec& ex, const Tensor& out, const Tensor& rstd, const Tensor& x,
                     const Tensor& w, RmsNormShape s, float eps);
// dx T += (may be empty), dw (C) accum += (may be empty).
void rmsnorm_backward(const Exec& ex, const Tensor& dx, const Tensor& dw, const Tensor& dout,
                      const Tensor& x, const Tensor& w, const Tensor& rstd, RmsNormShape s);
}  // namespace dsv3

// RMSNorm: out = x * rstd * w, rstd = 1 / sqrt(mean(x^2) + eps), statistics in fp32 (or wider).
// rows may be strided (the MLA latent c_kv is a slice of a wider row), so x and out carry their
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
void rmsnorm_forward(T* out, T* rstd, const T* x, const T* w, RmsNormShape s, float eps);
template <typename T>
void rmsnorm_backward(T* dx, T* dw, const T* dout, const T* x, const T* w, const T* rstd,
                      RmsNormShape s);  // dx += , dw +=
}  // namespace cpu
void rmsnorm_forward(const Exec& ex, float* out, float* rstd, const float* x, const float* w,
                     RmsNormShape s, float eps);
void rmsnorm_backward(const Exec& ex, float* dx, float* dw, const float* dout, const float* x,
                      const float* w, const float* rstd, RmsNormShape s);
}  // namespace dsv3

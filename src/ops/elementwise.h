// Elementwise ops on whole buffers: the residual add, dtype conversion and scaling. Math in the
// accumulation dtype, one rounding per stored element.
#pragma once
#include "backend/backend.h"

namespace dsv3 {

// y += x (same dtype, y.numel elements of each).
void add_inplace(const Exec& ex, const Tensor& y, const Tensor& x);
// dst = src converted (round to nearest even); same dtype is a copy. dst.numel elements.
void convert(const Exec& ex, const Tensor& dst, const Tensor& src);
// x *= s.
void scale_inplace(const Exec& ex, const Tensor& x, double s);
// src itself when it already has dtype `want`, else src converted into scratch (whose first
// src.numel elements are then returned). For operands that must match a GEMM's dtype.
Tensor as_dtype(const Exec& ex, const Tensor& src, DType want, const Tensor& scratch);

}  // namespace dsv3

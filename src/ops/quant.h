// Int8 weights (I3): the row format every int8 weight is stored in, symmetric per-row
// quantisation, and the fake quantisation of quantisation-aware training.
//
// Row format (DType::W8A8 / W8A16): a (rows, cols) weight is `rows` records of
// q8_row_bytes(cols) bytes, one per output channel:
//     cols int8 values q, zero padding to a multiple of 4 bytes, the fp32 scale s
// and row r stands for the weights s_r * q[r, :]. Symmetric, per output channel: s_r =
// max|w[r,:]| / 127, q = round-half-even(w / s_r), so |w - s_r q| <= s_r / 2 and the largest
// value maps to +-127 exactly (-128 is never used). Keeping the scale beside its row makes any
// range of rows a valid int8 matrix again (a head's rows of kv_b, an expert's rows of a layer)
// and lets a GEMM read the values with a row stride (lda = q8_row_bytes(cols)).
#pragma once
#include <cstddef>
#include <cstdint>

#include "backend/backend.h"

namespace dsv3 {

inline size_t q8_row_bytes(int cols) { return (size_t(cols) + 3) / 4 * 4 + 4; }
inline size_t q8_matrix_bytes(int rows, int cols) { return size_t(rows) * q8_row_bytes(cols); }

namespace cpu {
// The scale of row r (stored after its values).
inline float q8_scale(const void* m, int cols, int r) {
  float s;
  const char* p = static_cast<const char*>(m) + size_t(r) * q8_row_bytes(cols) + (size_t(cols) + 3) / 4 * 4;
  __builtin_memcpy(&s, p, 4);
  return s;
}
// Quantises rows x cols fp32 values (row stride ld) into the row format at dst.
void q8_quantize(void* dst, const float* w, int rows, int cols, size_t ld);
// The fp32 values s_r * q[r, k] (row stride ld).
void q8_dequantize(float* w, size_t ld, const void* src, int rows, int cols);
// One row's symmetric int8 quantisation with `levels` (127 for weights; fewer for activations,
// see ops/gemm_int8.h): q = clamp(round-half-even(x / s), -levels, levels), s = max|x| / levels,
// q stored with `offset` added (int, for the unsigned activation encoding). Returns s (0 for a
// zero row, whose values are all `offset`; NaN when x holds inf or NaN). Arithmetic in fp32 for
// every T (float, double, bf16_t, f16_t), so the fp64 oracle quantises exactly as fp32 does.
template <typename T, typename Q>
float quantize_row(Q* q, const T* x, int n, int levels, int offset);
}  // namespace cpu

// Fake quantisation (QAT): y = s_r * q[r, :] per row, what q8_quantize followed by q8_dequantize
// gives for x, stored in y's dtype (rounded once for 16-bit). x and y may differ in dtype (an
// fp32 master -> a bf16 compute copy); y may alias x when they share one.
void fake_quant_forward(const Exec& ex, const Tensor& y, const Tensor& x, int rows, int cols);

}  // namespace dsv3

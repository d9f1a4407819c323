#include "ops/quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "ops/dispatch.h"

namespace dsv3 {
namespace cpu {

template <typename T, typename Q>
float quantize_row(Q* q, const T* x, int n, int levels, int offset) {
  float amax = 0;
  bool finite = true;
  for (int i = 0; i < n; i++) {
    const float a = std::fabs(float(load(x[i])));
    finite = finite && std::isfinite(a);
    amax = std::max(amax, a);
  }
  if (amax == 0 || !finite) {  // a zero row; or inf/NaN, which must not pass as a number
    for (int i = 0; i < n; i++) q[i] = Q(offset);
    return finite ? 0.0f : NAN;
  }
  const float s = amax / float(levels);
  const float lo = float(-levels), hi = float(levels);
  for (int i = 0; i < n; i++) {
    // x / s (correctly rounded), then to the nearest integer, ties to even (the default mode)
    const float v = std::clamp(std::nearbyint(float(load(x[i])) / s), lo, hi);
    q[i] = Q(int(v) + offset);
  }
  return s;
}

#define DSV3_QROW(T, Q) template float quantize_row<T, Q>(Q*, const T*, int, int, int);
DSV3_QROW(float, int8_t)
DSV3_QROW(double, int8_t)
DSV3_QROW(bf16_t, int8_t)
DSV3_QROW(f16_t, int8_t)
DSV3_QROW(float, uint8_t)
DSV3_QROW(double, uint8_t)
DSV3_QROW(bf16_t, uint8_t)
DSV3_QROW(f16_t, uint8_t)
#undef DSV3_QROW

void q8_quantize(void* dst, const float* w, int rows, int cols, size_t ld) {
  const size_t rb = q8_row_bytes(cols), pad = rb - 4 - size_t(cols);
#pragma omp parallel for schedule(static) if (size_t(rows) * cols > (1 << 16))
  for (int r = 0; r < rows; r++) {
    char* row = static_cast<char*>(dst) + size_t(r) * rb;
    const float s = quantize_row(reinterpret_cast<int8_t*>(row), w + size_t(r) * ld, cols, 127, 0);
    std::memset(row + cols, 0, pad);
    std::memcpy(row + cols + pad, &s, 4);
  }
}

void q8_dequantize(float* w, size_t ld, const void* src, int rows, int cols) {
  const size_t rb = q8_row_bytes(cols);
#pragma omp parallel for schedule(static) if (size_t(rows) * cols > (1 << 16))
  for (int r = 0; r < rows; r++) {
    const int8_t* q = reinterpret_cast<const int8_t*>(static_cast<const char*>(src) + size_t(r) * rb);
    const float s = q8_scale(src, cols, r);
    for (int k = 0; k < cols; k++) w[size_t(r) * ld + k] = s * float(q[k]);
  }
}

}  // namespace cpu

namespace {
template <typename X, typename Y>
void fake_quant_rows(Y* y, const X* x, int rows, int cols) {
#pragma omp parallel
  {
    std::vector<int8_t> q(cols);
#pragma omp for schedule(static)
    for (int r = 0; r < rows; r++) {
      const float s = cpu::quantize_row(q.data(), x + size_t(r) * cols, cols, 127, 0);
      for (int k = 0; k < cols; k++) y[size_t(r) * cols + k] = store<Y>(s * float(q[k]));
    }
  }
}
}  // namespace

void fake_quant_forward(const Exec& ex, const Tensor& y, const Tensor& x, int rows, int cols) {
  const char* op = "fake_quant_forward";
  check_device(ex, op, {{"y", y}, {"x", x}});
  const size_t n = size_t(rows) * cols;
  check_arg(op, "x", x, x.dtype, n);
  check_arg(op, "y", y, y.dtype, n);
  DSV3_CHECK(x.dtype == y.dtype || x.data != y.data, op, ": y aliases x in another dtype (internal error)");
  if (ex.device != Device::CPU) no_kernel(ex, op);
  dispatch_float(x.dtype, op, [&]<typename X>() {
    dispatch_float(y.dtype, op, [&]<typename Y>() {
      fake_quant_rows(static_cast<Y*>(y.data), static_cast<const X*>(x.data), rows, cols);
    });
  });
}

}  // namespace dsv3

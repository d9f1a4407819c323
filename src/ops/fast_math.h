// Shared scalar math for the CPU kernels.
#pragma once
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace dsv3 {

// exp(x) for x <= 0 (arguments are max-subtracted), written so that -O3 vectorises the loops that
// call it: Cody-Waite reduction x = n ln2 + r and the Cephes expf polynomial, about 1 ulp. Inputs
// below -87.3 give 2^-126 instead of a denormal, which no softmax sum can notice. Double keeps
// std::exp (the finite-difference tests run in double).
inline float exp_poly(float x) {  // x in [-87.33, 88.37]: 2^n stays a normal float
  float n = (x * 1.44269504f + 12582912.f) - 12582912.f;  // round to nearest via 1.5 * 2^23
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * std::bit_cast<float>((int32_t(n) + 127) << 23);
}
inline float exp_nonpos(float x) { return exp_poly(std::max(x, -87.3365f)); }
inline double exp_nonpos(double x) { return std::exp(x); }

// sigmoid(x) = 1 / (1 + exp(-x)) for any x, vectorisable: exp(-x) is clamped to [2^-126, 2^127.5]
// (where the sigmoid is 0 or 1 to fp32 precision anyway).
inline float sigmoid_fast(float x) {
  return 1.0f / (1.0f + exp_poly(std::min(std::max(-x, -87.3365f), 88.3762f)));
}
inline double sigmoid_fast(double x) { return 1.0 / (1.0 + std::exp(-x)); }

}  // namespace dsv3

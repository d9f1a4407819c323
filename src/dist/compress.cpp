#include "dist/compress.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace dsv3::dist {

void int8_compress(const float* g, float* residual, size_t n, int8_t* q, float* scales) {
  for (size_t b0 = 0, k = 0; b0 < n; b0 += kInt8Block, k++) {
    const size_t b1 = std::min(n, b0 + kInt8Block);
    float mx = 0;
    for (size_t i = b0; i < b1; i++) {
      residual[i] += g[i];
      mx = std::max(mx, std::fabs(residual[i]));
    }
    const float scale = mx > 0 ? mx / 127.0f : 1.0f;
    const float inv = 1.0f / scale;
    for (size_t i = b0; i < b1; i++) {
      const float x = std::clamp(std::nearbyint(residual[i] * inv), -127.0f, 127.0f);
      q[i] = int8_t(x);
      residual[i] -= x * scale;
    }
    scales[k] = scale;
  }
}

void int8_accumulate(float* out, const int8_t* q, const float* scales, size_t n) {
  for (size_t i = 0; i < n; i++) out[i] += float(q[i]) * scales[i / kInt8Block];
}

size_t topk_count(size_t n, double ratio) {
  return std::min(n, std::max<size_t>(1, size_t(std::ceil(ratio * double(n)))));
}

void topk_compress(const float* g, float* residual, size_t n, size_t k, uint32_t* idx,
                   float* val) {
  for (size_t i = 0; i < n; i++) residual[i] += g[i];
  std::vector<uint32_t> order(n);
  std::iota(order.begin(), order.end(), 0u);
  const auto larger = [&](uint32_t a, uint32_t b) {
    const float x = std::fabs(residual[a]), y = std::fabs(residual[b]);
    return x > y || (x == y && a < b);
  };
  std::nth_element(order.begin(), order.begin() + std::ptrdiff_t(k), order.end(), larger);
  std::sort(order.begin(), order.begin() + std::ptrdiff_t(k));
  for (size_t i = 0; i < k; i++) {
    idx[i] = order[i];
    val[i] = residual[order[i]];
    residual[order[i]] = 0;
  }
}

void topk_accumulate(float* out, const uint32_t* idx, const float* val, size_t k) {
  for (size_t i = 0; i < k; i++) out[idx[i]] += val[i];
}

}  // namespace dsv3::dist

// core/dtype.h conversions against straightforward branching implementations: every half, and
// every float of the ranges where fp16 rounding is delicate plus a stride through all the rest.
// (The branch-free versions exist so kernel loops vectorise; they must not change a bit.)
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>

#include "core/dtype.h"

namespace dsv3 {
namespace {

float ref_f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  uint32_t u;
  if (exp == 0) {
    const float f = float(man) * 0x1p-24f;
    u = std::bit_cast<uint32_t>(f) | sign;
  } else if (exp == 31) {
    u = sign | 0x7f800000u | (man << 13);
  } else {
    u = sign | ((exp + 112) << 23) | (man << 13);
  }
  return std::bit_cast<float>(u);
}

uint16_t ref_f32_to_f16(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  u &= 0x7fffffffu;
  if (u > 0x7f800000u) return uint16_t(sign | 0x7e00u);
  if (u >= 0x477ff000u) return uint16_t(sign | 0x7c00u);
  if (u >= 0x38800000u) {
    const uint32_t r = u + 0x0fffu + ((u >> 13) & 1u) - (112u << 23);
    return uint16_t(sign | (r >> 13));
  }
  if (u < 0x33000000u) return sign;
  const uint32_t exp = u >> 23, man = (u & 0x7fffffu) | 0x800000u;
  const int shift = int(126 - exp);
  uint32_t half = man >> shift;
  const uint32_t rem = man & ((1u << shift) - 1), mid = 1u << (shift - 1);
  if (rem > mid || (rem == mid && (half & 1u))) half++;
  return uint16_t(sign | half);
}

uint16_t ref_f32_to_bf16(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

TEST(Dtype, EveryHalfWidensExactly) {
  for (uint32_t h = 0; h < 65536; h++)
    ASSERT_EQ(std::bit_cast<uint32_t>(f16_to_f32(uint16_t(h))),
              std::bit_cast<uint32_t>(ref_f16_to_f32(uint16_t(h))))
        << std::hex << h;
}

TEST(Dtype, FloatToHalfAndBf16RoundToNearestEven) {
  auto check = [](uint32_t u) {
    const float f = std::bit_cast<float>(u);
    ASSERT_EQ(f32_to_f16(f), ref_f32_to_f16(f)) << std::hex << u;
    ASSERT_EQ(f32_to_bf16(f), ref_f32_to_bf16(f)) << std::hex << u;
  };
  // every float from below half the smallest subnormal half up to past the largest normal
  // half (subnormals, the normal/subnormal seam, overflow to inf), both signs
  for (uint32_t u = 0x33000000u - 4096; u < 0x47810000u; u += 3) {
    check(u);
    check(u | 0x80000000u);
  }
  for (uint64_t u = 0; u < (1ull << 32); u += 4093) check(uint32_t(u));  // and a stride through all
  for (uint32_t u : {0u, 0x7f800000u, 0x7f800001u, 0x7fc00000u, 0xff800000u, 0x477fefffu, 0x477ff000u})
    check(u);
}

}  // namespace
}  // namespace dsv3

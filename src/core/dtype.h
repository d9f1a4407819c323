// Storage dtypes. Compute is always fp32; bf16 is a storage format (files, exported weights,
// and later device activations). Conversion rounds to nearest even, like torch.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace dsv3 {

enum class DType : uint8_t { F32, BF16 };

inline size_t dtype_size(DType t) { return t == DType::F32 ? 4 : 2; }
inline const char* dtype_name(DType t) { return t == DType::F32 ? "f32" : "bf16"; }
DType parse_dtype(const std::string& s);  // "f32"/"fp32"/"float32", "bf16"/"bfloat16"

inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);                                          // round to nearest even
  return uint16_t(u >> 16);
}
inline float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Converts n elements between storage dtypes (same dtype: memcpy).
void convert(void* dst, DType dst_t, const void* src, DType src_t, size_t n);

}  // namespace dsv3

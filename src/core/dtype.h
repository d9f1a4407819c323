// Element types of buffers. Floating types are what tensors are stored in; compute accumulates
// in fp32 for F32/BF16/F16 and in fp64 for F64 (the oracle the tests compare against). Integer
// types exist for indices, counts and communication payloads.
// Conversions round to nearest even, like torch.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace dsv3 {

enum class DType : uint8_t { F32, BF16, F16, F64, I32, I64, U8 };

inline size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: case DType::I32: return 4;
    case DType::BF16: case DType::F16: return 2;
    case DType::F64: case DType::I64: return 8;
    case DType::U8: return 1;
  }
  return 0;
}
inline bool is_float(DType t) { return t <= DType::F64; }
const char* dtype_name(DType t);              // "f32", "bf16", "f16", "f64", "i32", "i64", "u8"
DType parse_dtype(const std::string& s);      // floating names: "f32"/"fp32"/"float32", ...
// The type a kernel accumulates in for storage type t: F64 for F64, F32 for every other float.
inline DType accum_dtype(DType t) { return t == DType::F64 ? DType::F64 : DType::F32; }

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

// IEEE binary16. Overflow gives +-inf (as the hardware does), so fp16 training notices it.
inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  uint32_t u;
  if (exp == 0) {
    float f = float(man) * 0x1p-24f;  // zero or subnormal: man * 2^-24, exact in fp32
    std::memcpy(&u, &f, 4);
    u |= sign;
  } else if (exp == 31) {
    u = sign | 0x7f800000u | (man << 13);  // inf / NaN
  } else {
    u = sign | ((exp + 112) << 23) | (man << 13);  // rebias 15 -> 127
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t f32_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  u &= 0x7fffffffu;
  if (u > 0x7f800000u) return uint16_t(sign | 0x7e00u);           // NaN
  if (u >= 0x477ff000u) return uint16_t(sign | 0x7c00u);          // rounds to >= 65520: inf
  if (u >= 0x38800000u) {                                         // normal in fp16
    const uint32_t r = u + 0x0fffu + ((u >> 13) & 1u) - (112u << 23);
    return uint16_t(sign | (r >> 13));
  }
  if (u < 0x33000000u) return sign;                               // below half the smallest subnormal
  // subnormal: shift the mantissa (with its implicit bit) right, round to nearest even
  const uint32_t exp = u >> 23, man = (u & 0x7fffffu) | 0x800000u;
  const int shift = int(126 - exp);                               // 14..24
  uint32_t half = man >> shift;
  const uint32_t rem = man & ((1u << shift) - 1), mid = 1u << (shift - 1);
  if (rem > mid || (rem == mid && (half & 1u))) half++;
  return uint16_t(sign | half);
}

// Storage types for the 16-bit floats, so kernels can be templated on what they read and write:
// float(x) widens, T(f) rounds to nearest even.
struct bf16_t {
  uint16_t bits = 0;
  bf16_t() = default;
  explicit bf16_t(float f) : bits(f32_to_bf16(f)) {}
  explicit bf16_t(double d) : bits(f32_to_bf16(float(d))) {}
  explicit operator float() const { return bf16_to_f32(bits); }
};
struct f16_t {
  uint16_t bits = 0;
  f16_t() = default;
  explicit f16_t(float f) : bits(f32_to_f16(f)) {}
  explicit f16_t(double d) : bits(f32_to_f16(float(d))) {}
  explicit operator float() const { return f16_to_f32(bits); }
};
static_assert(sizeof(bf16_t) == 2 && sizeof(f16_t) == 2);

// The DType of a C++ storage type, and the accumulation type kernels use for it.
template <typename T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::F32; }
template <> constexpr DType dtype_of<double>() { return DType::F64; }
template <> constexpr DType dtype_of<bf16_t>() { return DType::BF16; }
template <> constexpr DType dtype_of<f16_t>() { return DType::F16; }
template <> constexpr DType dtype_of<int32_t>() { return DType::I32; }
template <> constexpr DType dtype_of<int64_t>() { return DType::I64; }
template <> constexpr DType dtype_of<uint8_t>() { return DType::U8; }
template <typename T> struct accum { using type = float; };
template <> struct accum<double> { using type = double; };
template <typename T> using accum_t = typename accum<T>::type;

// Converts n floating elements between dtypes on the host (same dtype: memcpy).
void convert(void* dst, DType dst_t, const void* src, DType src_t, size_t n);

}  // namespace dsv3

namespace dsv3 {
// Kernels templated on a storage type read and write through these: load widens to the
// accumulation type, store rounds back (to nearest even for the 16-bit types).
template <typename T>
inline accum_t<T> load(T x) {
  return static_cast<accum_t<T>>(x);
}
template <typename T>
inline T store(accum_t<T> v) {
  return T(v);
}
}  // namespace dsv3

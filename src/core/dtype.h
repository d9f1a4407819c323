// Element types of buffers. Floating types are what tensors are stored in; compute accumulates
// in fp32 for F32/BF16/F16 and in fp64 for F64 (the oracle the tests compare against). Integer
// types exist for indices, counts and communication payloads.
// Conversions round to nearest even, like torch.
// W8A8 and W8A16 are weights only (I3): an int8 matrix in the row format of ops/quant.h (each row
// its int8 values, then its fp32 scale); the name says how a GEMM consumes them (ops/gemm.h).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace dsv3 {

enum class DType : uint8_t { F32, BF16, F16, F64, I32, I64, U8, W8A8, W8A16 };

inline size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: case DType::I32: return 4;
    case DType::BF16: case DType::F16: return 2;
    case DType::F64: case DType::I64: return 8;
    case DType::U8: case DType::W8A8: case DType::W8A16: return 1;  // int8 weights: bytes
  }
  return 0;
}
inline bool is_float(DType t) { return t <= DType::F64; }
inline bool is_int8_weight(DType t) { return t == DType::W8A8 || t == DType::W8A16; }
const char* dtype_name(DType t);  // "f32", "bf16", "f16", "f64", "i32", "i64", "u8", "w8a8", "w8a16"
DType parse_dtype(const std::string& s);      // floating names: "f32"/"fp32"/"float32", ...
// The type a kernel accumulates in for storage type t: F64 for F64, F32 for every other float.
inline DType accum_dtype(DType t) { return t == DType::F64 ? DType::F64 : DType::F32; }

// Branch-free (a select, not an early return) so that loops over it vectorise.
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;  // round to nearest even
  const uint32_t quiet_nan = (u >> 16) | 0x40u;
  return uint16_t((u & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
}
inline float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// IEEE binary16. Overflow gives +-inf (as the hardware does), so fp16 training notices it.
// Both directions are branch-free (selects), so loops over them vectorise; they were checked
// against a straightforward branching version on every input (all 2^16 halves, all 2^32 floats).
// The subnormal cases use the FPU (an add of a power of two rounds the mantissa to nearest even):
// they assume the default MXCSR (no flush-to-zero, no denormals-are-zero).
inline float f16_to_f32(uint16_t h) {
  const uint32_t em = uint32_t(h & 0x7fffu) << 13;  // exponent and mantissa in fp32 position
  const uint32_t exp = em & (0x1fu << 23);
  const uint32_t normal = em + (112u << 23);         // rebias 15 -> 127
  const uint32_t inf_nan = em + (224u << 23);        // exponent 31 -> 255
  float two_m14, sub_f;                              // zero / subnormal: man * 2^-24, exactly
  uint32_t m = 113u << 23, t = em + (113u << 23), sub;
  std::memcpy(&two_m14, &m, 4);
  std::memcpy(&sub_f, &t, 4);
  sub_f -= two_m14;
  std::memcpy(&sub, &sub_f, 4);
  uint32_t u = exp == (0x1fu << 23) ? inf_nan : normal;
  u = exp == 0 ? sub : u;
  u |= uint32_t(h & 0x8000u) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t f32_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint32_t sign = (u >> 16) & 0x8000u;
  u &= 0x7fffffffu;
  // normal halves: rebias 127 -> 15 and round the 13 dropped bits to nearest even (a carry out
  // of [65520, 65536) lands on the infinity pattern, as it should)
  const uint32_t normal = (u - (112u << 23) + 0x0fffu + ((u >> 13) & 1u)) >> 13;
  // below 2^-14: adding 0.5 aligns the value's bits to the half's subnormal grid (RNE)
  float a, half = 0.5f;
  std::memcpy(&a, &u, 4);
  a += half;
  uint32_t sub;
  std::memcpy(&sub, &a, 4);
  sub -= 0x3f000000u;
  const uint32_t special = u > 0x7f800000u ? 0x7e00u : 0x7c00u;  // NaN (canonical) or inf
  uint32_t r = u < 0x38800000u ? sub : normal;
  r = u >= 0x47800000u ? special : r;
  return uint16_t(sign | r);
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

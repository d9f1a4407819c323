#include "core/dtype.h"

#include "core/check.h"

namespace dsv3 {

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "f32";
    case DType::BF16: return "bf16";
    case DType::F16: return "f16";
    case DType::F64: return "f64";
    case DType::I32: return "i32";
    case DType::I64: return "i64";
    case DType::U8: return "u8";
    case DType::W8A8: return "w8a8";
    case DType::W8A16: return "w8a16";
  }
  return "?";
}

DType parse_dtype(const std::string& s) {
  if (s == "f32" || s == "fp32" || s == "float32") return DType::F32;
  if (s == "bf16" || s == "bfloat16") return DType::BF16;
  if (s == "f16" || s == "fp16" || s == "float16") return DType::F16;
  if (s == "f64" || s == "fp64" || s == "float64") return DType::F64;
  fail("unknown dtype '", s, "' (expected f32, bf16, f16 or f64)");
}

namespace {
// Reads element i of a floating buffer as double / writes one (rounding to the dtype).
double load(const void* p, DType t, size_t i) {
  switch (t) {
    case DType::F32: return static_cast<const float*>(p)[i];
    case DType::F64: return static_cast<const double*>(p)[i];
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case DType::F16: return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
    default: fail("convert: ", dtype_name(t), " is not a floating dtype");
  }
}
void store(void* p, DType t, size_t i, double v) {
  switch (t) {
    case DType::F32: static_cast<float*>(p)[i] = float(v); return;
    case DType::F64: static_cast<double*>(p)[i] = v; return;
    case DType::BF16: static_cast<uint16_t*>(p)[i] = f32_to_bf16(float(v)); return;
    case DType::F16: static_cast<uint16_t*>(p)[i] = f32_to_f16(float(v)); return;
    default: fail("convert: ", dtype_name(t), " is not a floating dtype");
  }
}
}  // namespace

void convert(void* dst, DType dst_t, const void* src, DType src_t, size_t n) {
  if (dst_t == src_t) {
    std::memcpy(dst, src, n * dtype_size(dst_t));
    return;
  }
  DSV3_CHECK(is_float(dst_t) && is_float(src_t), "convert: ", dtype_name(src_t), " -> ",
             dtype_name(dst_t), " is not a floating conversion");
  // The two hot cases get plain loops the compiler vectorises; the rest go through double.
  // (f64 -> 16-bit rounds to f32 first: a double rounding, harmless for test data and weights.)
  if (src_t == DType::F32 && dst_t == DType::BF16) {
    auto* d = static_cast<uint16_t*>(dst);
    auto* s = static_cast<const float*>(src);
#pragma omp parallel for if (n > (1 << 16))
    for (size_t i = 0; i < n; i++) d[i] = f32_to_bf16(s[i]);
    return;
  }
  if (src_t == DType::BF16 && dst_t == DType::F32) {
    auto* d = static_cast<float*>(dst);
    auto* s = static_cast<const uint16_t*>(src);
#pragma omp parallel for if (n > (1 << 16))
    for (size_t i = 0; i < n; i++) d[i] = bf16_to_f32(s[i]);
    return;
  }
#pragma omp parallel for if (n > (1 << 16))
  for (size_t i = 0; i < n; i++) store(dst, dst_t, i, load(src, src_t, i));
}

}  // namespace dsv3

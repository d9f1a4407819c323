#include "core/dtype.h"

#include "core/check.h"

namespace dsv3 {

DType parse_dtype(const std::string& s) {
  if (s == "f32" || s == "fp32" || s == "float32") return DType::F32;
  if (s == "bf16" || s == "bfloat16") return DType::BF16;
  fail("unknown dtype '", s, "' (expected f32 or bf16)");
}

void convert(void* dst, DType dst_t, const void* src, DType src_t, size_t n) {
  if (dst_t == src_t) {
    std::memcpy(dst, src, n * dtype_size(dst_t));
  } else if (dst_t == DType::BF16) {
    auto* d = static_cast<uint16_t*>(dst);
    auto* s = static_cast<const float*>(src);
#pragma omp parallel for if (n > (1 << 16))
    for (size_t i = 0; i < n; i++) d[i] = f32_to_bf16(s[i]);
  } else {
    auto* d = static_cast<float*>(dst);
    auto* s = static_cast<const uint16_t*>(src);
#pragma omp parallel for if (n > (1 << 16))
    for (size_t i = 0; i < n; i++) d[i] = bf16_to_f32(s[i]);
  }
}

}  // namespace dsv3

// Typed buffers and payloads that say where they came from (DeepEP style), for the communicator
// tests. Every value is a small integer, exact in every dtype (bf16 holds integers up to 256), so
// results are compared exactly whatever order a reduction took.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/dtype.h"
#include "dist/comm.h"
#include "error_text.h"

namespace dsv3::test {

inline const std::vector<DType> kAllDTypes = {DType::F32, DType::BF16, DType::F16, DType::F64,
                                             DType::I32, DType::I64, DType::U8};
inline const std::vector<dist::ReduceOp> kAllOps = {dist::ReduceOp::Sum, dist::ReduceOp::Max,
                                                    dist::ReduceOp::Min};
inline const char* op_name(dist::ReduceOp op) {
  return op == dist::ReduceOp::Sum ? "sum" : op == dist::ReduceOp::Max ? "max" : "min";
}

// n elements of one dtype, read and written as double.
struct Buf {
  DType t;
  std::vector<uint8_t> bytes;
  Buf(DType dtype, size_t n) : t(dtype), bytes(n * dtype_size(dtype)) {}
  size_t size() const { return bytes.size() / dtype_size(t); }
  void* data() { return bytes.empty() ? nullptr : bytes.data(); }
  const void* data() const { return bytes.empty() ? nullptr : bytes.data(); }
  void set(size_t i, double v) {
    uint8_t* p = bytes.data() + i * dtype_size(t);
    switch (t) {
      case DType::F32: { float f = float(v); std::memcpy(p, &f, 4); return; }
      case DType::F64: std::memcpy(p, &v, 8); return;
      case DType::BF16: { uint16_t h = f32_to_bf16(float(v)); std::memcpy(p, &h, 2); return; }
      case DType::F16: { uint16_t h = f32_to_f16(float(v)); std::memcpy(p, &h, 2); return; }
      case DType::I32: { int32_t x = int32_t(v); std::memcpy(p, &x, 4); return; }
      case DType::I64: { int64_t x = int64_t(v); std::memcpy(p, &x, 8); return; }
      case DType::U8: case DType::W8A8: case DType::W8A16: *p = uint8_t(v); return;
    }
  }
  double get(size_t i) const {
    const uint8_t* p = bytes.data() + i * dtype_size(t);
    switch (t) {
      case DType::F32: { float f; std::memcpy(&f, p, 4); return f; }
      case DType::F64: { double d; std::memcpy(&d, p, 8); return d; }
      case DType::BF16: { uint16_t h; std::memcpy(&h, p, 2); return bf16_to_f32(h); }
      case DType::F16: { uint16_t h; std::memcpy(&h, p, 2); return f16_to_f32(h); }
      case DType::I32: { int32_t x; std::memcpy(&x, p, 4); return x; }
      case DType::I64: { int64_t x; std::memcpy(&x, p, 8); return double(x); }
      case DType::U8: case DType::W8A8: case DType::W8A16: return *p;
    }
    return 0;
  }
};

// What rank `src` sends rank `dst` as element i: both ranks and the index are readable from the
// value (in the narrow dtypes only the low bits of each).
inline double payload(DType t, int src, int dst, size_t i) {
  if (t == DType::BF16 || t == DType::F16 || t == DType::U8)
    return double(((src * 4 + dst) % 16) * 8 + int(i % 8));  // < 128
  return double((src * 16 + dst) * 65536 + int(i % 65536));   // < 2^24: exact in f32
}
// Rank r's contribution to a reduction, element i; sums over 4 ranks stay below 256.
inline double reduce_input(int r, size_t i) { return double(r + 1 + 8 * int(i % 7)); }
inline double reduce_expected(dist::ReduceOp op, const std::vector<int>& ranks, size_t i) {
  double acc = reduce_input(ranks[0], i);
  for (size_t k = 1; k < ranks.size(); k++) {
    const double x = reduce_input(ranks[k], i);
    acc = op == dist::ReduceOp::Sum ? acc + x : op == dist::ReduceOp::Max ? std::max(acc, x) : std::min(acc, x);
  }
  return acc;
}

}  // namespace dsv3::test

// Bump allocator over one device buffer. Activations are laid out once per (config, dtype, dims,
// recompute mode): a first pass with no buffer only measures (every tensor it hands out is
// empty), the second hands out memory. The measuring pass is also how `dsv3 info` reports
// activation memory without allocating it.
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/check.h"
#include "tensor/tensor.h"

namespace dsv3 {

struct Arena {
  char* base = nullptr;  // null: measuring pass
  size_t cap = 0;        // bytes
  size_t used = 0;
  Device device = Device::CPU;

  Tensor take(DType t, size_t n) {
    const size_t off = used;
    used += (n * dtype_size(t) + 63) / 64 * 64;  // 64-byte aligned blocks
    if (!base) return Tensor{nullptr, n, t, device};
    DSV3_CHECK(used <= cap, "arena overflow (internal error): ", used, " > ", cap);
    return Tensor{base + off, n, t, device};
  }
};

struct Dims {
  int B, T;
  int N() const { return B * T; }
};

}  // namespace dsv3

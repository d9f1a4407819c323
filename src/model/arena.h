// Bump allocator over one float buffer. Activations are laid out once per (config, B, T): a
// first pass with no buffer only measures (every pointer is null), the second hands out memory.
// The measuring pass is also how `dsv3 info` reports activation memory without allocating it.
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/check.h"

namespace dsv3 {

struct Arena {
  float* base = nullptr;  // null: measuring pass
  size_t cap = 0;         // floats
  size_t used = 0;

  float* f(size_t n) {
    const size_t off = used;
    used += (n + 15) / 16 * 16;  // 64-byte aligned blocks
    if (!base) return nullptr;
    DSV3_CHECK(used <= cap, "arena overflow (internal error): ", used, " > ", cap);
    return base + off;
  }
  int32_t* i32(size_t n) { return reinterpret_cast<int32_t*>(f(n)); }
};

struct Dims {
  int B, T;
  int N() const { return B * T; }
};

}  // namespace dsv3

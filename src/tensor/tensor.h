// A typed view of memory: pointer, element count, dtype and device. It owns nothing (Buffer in
// backend/backend.h owns) and has no shape: each op's params struct states its shapes (llm.c
// style, STYLE.md point 1), while the view lets every op check, before it touches a byte, that
// its buffers have the dtype, device and size the call implies.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "core/check.h"
#include "core/dtype.h"

namespace dsv3 {

enum class Device : uint8_t { CPU, CUDA };
const char* device_name(Device d);          // "cpu" | "cuda"
Device parse_device(const std::string& s);  // "cpu" | "cuda" | "gpu"

struct Tensor {
  static constexpr size_t kToEnd = ~size_t(0);

  void* data = nullptr;
  size_t numel = 0;
  DType dtype = DType::F32;
  Device device = Device::CPU;

  Tensor() = default;
  Tensor(void* d, size_t n, DType t, Device dev = Device::CPU)
      : data(d), numel(n), dtype(t), device(dev) {}

  explicit operator bool() const { return data != nullptr; }
  size_t bytes() const { return numel * dtype_size(dtype); }
  // Elements [offset, offset + n) of this view (n = kToEnd: to the end).
  Tensor slice(size_t offset, size_t n = kToEnd) const {
    if (n == kToEnd) n = offset <= numel ? numel - offset : 0;
    DSV3_CHECK(offset + n <= numel, "tensor slice [", offset, ", ", offset + n, ") outside ", numel,
               " elements (internal error)");
    return {static_cast<char*>(data) + offset * dtype_size(dtype), n, dtype, device};
  }
  // The data as T*, checking that T is the stored dtype.
  template <typename T>
  T* as() const {
    DSV3_CHECK(dtype_of<T>() == dtype, "tensor holds ", dtype_name(dtype), ", accessed as ",
               dtype_name(dtype_of<T>()), " (internal error)");
    return static_cast<T*>(data);
  }
};

// Views of host arrays, for tools and tests.
template <typename T>
Tensor host_tensor(T* p, size_t n) {
  return {const_cast<std::remove_const_t<T>*>(p), n, dtype_of<std::remove_const_t<T>>(), Device::CPU};
}
template <typename T>
Tensor host_tensor(std::vector<T>& v) {
  return host_tensor(v.data(), v.size());
}
template <typename T>
Tensor host_tensor(const std::vector<T>& v) {
  return host_tensor(v.data(), v.size());
}

}  // namespace dsv3

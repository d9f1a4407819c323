#include <cstdlib>
#include <cstring>

#include "backend/backend.h"
#include "core/check.h"

namespace dsv3 {

Device parse_device(const std::string& s) {
  if (s == "cpu") return Device::CPU;
  if (s == "cuda" || s == "gpu") return Device::CUDA;
  fail("unknown device '", s, "' (expected cpu or cuda)");
}

const char* device_name(Device d) { return d == Device::CPU ? "cpu" : "cuda"; }

void* device_alloc(Device d, size_t bytes) {
  if (d == Device::CUDA) return cuda::alloc(bytes);
  size_t rounded = (bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded ? rounded : 64);
  DSV3_CHECK(p, "out of host memory allocating ", bytes, " bytes");
  std::memset(p, 0, rounded);
  return p;
}

void device_free(Device d, void* p) {
  if (!p) return;
  if (d == Device::CUDA) return cuda::free(p);
  std::free(p);
}

void device_copy(void* dst, Device dst_dev, const void* src, Device src_dev, size_t bytes) {
  if (dst_dev == Device::CPU && src_dev == Device::CPU) {
    std::memcpy(dst, src, bytes);
    return;
  }
  cuda::copy(dst, dst_dev == Device::CUDA, src, src_dev == Device::CUDA, bytes);
}

void device_zero(Device d, void* p, size_t bytes) {
  if (d == Device::CUDA) return cuda::zero(p, bytes);
  std::memset(p, 0, bytes);
}

void require_cpu(const Exec& ex, const char* op) {
  DSV3_CHECK(ex.device == Device::CPU, op, " has no ", device_name(ex.device),
             " kernel yet; run with --device cpu");
}

}  // namespace dsv3

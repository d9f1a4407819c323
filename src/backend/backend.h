// The backend seam (STYLE.md point 3): where memory lives and how bytes move. Ops take an Exec
// that names the device (and, on CUDA, the stream); each op dispatches on it in one place, in its
// own .cpp. The CPU backend is always linked; the CUDA one is linked when DSV3_CUDA=ON, otherwise
// cuda_stub.cpp answers "built without CUDA".
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace dsv3 {

enum class Device : uint8_t { CPU, CUDA };

struct Exec {
  Device device = Device::CPU;
  void* stream = nullptr;  // cudaStream_t on CUDA; unused on CPU
};

Device parse_device(const std::string& s);  // "cpu" | "cuda"
const char* device_name(Device d);

void* device_alloc(Device d, size_t bytes);  // zero-initialised, 64-byte aligned on CPU
void device_free(Device d, void* p);
void device_copy(void* dst, Device dst_dev, const void* src, Device src_dev, size_t bytes);
void device_zero(Device d, void* p, size_t bytes);

// CUDA side of the seam; implemented in backend/cuda/*.cu or by backend/cuda_stub.cpp.
namespace cuda {
bool available();  // built with CUDA and a device is visible
std::string describe();
void* alloc(size_t bytes);
void free(void* p);
void copy(void* dst, bool dst_on_device, const void* src, bool src_on_device, size_t bytes);
void zero(void* p, size_t bytes);
}  // namespace cuda

// Fails with a clear message when an op has no kernel for ex.device yet.
void require_cpu(const Exec& ex, const char* op);

}  // namespace dsv3

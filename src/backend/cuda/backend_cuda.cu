// CUDA memory and copies behind the backend seam. Kernels for the ops arrive with the CUDA
// backend issue; until then ops refuse Device::CUDA through require_cpu().
#include <cuda_runtime.h>

#include "backend/backend.h"
#include "core/check.h"

namespace dsv3::cuda {

static void check(cudaError_t e, const char* what) {
  DSV3_CHECK(e == cudaSuccess, "CUDA ", what, " failed: ", cudaGetErrorString(e));
}

bool available() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

std::string describe() {
  if (!available()) return "built with CUDA, no device visible";
  cudaDeviceProp p{};
  check(cudaGetDeviceProperties(&p, 0), "cudaGetDeviceProperties");
  return cat(p.name, " (sm_", p.major, p.minor, ", ", p.totalGlobalMem >> 20, " MiB)");
}

void* alloc(size_t bytes) {
  void* p = nullptr;
  check(cudaMalloc(&p, bytes ? bytes : 1), "cudaMalloc");
  check(cudaMemset(p, 0, bytes), "cudaMemset");
  return p;
}

void free(void* p) { check(cudaFree(p), "cudaFree"); }

void copy(void* dst, bool dst_dev, const void* src, bool src_dev, size_t bytes) {
  cudaMemcpyKind kind = dst_dev ? (src_dev ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice)
                                : cudaMemcpyDeviceToHost;
  check(cudaMemcpy(dst, src, bytes, kind), "cudaMemcpy");
}

void zero(void* p, size_t bytes) { check(cudaMemset(p, 0, bytes), "cudaMemset"); }

}  // namespace dsv3::cuda

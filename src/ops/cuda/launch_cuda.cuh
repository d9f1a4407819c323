// The GPU side of the launcher the kernel run functions take (kernels/elementwise.cuh states the
// contract), the storage-type dispatch of the CUDA launchers, and raw typed pointers of Tensors.
// Only nvcc compiles this header.
#pragma once
#include <utility>

#include "backend/cuda/runtime.h"
#include "core/check.h"
#include "ops/cuda/device.cuh"
#include "tensor/tensor.h"

namespace dsv3::cuda {

struct CudaLaunch {
  Stream* s;
  const char* op;
  template <typename... P, typename... A>
  void operator()(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, A&&... args) const {
    DSV3_CHECK(smem <= kMaxSmemPerBlock, op, ": a kernel needs ", smem,
               " bytes of shared memory, more than a block has (internal error)");
    allow_dynamic_smem(reinterpret_cast<const void*>(kernel), smem);
    kernel<<<grid, block, smem, stream_of(s)>>>(std::forward<A>(args)...);
    after_launch(op, s);
  }
  void* scratch(size_t bytes) const { return cuda::scratch(s, bytes); }
  void zero(void* p, size_t bytes) const {
    check(cudaMemsetAsync(p, 0, bytes, stream_of(s)), "cudaMemsetAsync");
  }
  void to_device(void* dst, const void* src, size_t bytes) const {
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_of(s)), "cudaMemcpyAsync");
  }
  void to_host(void* dst, const void* src, size_t bytes) const {
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_of(s)), "cudaMemcpyAsync");
    synchronize(s);
  }
  int* error_flag() const { return device_error_flag(); }
};

inline CudaLaunch launcher(const Exec& ex, const char* op) { return {ex.stream, op}; }

// Calls fn.template operator()<T>() with T the device storage type of dtype t.
template <typename Fn>
void dispatch_device(DType t, const char* op, Fn&& fn) {
  switch (t) {
    case DType::F32: return fn.template operator()<float>();
    case DType::BF16: return fn.template operator()<bf16>();
    case DType::F16: return fn.template operator()<f16>();
    default:
      fail(op, ": no CUDA kernel for ", dtype_name(t), " (the f64 oracle runs on the CPU)");
  }
}

template <typename T>
T* ptr(const Tensor& t) {
  return static_cast<T*>(t.data);
}

}  // namespace dsv3::cuda

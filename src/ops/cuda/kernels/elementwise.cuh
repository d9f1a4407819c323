// Elementwise kernels: the residual add, dtype conversion, scaling (ops/elementwise.h). Grid-stride
// loops, math in fp32, one rounding per stored element.
//
// Every run function in src/ops/cuda/kernels takes a launcher `L` first (CudaLaunch on the GPU,
// the emulator's in tests): launch(kernel, grid, block, smem, args...), scratch(bytes) (memory
// valid until the next scratch() of the same launcher), zero(p, bytes), to_device(dst, src,
// bytes), to_host(dst, src, bytes) (waits for the work before it) and error_flag() (device int
// the kernels record input errors in).
#pragma once
#include "ops/cuda/device.cuh"
#include "ops/cuda/launch.h"

namespace dsv3::cuda {

template <typename T>
__global__ void add_kernel(T* y, const T* x, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    y[i] = st<T>(ld(y[i]) + ld(x[i]));
}

template <typename D, typename S>
__global__ void convert_kernel(D* d, const S* s, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    d[i] = st<D>(ld(s[i]));
}

template <typename T>
__global__ void scale_kernel(T* x, float s, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    x[i] = st<T>(ld(x[i]) * s);
}

template <typename L, typename T>
void add_run(const L& launch, T* y, const T* x, size_t n) {
  if (n == 0) return;
  const Launch1D p = plan_elementwise(n);
  launch(add_kernel<T>, dim3(p.grid), dim3(p.block), 0, y, x, n);
}
template <typename L, typename D, typename S>
void convert_run(const L& launch, D* d, const S* s, size_t n) {
  if (n == 0) return;
  const Launch1D p = plan_elementwise(n);
  launch(convert_kernel<D, S>, dim3(p.grid), dim3(p.block), 0, d, s, n);
}
template <typename L, typename T>
void scale_run(const L& launch, T* x, float s, size_t n) {
  if (n == 0) return;
  const Launch1D p = plan_elementwise(n);
  launch(scale_kernel<T>, dim3(p.grid), dim3(p.block), 0, x, s, n);
}

}  // namespace dsv3::cuda

// SwiGLU on fused [gate | up] rows (ops/swiglu.h): out = silu(g) * u, elementwise.
#pragma once
#include "ops/cuda/device.cuh"
#include "ops/cuda/launch.h"

namespace dsv3::cuda {

DSV3_DEVICE float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }

template <typename T>
__global__ void swiglu_forward_kernel(T* out, const T* h, int N, int D) {
  const size_t total = size_t(N) * D;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < total;
       i += size_t(gridDim.x) * blockDim.x) {
    const size_t n = i / D, d = i % D;
    const float g = ld(h[n * 2 * D + d]), u = ld(h[n * 2 * D + D + d]);
    out[i] = st<T>(g * sigmoidf_(g) * u);
  }
}

// With s = sigmoid(g): dg (+)= dout u s (1 + g (1 - s)), du (+)= dout g s.
template <typename T>
__global__ void swiglu_backward_kernel(T* dh, const T* dout, const T* h, int N, int D,
                                       bool accumulate) {
  const size_t total = size_t(N) * D;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < total;
       i += size_t(gridDim.x) * blockDim.x) {
    const size_t n = i / D, d = i % D, gi = n * 2 * D + d, ui = gi + D;
    const float g = ld(h[gi]), u = ld(h[ui]), o = ld(dout[i]);
    const float s = sigmoidf_(g);
    const float vg = o * u * s * (1.0f + g * (1.0f - s)), vu = o * g * s;
    dh[gi] = st<T>(accumulate ? ld(dh[gi]) + vg : vg);
    dh[ui] = st<T>(accumulate ? ld(dh[ui]) + vu : vu);
  }
}

template <typename L, typename T>
void swiglu_forward_run(const L& launch, T* out, const T* h, int N, int D) {
  if (size_t(N) * D == 0) return;
  const Launch1D p = plan_elementwise(size_t(N) * D);
  launch(swiglu_forward_kernel<T>, dim3(p.grid), dim3(p.block), 0, out, h, N, D);
}
template <typename L, typename T>
void swiglu_backward_run(const L& launch, T* dh, const T* dout, const T* h, int N, int D,
                         bool accumulate) {
  if (size_t(N) * D == 0) return;
  const Launch1D p = plan_elementwise(size_t(N) * D);
  launch(swiglu_backward_kernel<T>, dim3(p.grid), dim3(p.block), 0, dh, dout, h, N, D, accumulate);
}

}  // namespace dsv3::cuda

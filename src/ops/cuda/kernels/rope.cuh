// Interleaved rotary embedding in place (ops/rope.h): one thread per rotated pair. The tables are
// computed on the host in double, exactly as the CPU's, and copied (they are a few KB).
#pragma once
#include "ops/cuda/device.cuh"
#include "ops/cuda/launch.h"

namespace dsv3::cuda {

struct RopeGeom {
  int N, T, heads, row_stride, head_stride, offset, dim;
};

// sign +1: rotate by +angle (forward); -1: by -angle (backward, R^T = R(-angle)).
template <typename T>
__global__ void rope_kernel(T* x, const float* cos, const float* sin, RopeGeom l, float sign) {
  const int half = l.dim / 2;
  const size_t total = size_t(l.N) * l.heads * half;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < total;
       i += size_t(gridDim.x) * blockDim.x) {
    const int p = int(i % half);
    const size_t nh = i / half;
    const int h = int(nh % l.heads), n = int(nh / l.heads);
    const size_t tab = size_t(n % l.T) * half + p;
    T* v = x + size_t(n) * l.row_stride + size_t(h) * l.head_stride + l.offset + 2 * p;
    const float x0 = ld(v[0]), x1 = ld(v[1]), c = cos[tab], s = sign * sin[tab];
    v[0] = st<T>(x0 * c - x1 * s);
    v[1] = st<T>(x0 * s + x1 * c);
  }
}

template <typename L, typename T>
void rope_run(const L& launch, T* x, const float* cos, const float* sin, RopeGeom l, float sign) {
  const size_t total = size_t(l.N) * l.heads * (l.dim / 2);
  if (total == 0) return;
  const Launch1D p = plan_elementwise(total);
  launch(rope_kernel<T>, dim3(p.grid), dim3(p.block), 0, x, cos, sin, l, sign);
}

}  // namespace dsv3::cuda

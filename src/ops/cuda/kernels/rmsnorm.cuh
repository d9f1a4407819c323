// RMSNorm over strided rows (ops/rmsnorm.h): one block per row for the output and dx; dw is a
// reduction over rows done in a fixed order (row chunks in parallel, then the chunks in order).
#pragma once
#include "ops/cuda/device.cuh"
#include "ops/cuda/launch.h"

namespace dsv3::cuda {

template <typename T>
__global__ void rmsnorm_forward_kernel(T* out, float* rstd, const T* x, const T* w, int C,
                                       int x_stride, int out_stride, float eps) {
  __shared__ float red[32];
  const size_t n = blockIdx.x;
  const T* xr = x + n * x_stride;
  T* o = out + n * out_stride;
  float ss = 0;
  for (int c = int(threadIdx.x); c < C; c += int(blockDim.x)) ss += ld(xr[c]) * ld(xr[c]);
  ss = block_sum(ss, red);
  const float r = 1.0f / sqrtf(ss / float(C) + eps);
  if (threadIdx.x == 0) rstd[n] = r;
  for (int c = int(threadIdx.x); c < C; c += int(blockDim.x)) o[c] = st<T>(ld(xr[c]) * r * ld(w[c]));
}

// dx += r w g - (r^3 / C) x sum_k g_k w_k x_k, one block per row.
template <typename T>
__global__ void rmsnorm_backward_dx_kernel(T* dx, const T* dout, const T* x, const T* w,
                                           const float* rstd, int C, int x_stride, int out_stride) {
  __shared__ float red[32];
  const size_t n = blockIdx.x;
  const T* xr = x + n * x_stride;
  const T* g = dout + n * out_stride;
  T* d = dx + n * x_stride;
  const float r = rstd[n];
  float dot = 0;
  for (int c = int(threadIdx.x); c < C; c += int(blockDim.x)) dot += ld(g[c]) * ld(w[c]) * ld(xr[c]);
  dot = block_sum(dot, red);
  const float k = r * r * r * dot / float(C);
  for (int c = int(threadIdx.x); c < C; c += int(blockDim.x))
    d[c] = st<T>(ld(d[c]) + r * ld(w[c]) * ld(g[c]) - k * ld(xr[c]));
}

// partial[chunk][c] = sum over the chunk's rows, in row order, of g x r.
template <typename T>
__global__ void rmsnorm_dw_partial_kernel(float* partial, const T* dout, const T* x,
                                          const float* rstd, int N, int C, int x_stride,
                                          int out_stride, int rows_per_chunk) {
  const int c = int(blockIdx.x * blockDim.x + threadIdx.x), chunk = int(blockIdx.y);
  if (c >= C) return;
  const int n0 = chunk * rows_per_chunk, n1 = imin(N, n0 + rows_per_chunk);
  float acc = 0;
  for (int n = n0; n < n1; n++)
    acc += ld(dout[size_t(n) * out_stride + c]) * ld(x[size_t(n) * x_stride + c]) * rstd[n];
  partial[size_t(chunk) * C + c] = acc;
}

// dst[c] += sum over chunks, in chunk order, of partial[chunk][c].
template <typename = void>
__global__ void sum_partials_kernel(float* dst, const float* partial, int chunks, int C) {
  const int c = int(blockIdx.x * blockDim.x + threadIdx.x);
  if (c >= C) return;
  float acc = 0;
  for (int k = 0; k < chunks; k++) acc += partial[size_t(k) * C + c];
  dst[c] += acc;
}

template <typename L, typename T>
void rmsnorm_forward_run(const L& launch, T* out, float* rstd, const T* x, const T* w, int N, int C,
                         int x_stride, int out_stride, float eps) {
  if (N == 0) return;
  launch(rmsnorm_forward_kernel<T>, dim3(unsigned(N)), dim3(row_threads(size_t(C))), 0, out, rstd,
         x, w, C, x_stride, out_stride, eps);
}

template <typename L, typename T>
void rmsnorm_backward_run(const L& launch, T* dx, float* dw, const T* dout, const T* x, const T* w,
                          const float* rstd, int N, int C, int x_stride, int out_stride) {
  if (N == 0) return;
  if (dx)
    launch(rmsnorm_backward_dx_kernel<T>, dim3(unsigned(N)), dim3(row_threads(size_t(C))), 0, dx,
           dout, x, w, rstd, C, x_stride, out_stride);
  if (dw) {
    const int chunks = reduction_chunks(N), rows = int(ceil_div(size_t(N), size_t(chunks)));
    float* partial = static_cast<float*>(launch.scratch(size_t(chunks) * C * sizeof(float)));
    const unsigned cols = unsigned(ceil_div(size_t(C), 128));
    launch(rmsnorm_dw_partial_kernel<T>, dim3(cols, unsigned(chunks)), dim3(128), 0, partial, dout,
           x, rstd, N, C, x_stride, out_stride, rows);
    launch(sum_partials_kernel<>, dim3(cols), dim3(128), 0, dw, static_cast<const float*>(partial),
           chunks, C);
  }
}

}  // namespace dsv3::cuda

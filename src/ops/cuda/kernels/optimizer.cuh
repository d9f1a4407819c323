// Optimizer kernels (ops/optimizer.h): AdamW over every parameter tensor in one launch (a
// multi-tensor kernel: the tensors are cut into blocks of kAdamBlock elements, one CUDA block
// each, listed once per parameter table), the sum of squares behind the global gradient norm
// (blocks of kSumBlock summed in double in fixed trees, then in block order), and the routing-
// bias update. Same fp32 arithmetic per element as the CPU.
#pragma once
#include "ops/cuda/device.cuh"
#include "ops/cuda/launch.h"

namespace dsv3::cuda {

// Per update, computed on the host as the CPU kernel computes them.
struct AdamwScalars {
  float b1, b2, eps, bc2_sqrt, step_size, decay_on, grad_scale;
  bool scaled;  // grad_scale != 1
};

template <typename T>
__global__ void adamw_kernel(float* p, const float* g, float* m, float* v, T* compute,
                             const SpanBlock* blocks, AdamwScalars h) {
  const SpanBlock b = blocks[blockIdx.x];
  const float decay = b.decay ? h.decay_on : 1.0f;
  for (uint32_t j = threadIdx.x; j < b.numel; j += blockDim.x) {
    const size_t i = b.offset + j;
    const float gi = h.scaled ? g[i] * h.grad_scale : g[i];
    const float mi = h.b1 * m[i] + (1.0f - h.b1) * gi;
    const float vi = h.b2 * v[i] + (1.0f - h.b2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    const float denom = sqrtf(vi) / h.bc2_sqrt + h.eps;
    const float pi = p[i] * decay - h.step_size * mi / denom;
    p[i] = pi;
    if (compute) compute[i] = st<T>(pi);
  }
}

// partial[b] = sum over block b of x^2 in double.
template <typename = void>
__global__ void sum_squares_kernel(double* partial, const float* x, const SpanBlock* blocks) {
  __shared__ double red[32];
  const SpanBlock b = blocks[blockIdx.x];
  double s = 0;
  for (uint32_t j = threadIdx.x; j < b.numel; j += blockDim.x) {
    const double v = x[b.offset + j];
    s += v * v;
  }
  s = block_sum(s, red);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

template <typename = void>
__global__ void sum_partials_double_kernel(double* out, const double* partial, int n) {
  __shared__ double red[32];
  double s = 0;
  for (int i = int(threadIdx.x); i < n; i += int(blockDim.x)) s += partial[i];
  s = block_sum(s, red);
  if (threadIdx.x == 0) *out = s;
}

// bias[e] += gamma * sign(mean(loads) - loads[e]); the mean summed in order, in double.
template <typename = void>
__global__ void routing_bias_kernel(float* bias, const int64_t* loads, int E, double gamma) {
  __shared__ double mean;
  if (threadIdx.x == 0) {
    double s = 0;
    for (int e = 0; e < E; e++) s += double(loads[e]);
    mean = s / double(E);
  }
  __syncthreads();
  for (int e = int(threadIdx.x); e < E; e += int(blockDim.x)) {
    const double diff = mean - double(loads[e]);
    bias[e] += float(gamma * double((diff > 0) - (diff < 0)));
  }
}

template <typename L, typename T>
void adamw_run(const L& launch, float* p, const float* g, float* m, float* v, T* compute,
               const SpanBlock* blocks, size_t nblocks, const AdamwScalars& h) {
  if (nblocks == 0) return;
  launch(adamw_kernel<T>, dim3(unsigned(nblocks)), dim3(256), 0, p, g, m, v, compute, blocks, h);
}

// Returns the sum (waits for it).
template <typename L>
double sum_squares_run(const L& launch, const float* x, const SpanBlock* blocks, size_t nblocks) {
  if (nblocks == 0) return 0.0;
  double* partial = static_cast<double*>(launch.scratch((nblocks + 1) * sizeof(double)));
  launch(sum_squares_kernel<>, dim3(unsigned(nblocks)), dim3(256), 0, partial, x, blocks);
  launch(sum_partials_double_kernel<>, dim3(1), dim3(1024), 0, partial + nblocks,
         static_cast<const double*>(partial), int(nblocks));
  double out = 0;
  launch.to_host(&out, partial + nblocks, sizeof(double));
  return out;
}

template <typename L>
void routing_bias_run(const L& launch, float* bias, const int64_t* loads, int E, double gamma) {
  if (E == 0) return;
  launch(routing_bias_kernel<>, dim3(1), dim3(256), 0, bias, loads, E, gamma);
}

}  // namespace dsv3::cuda

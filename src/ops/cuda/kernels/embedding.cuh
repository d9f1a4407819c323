// Token embedding (ops/embedding.h): out[n] = table[ids[n]]; the backward adds dout rows into the
// fp32 table gradient. Repeated ids make a plain scatter racy (and atomics make it
// non-deterministic), so each block owns a range of vocabulary rows, walks the ids in token order
// and applies the tokens that fall in its range in that order: every dtable element gets its
// terms in token order, the same sum the CPU computes, with no atomics.
#pragma once
#include "ops/cuda/device.cuh"
#include "ops/cuda/launch.h"

namespace dsv3::cuda {

template <typename T>
__global__ void embedding_forward_kernel(T* out, const int32_t* ids, const T* table, int N, int C,
                                         int V, int* err) {
  const size_t total = size_t(N) * C;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < total;
       i += size_t(gridDim.x) * blockDim.x) {
    const size_t n = i / C, c = i % C;
    const int32_t id = ids[n];
    if (id < 0 || id >= V) {
      if (c == 0) raise(err, DeviceError::TokenIdOutOfRange);
      out[i] = st<T>(0.0f);
      continue;
    }
    out[i] = table[size_t(id) * C + c];
  }
}

// Block b owns vocabulary rows [b * rows_per_block, ...). blockDim.x is a multiple of 32, <= 1024.
template <typename T>
__global__ void embedding_backward_kernel(float* dtable, const T* dout, const int32_t* ids, int N,
                                          int C, int V, int rows_per_block) {
  __shared__ int list[1024];
  __shared__ int warp_count[32];
  const int r0 = int(blockIdx.x) * rows_per_block, r1 = imin(V, r0 + rows_per_block);
  const int lane = int(threadIdx.x & 31u), warp = int(threadIdx.x >> 5), warps = int(blockDim.x >> 5);
  for (int base = 0; base < N; base += int(blockDim.x)) {
    const int n = base + int(threadIdx.x);
    const int id = n < N ? ids[n] : -1;
    const bool mine = id >= r0 && id < r1;
    const unsigned bits = __ballot_sync(0xffffffffu, mine);
    if (lane == 0) warp_count[warp] = __popc(bits);
    __syncthreads();
    int before = 0, total = 0;
    for (int w = 0; w < warps; w++) {
      before += w < warp ? warp_count[w] : 0;
      total += warp_count[w];
    }
    if (mine) list[before + __popc(bits & ((1u << lane) - 1u))] = n;  // token order kept
    __syncthreads();
    for (int i = 0; i < total; i++) {
      const int t = list[i];
      float* dst = dtable + size_t(ids[t]) * C;
      const T* src = dout + size_t(t) * C;
      for (int c = int(threadIdx.x); c < C; c += int(blockDim.x)) dst[c] += ld(src[c]);
    }
    __syncthreads();  // the list is rewritten next round
  }
}

inline int embedding_rows_per_block(int V) { return std::max(32, int(ceil_div(size_t(V), 1024))); }

template <typename L, typename T>
void embedding_forward_run(const L& launch, T* out, const int32_t* ids, const T* table, int N,
                           int C, int V) {
  if (N == 0) return;
  const Launch1D p = plan_elementwise(size_t(N) * C);
  launch(embedding_forward_kernel<T>, dim3(p.grid), dim3(p.block), 0, out, ids, table, N, C, V,
         launch.error_flag());
}
template <typename L, typename T>
void embedding_backward_run(const L& launch, float* dtable, const T* dout, const int32_t* ids,
                            int N, int C, int V) {
  if (N == 0) return;
  const int rows = embedding_rows_per_block(V);
  launch(embedding_backward_kernel<T>, dim3(unsigned(ceil_div(size_t(V), size_t(rows)))),
         dim3(256), 0, dtable, dout, ids, N, C, V, rows);
}

}  // namespace dsv3::cuda

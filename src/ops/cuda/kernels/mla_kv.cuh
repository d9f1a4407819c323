// MLA key/value assembly (ops/mla_kv.h): per-head keys [k_nope | shared k_pe] and values out of
// kv_b's output, and back. One block per token.
#pragma once
#include "ops/cuda/device.cuh"
#include "ops/cuda/launch.h"

namespace dsv3::cuda {

struct MlaKvGeom {
  int N, H, nope, rope, dv, kv_lora;
};

template <typename T>
__global__ void mla_kv_expand_forward_kernel(T* k, T* v, const T* kvb, const T* kv, MlaKvGeom s) {
  const int dqk = s.nope + s.rope, kvbw = s.nope + s.dv, kvw = s.kv_lora + s.rope;
  const size_t n = blockIdx.x;
  const T* row = kvb + n * s.H * kvbw;
  const T* kpe = kv + n * kvw + s.kv_lora;
  for (int i = int(threadIdx.x); i < s.H * dqk; i += int(blockDim.x)) {
    const int h = i / dqk, j = i % dqk;
    k[n * s.H * dqk + i] = j < s.nope ? row[h * kvbw + j] : kpe[j - s.nope];
  }
  for (int i = int(threadIdx.x); i < s.H * s.dv; i += int(blockDim.x)) {
    const int h = i / s.dv, j = i % s.dv;
    v[n * s.H * s.dv + i] = row[h * kvbw + s.nope + j];
  }
}

// dkvb overwritten; dkv's latent zeroed and its k_pe slice = dk's rope parts summed over heads
// in head order (fp32, one rounding).
template <typename T>
__global__ void mla_kv_expand_backward_kernel(T* dkvb, T* dkv, const T* dk, const T* dv,
                                              MlaKvGeom s) {
  const int dqk = s.nope + s.rope, kvbw = s.nope + s.dv, kvw = s.kv_lora + s.rope;
  const size_t n = blockIdx.x;
  T* row = dkvb + n * s.H * kvbw;
  for (int i = int(threadIdx.x); i < s.H * kvbw; i += int(blockDim.x)) {
    const int h = i / kvbw, j = i % kvbw;
    row[i] = j < s.nope ? dk[(n * s.H + h) * dqk + j] : dv[(n * s.H + h) * s.dv + (j - s.nope)];
  }
  T* dkvr = dkv + n * kvw;
  for (int i = int(threadIdx.x); i < s.kv_lora; i += int(blockDim.x)) dkvr[i] = st<T>(0.0f);
  for (int r = int(threadIdx.x); r < s.rope; r += int(blockDim.x)) {
    float acc = 0;
    for (int h = 0; h < s.H; h++) acc += ld(dk[(n * s.H + h) * dqk + s.nope + r]);
    dkvr[s.kv_lora + r] = st<T>(acc);
  }
}

template <typename L, typename T>
void mla_kv_expand_forward_run(const L& launch, T* k, T* v, const T* kvb, const T* kv, MlaKvGeom s) {
  if (s.N == 0) return;
  launch(mla_kv_expand_forward_kernel<T>, dim3(unsigned(s.N)), dim3(256), 0, k, v, kvb, kv, s);
}
template <typename L, typename T>
void mla_kv_expand_backward_run(const L& launch, T* dkvb, T* dkv, const T* dk, const T* dv,
                                MlaKvGeom s) {
  if (s.N == 0) return;
  launch(mla_kv_expand_backward_kernel<T>, dim3(unsigned(s.N)), dim3(256), 0, dkvb, dkv, dk, dv, s);
}

}  // namespace dsv3::cuda

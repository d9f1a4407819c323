// The device layer every CUDA kernel of dsv3 is written against (src/ops/cuda/kernels/*.cuh).
// nvcc compiles it for the GPU; with DSV3_CUDA_EMULATION the host compiler compiles the same
// kernels for the CPU SIMT emulator (tests/cpp/cuda_emu/emu.h), which supplies threadIdx,
// __syncthreads, the warp collectives and atomics. So a kernel uses only what both sides have:
// the names below, the CUDA spellings emu.h defines, and float/double <cmath> functions.
//
// Storage types: bf16 / f16 are __nv_bfloat16 / __half on the GPU and dsv3's own bf16_t / f16_t
// in emulation (same bits). Kernels read them through ld() (widen to fp32) and write through
// st<T>() (round to nearest even, once), as the CPU kernels do with load/store.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "core/dtype.h"

#ifdef DSV3_CUDA_EMULATION
#include "cuda_emu/emu.h"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

#define DSV3_DEVICE __device__ __forceinline__

// Loop unrolling, so register arrays are indexed by constants (the emulator ignores it).
#ifdef DSV3_CUDA_EMULATION
#define DSV3_UNROLL
#else
#define DSV3_UNROLL _Pragma("unroll")
#endif

// A kernel's dynamic shared memory (16-byte aligned), sized by the launch.
#ifdef DSV3_CUDA_EMULATION
#define DSV3_DYNAMIC_SMEM(name) char* name = ::dsv3::emu::dynamic_smem()
#else
#define DSV3_DYNAMIC_SMEM(name) extern __shared__ __align__(16) char name[]
#endif

namespace dsv3::cuda {

#ifdef DSV3_CUDA_EMULATION
using bf16 = ::dsv3::bf16_t;
using f16 = ::dsv3::f16_t;
DSV3_DEVICE float ld(bf16 x) { return bf16_to_f32(x.bits); }
DSV3_DEVICE float ld(f16 x) { return f16_to_f32(x.bits); }
DSV3_DEVICE uint16_t bits_of(bf16 x) { return x.bits; }
DSV3_DEVICE uint16_t bits_of(f16 x) { return x.bits; }
template <typename T>
DSV3_DEVICE T st(float v) {
  if constexpr (std::is_same_v<T, float>) return v;
  else return T(v);
}
template <typename T>
DSV3_DEVICE float half_bits_to_float(uint16_t h) {
  if constexpr (std::is_same_v<T, bf16>) return bf16_to_f32(h);
  else return f16_to_f32(h);
}
#else
using bf16 = __nv_bfloat16;
using f16 = __half;
DSV3_DEVICE float ld(bf16 x) { return __bfloat162float(x); }
DSV3_DEVICE float ld(f16 x) { return __half2float(x); }
DSV3_DEVICE uint16_t bits_of(bf16 x) { return __bfloat16_as_ushort(x); }
DSV3_DEVICE uint16_t bits_of(f16 x) { return __half_as_ushort(x); }
template <typename T>
DSV3_DEVICE T st(float v) {
  if constexpr (std::is_same_v<T, float>) return v;
  else if constexpr (std::is_same_v<T, bf16>) return __float2bfloat16_rn(v);
  else return __float2half_rn(v);
}
#endif
DSV3_DEVICE float ld(float x) { return x; }
DSV3_DEVICE int imin(int a, int b) { return a < b ? a : b; }
DSV3_DEVICE int imax(int a, int b) { return a > b ? a : b; }

template <typename T>
inline constexpr bool is_half_v = std::is_same_v<T, bf16> || std::is_same_v<T, f16>;

// Two rounded 16-bit values in one 32-bit word, `lo` in the low half (the element with the lower
// index, as the tensor-core fragments expect).
template <typename T>
DSV3_DEVICE uint32_t pack2(float lo, float hi) {
  return uint32_t(bits_of(st<T>(lo))) | (uint32_t(bits_of(st<T>(hi))) << 16);
}
// Two consecutive 16-bit elements (4-byte aligned) as one word.
DSV3_DEVICE uint32_t load_u32(const void* p) {
#ifdef DSV3_CUDA_EMULATION
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
#else
  return *static_cast<const uint32_t*>(p);
#endif
}
// Two 16-bit elements from anywhere (b, b+stride), packed: for operands stored the other way.
template <typename T>
DSV3_DEVICE uint32_t load_pair(const T* p, int stride) {
  return uint32_t(bits_of(p[0])) | (uint32_t(bits_of(p[stride])) << 16);
}

// D += A B on the tensor cores, one warp: A 16x16 (row), B 16x8 (col), fp32 accumulators, the
// PTX mma.sync.m16n8k16 fragment layout. With g = lane / 4, t = lane % 4:
//   a[0] = A[g][2t, 2t+1]    a[1] = A[g+8][2t, 2t+1]   a[2] = A[g][2t+8, +9]   a[3] = A[g+8][2t+8, +9]
//   b[0] = B[2t, 2t+1][g]    b[1] = B[2t+8, 2t+9][g]
//   c[0] = D[g][2t]  c[1] = D[g][2t+1]  c[2] = D[g+8][2t]  c[3] = D[g+8][2t+1]
template <typename T>
DSV3_DEVICE void mma_16816(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  static_assert(is_half_v<T>, "tensor-core fragments hold bf16 or f16");
#ifdef DSV3_CUDA_EMULATION
  struct Deposit {
    uint32_t a[4], b[2];
  } mine{{a[0], a[1], a[2], a[3]}, {b[0], b[1]}};
  const char* all = ::dsv3::emu::warp_exchange(&mine, sizeof mine);
  auto dep = [&](int lane) {
    Deposit d;
    std::memcpy(&d, all + size_t(lane) * ::dsv3::emu::kLaneSlot, sizeof d);
    return d;
  };
  auto half = [](uint32_t w, int k) { return uint16_t(k & 1 ? w >> 16 : w & 0xffffu); };
  auto A = [&](int row, int k) {
    const int lane = (row & 7) * 4 + ((k & 7) >> 1);
    return half_bits_to_float<T>(half(dep(lane).a[(row >> 3) + 2 * (k >> 3)], k));
  };
  auto B = [&](int k, int n) {
    const int lane = n * 4 + ((k & 7) >> 1);
    return half_bits_to_float<T>(half(dep(lane).b[k >> 3], k));
  };
  const int lane = int(::dsv3::emu::lane_id()), g = lane / 4, t = lane % 4;
  for (int i = 0; i < 4; i++) {
    const int row = g + 8 * (i >> 1), col = 2 * t + (i & 1);
    float s = 0;
    for (int k = 0; k < 16; k++) s += A(row, k) * B(k, col);
    c[i] += s;
  }
  ::dsv3::emu::syncwarp();
#else
  if constexpr (std::is_same_v<T, bf16>)
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

DSV3_DEVICE unsigned lane_of_thread() { return threadIdx.x & 31u; }

DSV3_DEVICE float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
DSV3_DEVICE double warp_sum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
DSV3_DEVICE float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over a 1-D block (blockDim.x a multiple of 32, at most 1024) in a fixed tree: every thread
// gets the same bits, run after run. `red` is 32 elements of shared memory; the call ends with a
// barrier, so `red` may be reused at once.
template <typename V>
DSV3_DEVICE V block_sum(V v, V* red) {
  const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  if (lane == 0) red[warp] = v;
  __syncthreads();
  V total = V(0);
  for (unsigned w = 0; w < warps; w++) total += red[w];  // same order in every thread
  __syncthreads();
  return total;
}
DSV3_DEVICE float block_max(float v, float* red) {
  const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_max(v);
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float m = red[0];
  for (unsigned w = 1; w < warps; w++) m = fmaxf(m, red[w]);
  __syncthreads();
  return m;
}

// Device-side input errors (an expert index out of range, offsets that decrease): the kernel
// that finds one records the first code in `err` (host-mapped memory on the GPU) and skips the
// bad element; the host reports it at the next synchronisation (backend/cuda/backend_cuda.cu).
enum class DeviceError : int {
  None = 0,
  ExpertIndexOutOfRange = 1,
  OffsetsInvalid = 2,
  TokenIdOutOfRange = 3,
};
DSV3_DEVICE void raise(int* err, DeviceError e) {
  if (err) atomicCAS(err, 0, int(e));
}

}  // namespace dsv3::cuda

// A small SIMT emulator that runs dsv3's CUDA kernels (src/ops/cuda/kernels/*.cuh) on the CPU,
// so that CI machines without a GPU still execute every kernel's index arithmetic, shared-memory
// staging, warp collectives, tensor-core fragment layouts and barriers against the CPU oracle.
//
// What it is: each CUDA thread of a block is a fiber (ucontext) with its own stack; the fibers of
// one block run cooperatively on the calling OS thread, in thread order, each until it reaches a
// barrier (__syncthreads, a warp collective) or returns; blocks run one after another. Dynamic
// shared memory is filled with 0xFF bytes (NaN in every float format) before each block, so a
// kernel that reads shared memory nobody wrote sees NaN; a barrier that some threads of a warp or
// block never reach is reported as a deadlock (an Error), not a hang.
//
// What it is not: a GPU. Memory is host memory, there is no memory model to get wrong, no timing,
// and mma.sync is computed in fp32 in k order (the tensor cores' internal order differs). Races
// that a cooperative in-order schedule happens to serialise correctly go unseen. Only kernels
// (and the run functions that launch them) are emulated: cuBLASLt, NCCL and the CUDA runtime are
// not, and docs/cuda.md lists each kernel as "verified on GPU: no" until a GPU has run it.
//
// Kernels reach this header through src/ops/cuda/device.cuh when DSV3_CUDA_EMULATION is defined;
// it supplies the few CUDA names the kernels use.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <utility>

namespace dsv3::emu {

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};

// The running fiber's coordinates.
const dim3& thread_idx();
const dim3& block_idx();
const dim3& block_dim();
const dim3& grid_dim();
char* dynamic_smem();

void syncthreads();
void syncwarp();
unsigned lane_id();
// Every lane of the warp deposits `bytes` (at most kLaneSlot) from `mine`; returns the 32
// deposits, lane-major and kLaneSlot bytes apart, valid until the next warp collective of this
// warp (callers that read them call syncwarp() before depositing again).
inline constexpr size_t kLaneSlot = 128;
const char* warp_exchange(const void* mine, size_t bytes);

// Runs kernel(args...) over the grid, one block at a time. Throws dsv3::Error on a deadlock or
// when the kernel throws.
void run_grid(dim3 grid, dim3 block, size_t smem, const std::function<void()>& body);

template <typename... P, typename... A>
void launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, A&&... args) {
  std::tuple<P...> bound(std::forward<A>(args)...);
  run_grid(grid, block, smem, [&] { std::apply(kernel, bound); });
}

// Statistics of the last run_grid (for tests of the emulator itself).
struct Stats {
  uint64_t blocks = 0, threads = 0, block_barriers = 0, warp_collectives = 0;
};
Stats last_stats();

// Lane `src`'s value of v (the common core of the __shfl*_sync family).
template <typename T>
T shfl_from(T v, unsigned src) {
  static_assert(sizeof(T) <= kLaneSlot);
  const char* all = warp_exchange(&v, sizeof(T));
  T r;
  std::memcpy(&r, all + size_t(src & 31u) * kLaneSlot, sizeof(T));
  syncwarp();  // nobody deposits again before every lane has read
  return r;
}
template <typename T>
T shfl(T v, int src) { return shfl_from(v, unsigned(src)); }
template <typename T>
T shfl_xor(T v, int mask) { return shfl_from(v, lane_id() ^ unsigned(mask)); }
template <typename T>
T shfl_down(T v, unsigned delta) {
  const unsigned lane = lane_id();
  return shfl_from(v, lane + delta < 32 ? lane + delta : lane);
}
template <typename T>
T shfl_up(T v, unsigned delta) {
  const unsigned lane = lane_id();
  return shfl_from(v, lane >= delta ? lane - delta : lane);
}
uint32_t ballot(bool pred);

// Atomics: fibers never interleave inside a call, so plain read-modify-write is atomic here.
template <typename T, typename U>
T atomic_add(T* p, U v) {
  T old = *p;
  *p = T(old + T(v));
  return old;
}
template <typename T>
T atomic_max(T* p, T v) {
  T old = *p;
  if (v > old) *p = v;
  return old;
}
template <typename T>
T atomic_cas(T* p, T cmp, T v) {
  T old = *p;
  if (old == cmp) *p = v;
  return old;
}

}  // namespace dsv3::emu

// The CUDA spellings the kernels use.
using dim3 = ::dsv3::emu::dim3;
#define threadIdx (::dsv3::emu::thread_idx())
#define blockIdx (::dsv3::emu::block_idx())
#define blockDim (::dsv3::emu::block_dim())
#define gridDim (::dsv3::emu::grid_dim())
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// Static shared arrays inside a kernel are function-local statics: one per kernel instantiation,
// shared by every fiber of the (single running) block.
#define __shared__ static
inline void __syncthreads() { ::dsv3::emu::syncthreads(); }
inline void __syncwarp(unsigned = 0xffffffffu) { ::dsv3::emu::syncwarp(); }
template <typename T>
inline T __shfl_sync(unsigned, T v, int src, int = 32) { return ::dsv3::emu::shfl(v, src); }
template <typename T>
inline T __shfl_xor_sync(unsigned, T v, int m, int = 32) { return ::dsv3::emu::shfl_xor(v, m); }
template <typename T>
inline T __shfl_down_sync(unsigned, T v, unsigned d, int = 32) { return ::dsv3::emu::shfl_down(v, d); }
template <typename T>
inline T __shfl_up_sync(unsigned, T v, unsigned d, int = 32) { return ::dsv3::emu::shfl_up(v, d); }
inline unsigned __ballot_sync(unsigned, bool p) { return ::dsv3::emu::ballot(p); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(unsigned x) { return __builtin_ffs(int(x)); }
template <typename T, typename U>
inline T atomicAdd(T* p, U v) { return ::dsv3::emu::atomic_add(p, v); }
template <typename T>
inline T atomicMax(T* p, T v) { return ::dsv3::emu::atomic_max(p, v); }
template <typename T>
inline T atomicCAS(T* p, T c, T v) { return ::dsv3::emu::atomic_cas(p, c, v); }

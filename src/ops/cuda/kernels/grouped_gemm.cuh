// Grouped expert GEMMs (ops/gemm.h grouped_linear_*): every expert of an MoE layer in ONE launch,
// reading the expert offsets on the device (no copy to the host, no launch per expert).
//
// Three problems, all row-major, rows of x / y / dy sorted by expert (offsets[e]..offsets[e+1]):
//   forward  y[r]  = x[r] W_e^T          M = rows of e, N = out, K = in    (grouped M)
//   dx       dx[r] (+)= dy[r] W_e        M = rows of e, N = in,  K = out   (grouped M)
//   dw       dW_e += dy_e^T x_e          M = out,       N = in,  K = rows of e (grouped K)
// A block computes one BM x BN tile of C, walking K in steps of BK through shared memory. Tiles
// of grouped-M problems come from a tile table (launch.h grouped_tile_prefix, one tiny kernel
// per call) so that no tile straddles two experts; grouped-K problems put the expert in
// blockIdx.z. Shared memory holds A as [m][k] and B as [n][k] (k contiguous) whatever the
// operands' layout in memory, so one inner loop serves all three.
// bf16/f16: tensor cores (mma.sync m16n8k16, fp32 accumulators), 4 warps of 32 x 32.
// f32: CUDA-core FMAs in fp32 (no TF32: the op harness holds f32 to fp32 rounding), 16 x 16
// threads of 4 x 4 outputs. Each output is written by one block in a fixed k order:
// deterministic.
#pragma once
#include "ops/cuda/device.cuh"
#include "ops/cuda/launch.h"

namespace dsv3::cuda {

// Tile sizes and shared memory: launch.h (kGemm*, grouped_gemm_smem).
template <typename T>
constexpr int gemm_threads() {
  return is_half_v<T> ? kGemmThreadsHalf : kGemmThreadsFloat;
}

struct GroupedGemmArgs {
  const void* A;
  const void* B;
  void* C;
  int lda, ldb, ldc;
  size_t b_stride, c_stride;  // elements between experts (grouped M: B only; grouped K: C only)
  int M, N, K;                // the fixed sizes (the grouped one comes from offsets)
  const int32_t* offsets;     // (E+1), device
  const int32_t* prefix;      // tile table (grouped M), device
  int E;
  bool accumulate;            // C += (else C =)
};

// Element (m, k) of an operand: k contiguous (k-major) or m contiguous.
template <bool kKMajor, typename T>
DSV3_DEVICE T operand_at(const T* p, int ld, int m, int k) {
  return kKMajor ? p[size_t(m) * ld + k] : p[size_t(k) * ld + m];
}

// Stages rows [0, rows) x k [k0, k1) of an operand into S[r][kk] (row stride ld_s), zero-filling
// past the edges. Consecutive threads walk the contiguous dimension, so global reads coalesce.
template <bool kKMajor, int kRows, typename T>
DSV3_DEVICE void stage(T* S, int ld_s, const T* p, int ld, int rows, int k0, int k1) {
  const int tid = int(threadIdx.x), nt = int(blockDim.x);
  for (int i = tid; i < kRows * kGemmBK; i += nt) {
    const int r = kKMajor ? i / kGemmBK : i % kRows, kk = kKMajor ? i % kGemmBK : i / kRows;
    const int k = k0 + kk;
    S[r * ld_s + kk] = r < rows && k < k1 ? operand_at<kKMajor>(p, ld, r, k) : st<T>(0.0f);
  }
}

// C tile store: overwrite or accumulate, one rounding into CT.
template <typename CT>
DSV3_DEVICE void store_c(CT* c, float v, bool accumulate) {
  *c = st<CT>(accumulate ? ld(*c) + v : v);
}

// Resolves the block's problem: rows [m_lo, m_hi) of A / C (grouped M) or the k range
// (grouped K), and the expert's B or C. Returns false when the block has no work.
template <bool kGroupedK, typename T, typename CT>
DSV3_DEVICE bool gemm_block_problem(const GroupedGemmArgs& a, const T*& A, const T*& B, CT*& C,
                                    int& m0, int& rows, int& n0, int& k0, int& k1) {
  n0 = int(blockIdx.y) * kGemmBN;
  if constexpr (kGroupedK) {
    const int e = int(blockIdx.z);
    k0 = a.offsets[e];
    k1 = a.offsets[e + 1];
    if (k1 <= k0) return false;  // C += 0
    m0 = int(blockIdx.x) * kGemmBM;
    rows = imin(kGemmBM, a.M - m0);
    A = static_cast<const T*>(a.A) + m0;  // A(m, k) = A[k * lda + m]
    B = static_cast<const T*>(a.B);       // B(k, n) = B[k * ldb + n]
    C = static_cast<CT*>(a.C) + size_t(e) * a.c_stride + size_t(m0) * a.ldc;
    return true;
  } else {
    const int t = int(blockIdx.x);
    const int e = grouped_tile_expert(a.prefix, a.E, t);
    if (e < 0) return false;
    m0 = a.offsets[e] + (t - a.prefix[e]) * kGemmBM;
    rows = imin(kGemmBM, a.offsets[e + 1] - m0);
    k0 = 0;
    k1 = a.K;
    A = static_cast<const T*>(a.A) + size_t(m0) * a.lda;
    B = static_cast<const T*>(a.B) + size_t(e) * a.b_stride;
    C = static_cast<CT*>(a.C) + size_t(m0) * a.ldc;
    return true;
  }
}

// kAK / kBK: whether A(m,k) / B^T(n,k) have k contiguous in memory.
template <typename T, typename CT, bool kAK, bool kBK, bool kGroupedK>
__global__ void __launch_bounds__(gemm_threads<T>())
    grouped_gemm_kernel(GroupedGemmArgs args) {
  DSV3_DYNAMIC_SMEM(smem);
  const T* A;
  const T* B;
  CT* C;
  int m0, rows, n0, k0, k1;
  if (!gemm_block_problem<kGroupedK>(args, A, B, C, m0, rows, n0, k0, k1)) return;
  const int cols = imin(kGemmBN, args.N - n0);
  const T* Bn = kBK ? B + size_t(n0) * args.ldb : B + n0;  // the block's first output column
  if constexpr (is_half_v<T>) {
    constexpr int ld_s = kGemmBK + kGemmPadHalf;
    T* As = reinterpret_cast<T*>(smem);
    T* Bs = As + kGemmBM * ld_s;
    const int warp = int(threadIdx.x >> 5), lane = int(threadIdx.x & 31u), g = lane >> 2, t = lane & 3;
    const int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;  // the warp's 32 x 32 of the tile
    float acc[2][4][4] = {};
    for (int kt = k0; kt < k1; kt += kGemmBK) {
      stage<kAK, kGemmBM>(As, ld_s, A, args.lda, rows, kt, k1);
      stage<kBK, kGemmBN>(Bs, ld_s, Bn, args.ldb, cols, kt, k1);
      __syncthreads();
      for (int ks = 0; ks < kGemmBK; ks += 16) {
        uint32_t af[2][4], bf[4][2];
        for (int i = 0; i < 2; i++) {
          const T* r0 = As + (wm + i * 16 + g) * ld_s + ks + 2 * t;
          af[i][0] = load_u32(r0);
          af[i][1] = load_u32(r0 + 8 * ld_s);
          af[i][2] = load_u32(r0 + 8);
          af[i][3] = load_u32(r0 + 8 * ld_s + 8);
        }
        for (int j = 0; j < 4; j++) {
          const T* c0 = Bs + (wn + j * 8 + g) * ld_s + ks + 2 * t;
          bf[j][0] = load_u32(c0);
          bf[j][1] = load_u32(c0 + 8);
        }
        for (int i = 0; i < 2; i++)
          for (int j = 0; j < 4; j++) mma_16816<T>(acc[i][j], af[i], bf[j]);
      }
      __syncthreads();
    }
    for (int i = 0; i < 2; i++)
      for (int j = 0; j < 4; j++)
        for (int q = 0; q < 4; q++) {
          const int r = wm + i * 16 + g + 8 * (q >> 1), c = wn + j * 8 + 2 * t + (q & 1);
          if (r < rows && c < cols) store_c(C + size_t(r) * args.ldc + n0 + c, acc[i][j][q], args.accumulate);
        }
  } else {
    constexpr int ld_s = kGemmBK + kGemmPadFloat;
    T* As = reinterpret_cast<T*>(smem);
    T* Bs = As + kGemmBM * ld_s;
    const int tx = int(threadIdx.x & 15u), ty = int(threadIdx.x >> 4);  // 16 x 16 threads
    float acc[4][4] = {};
    for (int kt = k0; kt < k1; kt += kGemmBK) {
      stage<kAK, kGemmBM>(As, ld_s, A, args.lda, rows, kt, k1);
      stage<kBK, kGemmBN>(Bs, ld_s, Bn, args.ldb, cols, kt, k1);
      __syncthreads();
      for (int kk = 0; kk < kGemmBK; kk++) {
        float a[4], b[4];
        for (int i = 0; i < 4; i++) a[i] = ld(As[(ty + 16 * i) * ld_s + kk]);
        for (int j = 0; j < 4; j++) b[j] = ld(Bs[(tx + 16 * j) * ld_s + kk]);
        for (int i = 0; i < 4; i++)
          for (int j = 0; j < 4; j++) acc[i][j] += a[i] * b[j];
      }
      __syncthreads();
    }
    for (int i = 0; i < 4; i++)
      for (int j = 0; j < 4; j++) {
        const int r = ty + 16 * i, c = tx + 16 * j;
        if (r < rows && c < cols) store_c(C + size_t(r) * args.ldc + n0 + c, acc[i][j], args.accumulate);
      }
  }
}

// prefix = the tile table of the offsets (an error is recorded and no tile runs when they are
// not a valid split of rows_cap rows).
template <typename = void>
__global__ void grouped_prefix_kernel(int32_t* prefix, const int32_t* offsets, int E, int bm,
                                      int64_t rows_cap, int* err) {
  if (threadIdx.x != 0) return;
  if (!grouped_tile_prefix(offsets, E, bm, rows_cap, prefix)) raise(err, DeviceError::OffsetsInvalid);
}

// Checks the offsets on the device (once per call) and returns the tile table in scratch.
template <typename L>
const int32_t* grouped_prefix_run(const L& launch, const int32_t* offsets, int E, size_t rows_cap) {
  int32_t* prefix = static_cast<int32_t*>(launch.scratch(size_t(E + 1) * sizeof(int32_t)));
  launch(grouped_prefix_kernel<>, dim3(1), dim3(32), 0, prefix, offsets, E, kGemmBM,
         int64_t(rows_cap), launch.error_flag());
  return prefix;
}

template <typename L, typename T, typename CT, bool kAK, bool kBK, bool kGroupedK>
void grouped_gemm_launch(const L& launch, const GroupedGemmArgs& a, size_t rows_cap) {
  const dim3 grid = kGroupedK ? dim3(unsigned(ceil_div(size_t(a.M), kGemmBM)),
                                     unsigned(ceil_div(size_t(a.N), kGemmBN)), unsigned(a.E))
                              : dim3(unsigned(grouped_tile_bound(rows_cap, a.E, kGemmBM)),
                                     unsigned(ceil_div(size_t(a.N), kGemmBN)));
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;
  launch(grouped_gemm_kernel<T, CT, kAK, kBK, kGroupedK>, grid, dim3(gemm_threads<T>()),
         grouped_gemm_smem(is_half_v<T>), a);
}

// y = x W_e^T per expert. x: (rows_cap, in), w: E weights (out, in) w_stride apart, y (rows, out).
template <typename L, typename T, typename YT>
void grouped_forward_run(const L& launch, YT* y, const T* x, const T* w, const int32_t* offsets,
                         int E, int in, int out, size_t w_stride, size_t rows_cap) {
  const int32_t* prefix = grouped_prefix_run(launch, offsets, E, rows_cap);
  const GroupedGemmArgs a{x, w, y, in, in, out, w_stride, 0, 0, out, in, offsets, prefix, E, false};
  grouped_gemm_launch<L, T, YT, true, true, false>(launch, a, rows_cap);
}

// dx (+)= dy W_e; dw_e += dy_e^T x_e (fp32). Either may be null.
template <typename L, typename T>
void grouped_backward_run(const L& launch, T* dx, float* dw, const T* dy, const T* x, const T* w,
                          const int32_t* offsets, int E, int in, int out, size_t w_stride,
                          size_t rows_cap, bool dx_accumulate) {
  if (dx) {
    const int32_t* prefix = grouped_prefix_run(launch, offsets, E, rows_cap);
    // A = dy (rows, out) k-major; B(k = o, n = j) = W_e[o][j]: n contiguous
    const GroupedGemmArgs a{dy, w, dx, out, in, in, w_stride, 0, 0, in, out, offsets, prefix, E,
                            dx_accumulate};
    grouped_gemm_launch<L, T, T, true, false, false>(launch, a, rows_cap);
  }
  if (dw) {
    // A(m = o, k = r) = dy[r][o]: m contiguous; B(k = r, n = j) = x[r][j]: n contiguous
    const GroupedGemmArgs a{dy, x, dw, out, in, in, 0, w_stride, out, in, 0, offsets, nullptr, E, true};
    grouped_gemm_launch<L, T, float, false, false, true>(launch, a, rows_cap);
  }
}

}  // namespace dsv3::cuda

// CPU GEMM for mixed precision: fp32 / bf16 / fp16 storage with fp32 accumulation, fp64 for the
// test oracle. Which library runs which dtype, and the measurements behind the choice, are in
// docs/gemm.md (re-run them with build/bench/bench_gemm):
//   F64   OpenBLAS dgemm (the oracle; speed irrelevant)
//   F32   oneDNN dnnl_sgemm (its JIT sgemm, no primitives): ~2x OpenBLAS sgemm on 2 threads
//   BF16  oneDNN matmul on AVX512-BF16 (vdpbf16ps), runtime-shaped: one primitive per
//         (trans flags, C dtype, beta, alpha, threads), so the expert GEMMs' changing row counts
//         create nothing; ~2x the fp32 rate
//         (CPUs without AVX-512, where oneDNN 2.6 has no bf16 matmul: widened like F16)
//   F16   widened to fp32 (exactly) in per-thread blocks, then dnnl_sgemm: this CPU has no fp16
//         arithmetic and oneDNN 2.6 has no f16 matmul without AVX512-FP16
// OpenBLAS and oneDNN both run on libgomp, the OpenMP runtime of the rest of dsv3: one pool.
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/dtype.h"

namespace dsv3::cpu {

// Row-major GEMM: C(M,N) = alpha * op(A)(M,K) * op(B)(K,N) + beta * C, op(X) = X or X^T,
// lda/ldb/ldc = row strides in elements. ab: dtype of A and B (F64, F32, BF16, F16); c: dtype of C,
// either F32 or ab (F64 inputs need F64 C). Accumulation in fp32 (fp64 for F64). beta is 0 (overwrite)
// or 1 (accumulate into C, including a bf16/f16 C). M, N or K may be 0 (K == 0 with beta 0 zeroes C).
// Thread-safe; called inside an OpenMP parallel region it runs single-threaded on the calling thread.
void gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const void* A, int lda,
          const void* B, int ldb, float beta, void* C, int ldc, DType ab, DType c);

// A batch of independent GEMMs sharing trans flags, alpha, beta and dtypes (e.g. one per MoE expert
// over its contiguous rows; the varying size is M for forward/input-gradient and K for the weight
// gradient). Every C is written by exactly one call, so results do not depend on thread count.
struct GemmCall { int M, N, K; const void* A; int lda; const void* B; int ldb; void* C; int ldc; };
void gemm_batch(bool trans_a, bool trans_b, float alpha, float beta, const GemmCall* calls, int count,
                DType ab, DType c);

// Whether dtype ab runs on 16-bit (or fp32) hardware arithmetic here rather than being widened to
// fp32 first (bf16 without AVX-512, fp16 without AVX512-FP16): widened 16-bit GEMMs save memory
// but run at the fp32 rate or slower, which a run's banner says.
bool gemm_native(DType ab);

// Sustained GEMM throughput of this machine for dtype ab (square n^3, all threads), measured robustly
// (warm-up, enough repetitions for >= ~0.5 s of work, report a high percentile / best of several), in GFLOP/s.
double measure_gemm_peak_gflops(DType ab);

// ---- Internals: the alternatives gemm() chooses between, exposed for bench_gemm and the tests.

enum class GemmEngine : uint8_t {
  Auto,         // the per-dtype choice above
  Blas,         // OpenBLAS sgemm/dgemm; bf16/f16 widened to fp32 in blocks, then sgemm
  Dnnl,         // oneDNN matmul primitive for the exact shape, from the bounded cache below
  DnnlRuntime,  // oneDNN matmul with runtime M, N, K and strides: one primitive per flags/dtypes
  DnnlGemmApi,  // dnnl_sgemm, oneDNN's BLAS-like call (no primitives); bf16/f16 widened first
};
const char* gemm_engine_name(GemmEngine e);
// Whether engine e can run (ab, c) at all (oneDNN: no F64; no F16 on CPUs without AVX512-FP16).
bool gemm_engine_supports(GemmEngine e, DType ab, DType c);
void gemm_on(GemmEngine e, bool trans_a, bool trans_b, int M, int N, int K, float alpha,
             const void* A, int lda, const void* B, int ldb, float beta, void* C, int ldc, DType ab,
             DType c);

// How gemm_batch spreads its calls: Parallel runs calls concurrently, one OpenMP thread each (each
// GEMM single-threaded); Sequential runs them one after another, each on all threads. Auto is
// Parallel (measured faster for expert batches, and thread-count independent by construction).
enum class BatchMode : uint8_t { Auto, Parallel, Sequential };
void gemm_batch_on(GemmEngine e, BatchMode mode, bool trans_a, bool trans_b, float alpha,
                   float beta, const GemmCall* calls, int count, DType ab, DType c);

// The oneDNN primitive cache (Dnnl and DnnlRuntime): least-recently-used, at most `capacity`
// entries (512 by default). A primitive costs ~0.2-0.4 ms to create and ~20-90 KB of JIT code and
// descriptors. Auto only creates runtime-shaped ones, a handful per process.
struct GemmCacheStats {
  size_t entries = 0, capacity = 0;
  uint64_t hits = 0, misses = 0, evictions = 0;
};
GemmCacheStats gemm_cache_stats();
void gemm_cache_reset(size_t capacity);  // drops every primitive, zeroes the counters

}  // namespace dsv3::cpu

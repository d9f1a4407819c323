// Launch shapes and tile choices of the CUDA kernels, in one place (DeepGEMM keeps its heuristics
// apart from its kernels the same way). Plain C++: the launchers (src/ops/cuda/*.cu), the CPU
// emulation of the kernels and the unit tests (tests/cpp/test_cuda_host.cpp) all call these, so
// the shapes the tests check are the shapes the GPU gets.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace dsv3::cuda {

constexpr size_t ceil_div(size_t a, size_t b) { return (a + b - 1) / b; }

// Shared memory one block may use on sm_90 after cudaFuncSetAttribute (227 KB); blocks that
// need more than the default 48 KB raise their limit first.
constexpr size_t kMaxSmemPerBlock = 227 * 1024;
constexpr size_t kDefaultSmem = 48 * 1024;

// ---- elementwise and row kernels -------------------------------------------------------------

struct Launch1D {
  unsigned grid, block;
};
// Grid-stride loops: 256 threads, at most 132 SMs x 16 blocks (more only adds tail blocks).
inline Launch1D plan_elementwise(size_t n) {
  const size_t blocks = std::max<size_t>(1, ceil_div(n, 256));
  return {unsigned(std::min<size_t>(blocks, 132 * 16)), 256};
}
// One block per row of `width` elements: about 8 elements per thread, 32..1024 threads.
inline unsigned row_threads(size_t width) {
  const size_t t = ceil_div(std::max<size_t>(width, 1), 8);
  return unsigned(std::min<size_t>(1024, ceil_div(t, 32) * 32));
}

// ---- reductions over rows in a fixed order (RMSNorm's dw, the embedding gradient) -------------

// Column partial sums of an (N, C) reduction: `chunks` blocks of consecutive rows each write one
// partial row, summed in chunk order afterwards. A function of N alone, so the bits do not depend
// on the GPU model.
inline int reduction_chunks(int N) { return std::max(1, std::min(N, 64)); }

// ---- attention -------------------------------------------------------------------------------

constexpr int kAttnTcRows = 64;      // tensor core: query rows per block = keys per tile
constexpr int kAttnTcThreads = 128;  // 4 warps of 16 rows
constexpr int kAttnPad = 8;          // bf16/f16 shared-memory row padding (conflict-free loads)
constexpr int kAttnGenRows = 8;      // generic: rows per block, one warp each
constexpr int kAttnGenTile = 32;     // generic: rows of the other side per shared-memory tile
constexpr int kAttnGenMaxLane = 16;  // generic: columns per lane, so head widths <= 512

// Flash attention (no T x T matrix in memory; the log-sum-exp per row is saved for backward).
// Tensor-core kernels for bf16/f16 when the head widths fit (each padded to a multiple of 16 in
// shared memory); the generic kernel (fp32 CUDA cores, one warp per query row) for f32, for wider
// heads, or when DSV3_CUDA_ATTENTION=generic asks for it (a cross-check on a GPU).
struct AttentionPlan {
  enum Kind : uint8_t { Generic, TensorCore } kind = Generic;
  int dqk_pad = 0, dv_pad = 0;  // compile-time widths of the tensor-core kernel (64/128/192/256)
  int bm = 0, bn = 0;           // query rows / keys per tile (tensor core); rows per block (generic)
  int threads = 0;
  size_t smem_fwd = 0, smem_dq = 0, smem_dkdv = 0;  // dynamic shared memory per kernel
};
// The instantiated tensor-core widths: the smallest of {64, 128, 192, 256} >= d.
int attention_pad(int d);
AttentionPlan plan_attention(int dqk, int dv, bool half_dtype, bool force_generic);
// Dynamic shared memory of each kernel (bytes): tensor core for padded widths, generic for the
// real ones. which: 0 forward, 1 dq, 2 dk/dv.
size_t attention_tc_smem(int dqk_pad, int dv_pad, int which);
size_t attention_generic_smem(int dqk, int dv, int which);

// ---- GEMM tiles (grouped expert GEMMs) -------------------------------------------------------

// One block computes a kGemmBM x kGemmBN tile of C with k steps of kGemmBK through shared memory
// (A as [m][k], B as [n][k]): 4 warps of tensor cores for bf16/f16, 16 x 16 threads of 4 x 4
// fp32 outputs for f32.
constexpr int kGemmBM = 64, kGemmBN = 64, kGemmBK = 32;
constexpr int kGemmPadHalf = 8;   // bf16/f16 row padding: conflict-free fragment loads
constexpr int kGemmPadFloat = 1;  // fp32 row padding
constexpr int kGemmThreadsHalf = 128, kGemmThreadsFloat = 256;
inline size_t grouped_gemm_smem(bool half_dtype) {
  return size_t(kGemmBM + kGemmBN) *
         (kGemmBK + (half_dtype ? kGemmPadHalf : kGemmPadFloat)) * (half_dtype ? 2 : 4);
}

// The tile grid of a grouped GEMM whose rows (M) are split by expert: the tiles of expert e are
// prefix[e] .. prefix[e+1]-1, each covering bm of its rows. prefix has E+1 entries. Returns false
// when the offsets are not a valid split of at most `rows_cap` rows (decreasing, or too many).
// Written for both sides: the device computes it in a one-block kernel, the tests on the host.
#if defined(__CUDACC__) || defined(DSV3_CUDA_EMULATION)
#define DSV3_HD __host__ __device__
#else
#define DSV3_HD
#endif
DSV3_HD inline bool grouped_tile_prefix(const int32_t* offsets, int E, int bm, int64_t rows_cap,
                                        int32_t* prefix) {
  bool ok = offsets[0] == 0;
  prefix[0] = 0;
  for (int e = 0; e < E; e++) {
    const int32_t rows = offsets[e + 1] - offsets[e];
    ok = ok && rows >= 0;
    prefix[e + 1] = prefix[e] + (rows > 0 ? (rows + bm - 1) / bm : 0);
  }
  ok = ok && int64_t(offsets[E]) <= rows_cap;
  if (!ok)
    for (int e = 0; e <= E; e++) prefix[e] = 0;  // no tile runs on invalid offsets
  return ok;
}
// Which expert tile t belongs to: the e with prefix[e] <= t < prefix[e+1] (binary search over
// experts, skipping experts without rows); -1 when t is past the last tile.
DSV3_HD inline int grouped_tile_expert(const int32_t* prefix, int E, int t) {
  if (t >= prefix[E]) return -1;
  int lo = 0, hi = E - 1;  // invariant: the answer is in [lo, hi]
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (prefix[mid] <= t) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}
// Upper bound of the tiles any split of `rows` rows over E experts needs (the launch's grid).
inline size_t grouped_tile_bound(size_t rows, int E, int bm) { return ceil_div(rows, bm) + E; }

// ---- MoE permutation -------------------------------------------------------------------------

// Slots are assigned in chunks of this many (token, expert) pairs; a pair's rank inside its chunk
// is counted in shared memory, the chunk's base per expert comes from a scan over chunks.
constexpr int kPermChunk = 256;

// ---- optimizer -------------------------------------------------------------------------------

// AdamW and the sum of squares walk the parameter spans in blocks: AdamW in blocks of kAdamBlock
// elements (one CUDA block each), the norm in kSumBlock blocks as on the CPU, summed in double in
// a fixed tree and then in block order.
constexpr size_t kAdamBlock = 16384;
constexpr size_t kSumBlock = 8192;

struct SpanBlock {
  uint64_t offset;
  uint32_t numel;
  uint32_t decay;  // 1: decoupled weight decay applies
};
// The blocks of at most `block` elements of each (offset, numel, decay) span, in order.
template <typename Span>
std::vector<SpanBlock> span_blocks(std::span<const Span> spans, size_t block) {
  std::vector<SpanBlock> out;
  for (const Span& s : spans)
    for (size_t i = 0; i < s.numel; i += block)
      out.push_back({uint64_t(s.offset + i), uint32_t(std::min(block, s.numel - i)), s.decay ? 1u : 0u});
  return out;
}

}  // namespace dsv3::cuda

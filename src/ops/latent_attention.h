// MLA's inference path (M2, I1) as DeepSeek-V3 runs it: the cache holds, per token and layer,
// only the normalised latent c = rmsnorm(c_kv) (kv_lora) and the rotated shared key k_pe (rope):
// one row [c | k_pe] of W = kv_lora + rope values. W_UK is absorbed into the query and W_UV is
// applied after attention (model code does both with GEMMs), so every head attends over the same
// rows, multi-query style:
//   q_abs[h] = [q_nope[h] W_UK[h] | q_pe[h]]            (W wide)
//   s[h, t]  = scale * q_abs[h] . row[t]                = scale * (q_nope.k_nope + q_pe.k_pe)
//   o_lat[h] = sum_t softmax(s[h])_t c[t]               (kv_lora wide; o[h] = o_lat[h] W_UV[h]^T)
// The cache is paged: a layer's cache is (pages * page, W) rows; a sequence owns a list of pages
// (page table), token t of it lives in row page_table[t / page] * page + t % page.
// Forward only (no training path reads the cache). CPU kernels are templates over the storage
// type (f32, bf16, f16 and the f64 oracle) computing in the accumulation dtype; scores and the
// softmax are fp32 (fp64), P is rounded to T as the operand of the P c GEMM, o_lat accumulates in
// fp32 and is rounded once.
#pragma once
#include <cstdint>

#include "backend/backend.h"

namespace dsv3 {

// The rows a step attends from, per sequence s (host or device i32 (S, 4)):
//   row0  first row of the step's queries (the step's rows of all sequences are concatenated)
//   rows  queries of this sequence in the step (its new tokens, positions pos0 .. pos0+rows-1)
//   pos0  tokens cached before the step; query i sees cache positions 0 .. pos0 + i (causal; the
//         step's own keys must already be written)
//   page0 where its pages start in the page table
struct LatentSeq {
  int32_t row0, rows, pos0, page0;
};

struct LatentAttentionShape {
  int S;        // sequences
  int R;        // query rows (sum of rows)
  int H;        // heads
  int kv_lora;  // latent width (the values)
  int rope;     // rotary key width
  int page;     // tokens per page
  double scale; // softmax scale (qk_head^-0.5 times the YaRN multiplier)
  int W() const { return kv_lora + rope; }
};

namespace cpu {
// out (R, H, kv_lora) overwritten; q (R, H, W); cache (pages*page, W); seqs (S); page_table.
template <typename T>
void latent_attention_forward(T* out, const T* q, const T* cache, const LatentSeq* seqs,
                              const int32_t* page_table, LatentAttentionShape s);
}  // namespace cpu

// seqs: i32 (S*4) laid out as LatentSeq; page_table: i32; cache: one layer's pages.
void latent_attention_forward(const Exec& ex, const Tensor& out, const Tensor& q,
                              const Tensor& cache, const Tensor& seqs, const Tensor& page_table,
                              LatentAttentionShape s);

// cache row slots[r] = rows[r] (W wide) for r < R: the step's new [c | k_pe] rows into their pages.
void latent_cache_write(const Exec& ex, const Tensor& cache, const Tensor& rows,
                        const Tensor& slots, int R, int W);

// Moves per-head slices between token-major and head-major layouts (the per-head GEMMs of the
// absorbed projections take each head's rows contiguous):
//   dst[b][a][dst_off .. dst_off+D) = src[a][b][src_off .. src_off+D)   for a < A, b < B
// where a src row [a][b] is src_width wide and a dst row [b][a] dst_width wide. A = 1 is a
// strided copy of B rows.
struct SwapAxesShape {
  int A, B, D;
  int src_width, src_off;
  int dst_width, dst_off;
};
void swap_axes(const Exec& ex, const Tensor& dst, const Tensor& src, SwapAxesShape s);

}  // namespace dsv3

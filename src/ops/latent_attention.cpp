// Absorbed-MLA attention over the paged latent cache (ops/latent_attention.h).
//
// One work item is a block of a sequence's queries: its m queries times H heads are m*H
// consecutive rows of q (heads share the keys), so the scores are one GEMM per page,
// (m*H, W) x (page, W)^T, and the output one GEMM per page, P (m*H, page) x c (page, kv_lora),
// accumulated in fp32. A decode step (m = 1) is a GEMM of H rows per page; a prefill chunk
// covers blocks of kItemRows rows. Items run in parallel (single-threaded GEMMs), each in a fixed
// order, so results do not depend on the thread count; with one item (batch-1 decode) the GEMMs
// get every thread.
// Without it GCC keeps the clamps of exp_nonpos as branches and the softmax loops scalar (see
// swiglu.cpp); no value depends on FP flags here.
#pragma GCC optimize("no-trapping-math")
#include "ops/latent_attention.h"

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "core/profile.h"
#include "ops/dispatch.h"
#include "ops/fast_math.h"
#include "ops/gemm_cpu.h"

namespace dsv3 {
namespace cpu {

constexpr int kItemRows = 64;  // query rows (queries x heads) per work item, as attention's blocks

namespace {
template <typename A>
A* scratch(size_t n, int which) {  // per-thread, grows only
  thread_local std::vector<A> buf[3];
  if (buf[which].size() < n) buf[which].resize(n);
  return buf[which].data();
}
struct Item {
  int seq, i0, i1;  // queries [i0, i1) of sequence seq
};
}  // namespace

template <typename T>
void latent_attention_forward(T* out, const T* q, const T* cache, const LatentSeq* seqs,
                              const int32_t* page_table, LatentAttentionShape s) {
  using A = accum_t<T>;
  constexpr bool kSame = std::is_same_v<T, A>;
  constexpr DType t = dtype_of<T>(), at = dtype_of<A>();
  const int H = s.H, W = s.W(), KV = s.kv_lora, page = s.page;
  const int per_item = std::max(1, kItemRows / H);
  std::vector<Item> items;
  for (int b = 0; b < s.S; b++)
    for (int i0 = 0; i0 < seqs[b].rows; i0 += per_item)
      items.push_back({b, i0, std::min(seqs[b].rows, i0 + per_item)});
  const A scale = A(s.scale);
#pragma omp parallel for schedule(dynamic, 1) if (items.size() > 1)
  for (size_t it = 0; it < items.size(); it++) {
    const Item& item = items[it];
    const LatentSeq& sq = seqs[item.seq];
    const int M = (item.i1 - item.i0) * H;
    const int L = sq.pos0 + item.i1;  // keys seen by the block's last query
    const int32_t* pages = page_table + sq.page0;
    const T* Q = q + size_t(sq.row0 + item.i0) * H * W;
    A* S = scratch<A>(size_t(M) * L, 0);
    for (int p0 = 0; p0 < L; p0 += page) {
      const int nk = std::min(page, L - p0);
      const T* K = cache + size_t(pages[p0 / page]) * page * W;
      gemm(false, true, M, nk, W, 1.0f, Q, W, K, W, 0.0f, S + p0, L, t, at);
    }
    T* P = kSame ? reinterpret_cast<T*>(S) : scratch<T>(size_t(M) * L, 1);
    for (int r = 0; r < M; r++) {
      A* row = S + size_t(r) * L;
      const int last = sq.pos0 + item.i0 + r / H;  // causal: keys 0..last
      A mx = row[0] * scale;
      for (int j = 0; j <= last; j++) mx = std::max(mx, row[j] * scale);
      A sum = 0;
      for (int j = 0; j <= last; j++) {
        const A e = exp_nonpos(row[j] * scale - mx);
        row[j] = e;
        sum += e;
      }
      const A inv = A(1) / sum;
      T* pr = P + size_t(r) * L;
      for (int j = 0; j <= last; j++) pr[j] = store<T>(row[j] * inv);
      for (int j = last + 1; j < L; j++) pr[j] = T(0.0f);
    }
    T* O = out + size_t(sq.row0 + item.i0) * H * KV;  // (M, kv_lora) rows of out
    A* acc = kSame ? reinterpret_cast<A*>(O) : scratch<A>(size_t(M) * KV, 2);
    for (int p0 = 0; p0 < L; p0 += page) {
      const int nk = std::min(page, L - p0);
      const T* V = cache + size_t(pages[p0 / page]) * page * W;  // the latent: first kv_lora of W
      gemm(false, false, M, KV, nk, 1.0f, P + p0, L, V, W, p0 > 0 ? 1.0f : 0.0f, acc, KV, t, at);
    }
    if constexpr (!kSame)
      for (size_t i = 0; i < size_t(M) * KV; i++) O[i] = store<T>(acc[i]);
  }
}

#define DSV3_LATENT_INSTANTIATE(T)                                                             \
  template void latent_attention_forward<T>(T*, const T*, const T*, const LatentSeq*,          \
                                            const int32_t*, LatentAttentionShape);
DSV3_LATENT_INSTANTIATE(float)
DSV3_LATENT_INSTANTIATE(double)
DSV3_LATENT_INSTANTIATE(bf16_t)
DSV3_LATENT_INSTANTIATE(f16_t)

}  // namespace cpu

void latent_attention_forward(const Exec& ex, const Tensor& out, const Tensor& q,
                              const Tensor& cache, const Tensor& seqs, const Tensor& page_table,
                              LatentAttentionShape s) {
  require_cpu_kernel(ex, "latent_attention_forward");
  const char* op = "latent_attention_forward";
  check_device(ex, op, {{"out", out}, {"q", q}, {"cache", cache}, {"seqs", seqs},
                        {"page_table", page_table}});
  const int W = s.W();
  DSV3_CHECK(s.S >= 0 && s.R >= 0 && s.H > 0 && s.kv_lora > 0 && s.rope >= 0 && s.page > 0, op,
             ": bad shape (internal error)");
  check_arg(op, "q", q, q.dtype, size_t(s.R) * s.H * W);
  check_arg(op, "out", out, q.dtype, size_t(s.R) * s.H * s.kv_lora);
  check_arg(op, "cache", cache, q.dtype, 0);
  check_arg(op, "seqs", seqs, DType::I32, size_t(s.S) * 4);
  check_arg(op, "page_table", page_table, DType::I32, 0);
  if (ex.device != Device::CPU) no_kernel(ex, op);
  // The sequences' rows tile [0, R) in order and every page they read exists.
  const LatentSeq* sq = static_cast<const LatentSeq*>(seqs.data);
  const int32_t* pt = page_table.as<int32_t>();
  const size_t cache_pages = cache.numel / (size_t(s.page) * W);
  int row = 0;
  double flops = 0;
  for (int b = 0; b < s.S; b++) {
    const LatentSeq& x = sq[b];
    DSV3_CHECK(x.row0 == row && x.rows >= 0 && x.pos0 >= 0 && x.page0 >= 0, op, ": sequence ", b,
               " rows/positions inconsistent (internal error)");
    row += x.rows;
    const int L = x.pos0 + x.rows;
    const size_t npages = (size_t(L) + s.page - 1) / s.page;
    DSV3_CHECK(size_t(x.page0) + npages <= page_table.numel, op, ": sequence ", b,
               " page table outside its tensor (internal error)");
    for (size_t p = 0; p < npages; p++)
      DSV3_CHECK(pt[x.page0 + p] >= 0 && size_t(pt[x.page0 + p]) < cache_pages, op, ": sequence ",
                 b, " page ", pt[x.page0 + p], " outside the cache's ", cache_pages,
                 " (internal error)");
    flops += 2.0 * x.rows * s.H * double(L) * (W + s.kv_lora);
  }
  DSV3_CHECK(row == s.R, op, ": sequences cover ", row, " rows, the step has ", s.R,
             " (internal error)");
  profile::Scope prof(op, flops);
  dispatch_float(q.dtype, op, [&]<typename T>() {
    cpu::latent_attention_forward<T>(out.as<T>(), q.as<T>(), cache.as<T>(), sq, pt, s);
  });
}

void latent_cache_write(const Exec& ex, const Tensor& cache, const Tensor& rows,
                        const Tensor& slots, int R, int W) {
  require_cpu_kernel(ex, "latent_cache_write");
  const char* op = "latent_cache_write";
  profile::Scope prof(op);
  check_device(ex, op, {{"cache", cache}, {"rows", rows}, {"slots", slots}});
  check_arg(op, "rows", rows, cache.dtype, size_t(R) * W);
  check_arg(op, "slots", slots, DType::I32, size_t(R));
  if (ex.device != Device::CPU) no_kernel(ex, op);
  const int32_t* sl = slots.as<int32_t>();
  const size_t n_slots = cache.numel / std::max(W, 1), es = dtype_size(cache.dtype);
  for (int r = 0; r < R; r++) {
    DSV3_CHECK(sl[r] >= 0 && size_t(sl[r]) < n_slots, op, ": slot ", sl[r], " outside the cache's ",
               n_slots, " rows (internal error)");
    std::memcpy(static_cast<char*>(cache.data) + size_t(sl[r]) * W * es,
                static_cast<const char*>(rows.data) + size_t(r) * W * es, size_t(W) * es);
  }
}

void swap_axes(const Exec& ex, const Tensor& dst, const Tensor& src, SwapAxesShape s) {
  require_cpu_kernel(ex, "swap_axes");
  const char* op = "swap_axes";
  profile::Scope prof(op);
  check_device(ex, op, {{"dst", dst}, {"src", src}});
  DSV3_CHECK(s.A >= 0 && s.B >= 0 && s.D >= 0 && s.src_off + s.D <= s.src_width &&
                 s.dst_off + s.D <= s.dst_width,
             op, ": bad shape (internal error)");
  check_arg(op, "src", src, src.dtype, size_t(s.A) * s.B * s.src_width);
  check_arg(op, "dst", dst, src.dtype, size_t(s.A) * s.B * s.dst_width);
  if (ex.device != Device::CPU) no_kernel(ex, op);
  const size_t es = dtype_size(src.dtype), n = size_t(s.D) * es;
  const char* in = static_cast<const char*>(src.data);
  char* o = static_cast<char*>(dst.data);
#pragma omp parallel for schedule(static) if (size_t(s.A) * s.B * s.D > (1u << 16))
  for (int b = 0; b < s.B; b++)
    for (int a = 0; a < s.A; a++)
      std::memcpy(o + ((size_t(b) * s.A + a) * s.dst_width + s.dst_off) * es,
                  in + ((size_t(a) * s.B + b) * s.src_width + s.src_off) * es, n);
}

}  // namespace dsv3

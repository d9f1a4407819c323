// The latent KV cache of MLA's inference path (M2, I1): per token and cached layer one row
// [rmsnorm(c_kv) (kv_lora) | rotated k_pe (qk_rope)] in the compute dtype, nothing per head.
// Memory is one buffer of fixed-size pages (vLLM's paged layout), shared by every sequence:
// a sequence holds a list of page ids, the same ids in every layer, and grows a page at a time,
// so sequences of any length share one budget without fragmentation.
//
// Budget accounting is by reservation: a sequence reserves the pages for the most tokens it can
// reach (prompt + max_tokens) when it is admitted, so a running sequence never runs out of cache
// and admission is the only place that waits (ops/latent_attention.h reads the pages).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "backend/backend.h"
#include "model/config.h"

namespace dsv3 {

// One sequence's view of the cache.
struct SeqCache {
  std::vector<int32_t> pages;  // page ids, in token order
  int borrowed = 0;            // leading pages shared with the sequence it was forked from
  int length = 0;              // tokens cached (the main model's layers)
  int mtp_length = 0;          // positions cached in the MTP module's layer (speculative decoding)
  int reserved = 0;            // pages reserved for it (allocated or not), its own only
};

class KvCache {
 public:
  // layers: cached layers (the main model's, then the MTP modules' that speculative decoding
  // runs); pages of page_tokens tokens each.
  KvCache(const ModelConfig& c, DType t, Device d, int layers, int pages, int page_tokens);
  KvCache(const KvCache&) = delete;
  KvCache& operator=(const KvCache&) = delete;

  // Pages that fit in `bytes` for this model (at least 1 when bytes >= one page).
  static int pages_for_bytes(const ModelConfig& c, DType t, int layers, int page_tokens,
                             size_t bytes);
  // Bytes per token over `layers` layers: the latent cache, and a plain multi-head cache of the
  // same model (K with qk_nope + qk_rope and V with v_head per head), for the MLA saving.
  static size_t latent_bytes_per_token(const ModelConfig& c, DType t, int layers);
  static size_t mha_bytes_per_token(const ModelConfig& c, DType t, int layers);

  int width() const { return width_; }
  int page_tokens() const { return page_; }
  int pages() const { return pages_; }
  int layers() const { return layers_; }
  int pages_free() const { return int(free_.size()); }  // not allocated to any sequence
  int pages_unreserved() const { return pages_ - reserved_; }
  size_t bytes() const { return data_.view().bytes(); }
  int pages_for_tokens(int tokens) const { return (tokens + page_ - 1) / page_; }

  // Layer l's rows: (pages * page_tokens, width).
  Tensor layer(int l) const;

  // Makes s's reservation cover `tokens` tokens in all: false, changing nothing, when the
  // budget cannot cover them now.
  bool reserve(SeqCache& s, int tokens);
  // Allocates pages so that s can hold `tokens` tokens (within its reservation).
  void ensure(SeqCache& s, int tokens);
  // Starts the empty `child` as a copy of parent's parent.length cached tokens without
  // recomputing them (prefix sharing: the choices of one context in eval/loglik.h): it borrows
  // parent's full pages and gets its own copy of the partial last page, every layer. Reserves
  // child's own pages for `tokens` tokens in all; false, changing nothing, when the budget
  // cannot cover them now. Borrowed pages are full, so neither side ever writes them again;
  // parent may grow, but not be released while a child borrows from it (checked).
  bool fork(const SeqCache& parent, SeqCache& child, int tokens);
  // Returns every page and reservation of s (its borrowed pages go back to their lender's
  // account); s is empty afterwards.
  void release(SeqCache& s);
  // Cache row (slot) of token position pos of s.
  int32_t slot(const SeqCache& s, int pos) const {
    return pages_ids(s, pos) * page_ + pos % page_;
  }

 private:
  int32_t pages_ids(const SeqCache& s, int pos) const { return s.pages[size_t(pos / page_)]; }
  int width_, page_, pages_, layers_;
  int reserved_ = 0;
  std::vector<int32_t> free_;  // free page ids (a stack: recently freed pages are reused first)
  std::vector<int32_t> borrowers_;  // per page: forked sequences borrowing it
  Buffer data_;                // (layers, pages, page_tokens, width)
};

}  // namespace dsv3

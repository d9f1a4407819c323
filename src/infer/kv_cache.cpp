#include "infer/kv_cache.h"

#include <algorithm>

#include "core/check.h"

namespace dsv3 {

KvCache::KvCache(const ModelConfig& c, DType t, Device d, int layers, int pages, int page_tokens)
    : width_(c.kv_lora + c.qk_rope), page_(page_tokens), pages_(pages), layers_(layers) {
  DSV3_CHECK(page_tokens >= 1, "kv cache pages must hold at least one token");
  DSV3_CHECK(pages >= 1, "the kv cache budget holds no page of ", page_tokens, " tokens (",
             latent_bytes_per_token(c, t, layers) * page_tokens, " bytes); raise --kv_cache_mb");
  DSV3_CHECK(layers >= 1, "kv cache without layers (internal error)");
  data_ = Buffer(d, t, size_t(layers) * pages * page_tokens * width_);
  free_.resize(size_t(pages));
  borrowers_.assign(size_t(pages), 0);
  for (int i = 0; i < pages; i++) free_[size_t(i)] = pages - 1 - i;  // page 0 on top
}

int KvCache::pages_for_bytes(const ModelConfig& c, DType t, int layers, int page_tokens,
                             size_t bytes) {
  const size_t per_page = latent_bytes_per_token(c, t, layers) * size_t(page_tokens);
  return int(std::min<size_t>(bytes / per_page, size_t(1) << 30));
}

size_t KvCache::latent_bytes_per_token(const ModelConfig& c, DType t, int layers) {
  return size_t(layers) * (c.kv_lora + c.qk_rope) * dtype_size(t);
}

size_t KvCache::mha_bytes_per_token(const ModelConfig& c, DType t, int layers) {
  return size_t(layers) * c.heads * (c.qk_head() + c.v_head) * dtype_size(t);
}

Tensor KvCache::layer(int l) const {
  DSV3_CHECK(l >= 0 && l < layers_, "kv cache layer ", l, " of ", layers_, " (internal error)");
  const size_t n = size_t(pages_) * page_ * width_;
  return data_.view().slice(size_t(l) * n, n);
}

bool KvCache::reserve(SeqCache& s, int tokens) {
  const int extra = pages_for_tokens(tokens) - s.borrowed - s.reserved;
  if (extra <= 0) return true;
  if (extra > pages_unreserved()) return false;
  s.reserved += extra;
  reserved_ += extra;
  return true;
}

void KvCache::ensure(SeqCache& s, int tokens) {
  const size_t need = size_t(pages_for_tokens(tokens));
  DSV3_CHECK(int(need) <= s.borrowed + s.reserved, "sequence needs ", need, " cache pages, has ",
             s.borrowed, " borrowed and ", s.reserved, " reserved (internal error)");
  while (s.pages.size() < need) {
    DSV3_CHECK(!free_.empty(), "kv cache out of pages despite reservations (internal error)");
    s.pages.push_back(free_.back());
    free_.pop_back();
  }
}

bool KvCache::fork(const SeqCache& parent, SeqCache& child, int tokens) {
  DSV3_CHECK(child.pages.empty() && child.reserved == 0 && child.length == 0,
             "fork into a sequence that holds cache pages (internal error)");
  DSV3_CHECK(tokens >= parent.length, "fork of ", parent.length, " tokens into a reservation of ",
             tokens, " (internal error)");
  const int full = parent.length / page_, rest = parent.length % page_;
  SeqCache c;
  c.borrowed = full;
  if (!reserve(c, tokens)) return false;
  c.pages.assign(parent.pages.begin(), parent.pages.begin() + full);
  for (int i = 0; i < full; i++) borrowers_[size_t(parent.pages[size_t(i)])]++;
  c.length = parent.length;
  c.mtp_length = parent.mtp_length;
  if (rest > 0) {  // the partial page: rows 0 .. rest-1 of the parent's, in every layer
    ensure(c, parent.length);
    const size_t from = size_t(parent.pages[size_t(full)]) * page_ * width_;
    const size_t to = size_t(c.pages.back()) * page_ * width_;
    const Exec ex{data_.view().device};
    for (int l = 0; l < layers_; l++) {
      const Tensor t = layer(l);
      backend::copy(ex, t.slice(to, size_t(rest) * width_), t.slice(from, size_t(rest) * width_));
    }
  }
  child = std::move(c);
  return true;
}

void KvCache::release(SeqCache& s) {
  DSV3_CHECK(s.borrowed >= 0 && size_t(s.borrowed) <= s.pages.size(),
             "sequence borrows more pages than it has (internal error)");
  for (size_t i = s.pages.size(); i-- > size_t(s.borrowed);) {
    DSV3_CHECK(borrowers_[size_t(s.pages[i])] == 0, "kv cache page ", s.pages[i],
               " released while a forked sequence borrows it (internal error)");
  }
  for (size_t i = s.pages.size(); i-- > 0;) {
    if (i < size_t(s.borrowed)) borrowers_[size_t(s.pages[i])]--;
    else free_.push_back(s.pages[i]);
  }
  reserved_ -= s.reserved;
  s = {};
}

}  // namespace dsv3

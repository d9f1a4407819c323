#include "data/token_stream.h"

#include <cstring>

#include "core/check.h"

namespace dsv3 {

TokenStream::TokenStream(std::vector<int32_t> tokens, Dims d)
    : tokens_(std::move(tokens)), d_(d), batch_(size_t(d.B) * (d.T + 1)) {
  DSV3_CHECK(tokens_.size() >= size_t(d.B) * d.T + 1, "only ", tokens_.size(),
             " tokens: one batch of ", d.B, " x ", d.T, " needs ", size_t(d.B) * d.T + 1,
             " (lower batch or seq_len)");
}

void TokenStream::seek(uint64_t pos) {
  DSV3_CHECK(pos + size_t(d_.B) * d_.T + 1 <= tokens_.size(), "data position ", pos,
             " is past the end of the data (", tokens_.size(), " tokens): wrong data file?");
  pos_ = pos;
}

const int32_t* TokenStream::next() {
  const size_t span = size_t(d_.B) * d_.T;
  if (pos_ + span + 1 > tokens_.size()) pos_ = 0, epoch_++;
  for (int b = 0; b < d_.B; b++)
    std::memcpy(batch_.data() + size_t(b) * (d_.T + 1), tokens_.data() + pos_ + size_t(b) * d_.T,
                sizeof(int32_t) * (d_.T + 1));
  pos_ += span;
  if (pos_ + span + 1 > tokens_.size()) pos_ = 0, epoch_++;
  return batch_.data();
}

}  // namespace dsv3

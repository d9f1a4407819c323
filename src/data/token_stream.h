// Sequential batches over a token array, llm.c's order: the batch at position p has rows
// b = tokens[p + b*T .. p + b*T + T] (T+1 tokens: inputs and shifted targets); p += B*T, and
// wraps to 0 when the next batch would run past the end. The position is all the state, so a
// checkpoint stores it and resume continues exactly (T6).
#pragma once
#include <cstdint>
#include <vector>

#include "model/arena.h"

namespace dsv3 {

class TokenStream {
 public:
  TokenStream(std::vector<int32_t> tokens, Dims d);
  const int32_t* next();  // (B, T+1), valid until the next call
  uint64_t position() const { return pos_; }
  void seek(uint64_t pos);
  size_t size() const { return tokens_.size(); }
  uint64_t epoch() const { return epoch_; }
  void set_epoch(uint64_t e) { epoch_ = e; }

 private:
  std::vector<int32_t> tokens_;
  Dims d_;
  uint64_t pos_ = 0, epoch_ = 0;
  std::vector<int32_t> batch_;
};

}  // namespace dsv3

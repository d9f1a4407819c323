// The built-in corpus: deterministic English-like text the project generates itself, so the
// quick start trains on something learnable with no download. Stories with consistent
// arithmetic ("Ada has 7 apples. Ada gives 3 to Bo. Now Ada has 4 apples.") give the model
// structure to learn beyond word frequencies; the sample at the end shows whether it did.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace dsv3 {

// Text of `bytes` bytes; training reads it as byte-level ids (tokenizer/text_codec.h).
std::string builtin_corpus_text(uint64_t seed, size_t bytes);

}  // namespace dsv3

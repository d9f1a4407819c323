// The built-in corpus: deterministic English-like text the project generates itself, so the
// quick start trains on something learnable with no download. Stories with consistent
// arithmetic ("Ada has 7 apples. Ada gives 3 to Bo. Now Ada has 4 apples.") give the model
// structure to learn beyond word frequencies; the sample at the end shows whether it did.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace dsv3 {

std::string builtin_corpus_text(uint64_t seed, size_t bytes);
// Byte-level token ids (0..255), the encoding used until a trained tokenizer is given.
std::vector<int32_t> bytes_to_ids(const std::string& text);
std::string ids_to_bytes(const std::vector<int32_t>& ids);  // ids >= 256 are shown as '?'

}  // namespace dsv3

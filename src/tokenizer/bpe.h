// Byte-level BPE (D9): the tokenizer as data, and encoding/decoding with it.
//
// A Tokenizer is what every file format holds: a pre-tokenizer, the bytes of each token id, the
// merges in priority order, and the special tokens. Encoding pre-tokenises the text into pieces
// and, within each piece, starts from one token per byte and repeatedly applies the merge of
// lowest rank among adjacent pairs, leftmost first on equal rank (tiktoken's and Hugging Face's
// rule). Special tokens are never produced by merges; their text is recognised only when asked
// (EncodeOptions::allow_special).
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tokenizer/pretokenize.h"

namespace dsv3 {

struct SpecialToken {
  int32_t id = -1;
  std::string text;  // UTF-8, matched verbatim
};

// Ids of the special tokens with a job; -1 when the tokenizer has none. GPT-2 uses one token
// (<|endoftext|>) as both bos and eos. FIM names follow the PSM layout: prefix marker, prefix,
// suffix marker, suffix, middle marker, middle (DeepSeek calls them fim begin / hole / end).
struct SpecialRoles {
  int32_t bos = -1, eos = -1, pad = -1;
  int32_t fim_prefix = -1, fim_middle = -1, fim_suffix = -1;
};

struct Tokenizer {
  PretokSpec pretok;
  // Bytes of every id. Special ids hold their text; an empty entry is a hole (an id no token uses,
  // which some imported vocabularies have). Every byte value has a one-byte token.
  std::vector<std::string> vocab;
  // Merge r (its rank) joins adjacent tokens (left, right) into the token whose bytes are their
  // concatenation; lower rank merges first.
  std::vector<std::pair<int32_t, int32_t>> merges;
  std::vector<SpecialToken> specials;
  SpecialRoles roles;
  // tiktoken's rule: a piece that is itself a token encodes to that token without merging. When
  // false (GPT-2 / HF files) the shortcut is taken only where merging gives the same answer.
  bool ignore_merges = false;
};

// The role names ("bos", "eos", "pad", "fim_prefix", "fim_middle", "fim_suffix") and access.
const std::vector<std::string>& special_role_names();
int32_t& role_slot(SpecialRoles& r, const std::string& name);
int32_t role_id(const SpecialRoles& r, const std::string& name);
// Guesses roles from well-known texts (<|endoftext|>, <s>, </s>, <｜begin▁of▁sentence｜>,
// <|fim_prefix|>, <｜fim▁hole｜>, ...), for formats that do not store them.
SpecialRoles infer_roles(const std::vector<SpecialToken>& specials);

// Checks everything encoding and decoding rely on; throws an Error starting with `where`.
void validate_tokenizer(const Tokenizer& t, const std::string& where);

struct EncodeOptions {
  bool allow_special = false;  // recognise special-token texts in the input as those tokens
  int threads = 1;             // > 1: split long inputs at safe points and encode in parallel
};

// A tokenizer ready to encode: compiled regexes and lookup tables. Immutable after construction,
// so one Encoder may be used from many threads.
class Encoder {
 public:
  explicit Encoder(Tokenizer t, const std::string& where = "tokenizer");
  ~Encoder();
  Encoder(const Encoder&) = delete;
  Encoder& operator=(const Encoder&) = delete;

  const Tokenizer& tokenizer() const { return t_; }
  int32_t vocab_size() const { return int32_t(t_.vocab.size()); }

  std::vector<int32_t> encode(std::string_view text, const EncodeOptions& o = {}) const;
  // Appends the ids of text without special-token handling, on the calling thread.
  void encode_ordinary(std::string_view text, std::vector<int32_t>& out) const;
  // The ids of one pre-tokenised piece (exposed for tests of the merge loop).
  void encode_piece(std::string_view piece, std::vector<int32_t>& out) const;

  // Throws an Error naming the first id that is out of range or a hole.
  std::string decode(std::span<const int32_t> ids) const;

  // Tokens (non-special, length >= 2) for which merging their own bytes does not give them back;
  // they are reachable only by the whole-piece rule. Reported by `dsv3 tokenizer info`.
  int64_t unreachable_tokens() const { return unreachable_; }

 private:
  struct Index;
  Tokenizer t_;
  std::unique_ptr<Pretokenizer> pre_;
  std::unique_ptr<Index> ix_;
  int64_t unreachable_ = 0;
};

}  // namespace dsv3

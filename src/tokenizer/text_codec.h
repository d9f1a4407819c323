// Text in and out of a model: its trained tokenizer when one goes with it, else byte-level ids
// (the built-in corpus's encoding).
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace dsv3 {

// Byte-level ids: one id per byte (0-255); ids outside 0-255 decode as '?'.
std::vector<int32_t> bytes_to_ids(std::string_view text);
std::string ids_to_bytes(std::span<const int32_t> ids);

class Encoder;

class TextCodec {
 public:
  TextCodec();  // byte-level
  explicit TextCodec(const std::string& tokenizer_path);
  ~TextCodec();
  TextCodec(TextCodec&&) noexcept;
  TextCodec& operator=(TextCodec&&) noexcept;

  std::vector<int32_t> encode(std::string_view text) const;
  // Bytes of the ids; an id the tokenizer does not know shows as U+FFFD (sampling from a model
  // whose vocab is larger than its tokenizer's can produce one).
  std::string decode(std::span<const int32_t> ids) const;
  // encode() that also turns special-token texts into their ids (chat templates).
  std::vector<int32_t> encode_with_specials(std::string_view text) const;
  // The id of the special token with this exact text, -1 when there is none (always for
  // byte-level ids); the end-of-sequence token, -1 when unknown.
  int32_t special_id(std::string_view text) const;
  int32_t eos_id() const;
  bool byte_level() const { return !enc_; }
  int vocab_size() const;
  const std::string& describe() const { return desc_; }

 private:
  std::unique_ptr<Encoder> enc_;
  std::string desc_;
};

// The tokenizer that goes with a model path (run dir, checkpoint file or HF dir): a
// tokenizer.dsv3tok or tokenizer.json beside it; "" when there is none.
std::string find_tokenizer_for_model(const std::string& model_path);

}  // namespace dsv3

#include "tokenizer/text_codec.h"

#include <filesystem>

#include "tokenizer/bpe.h"
#include "tokenizer/formats.h"

namespace fs = std::filesystem;

namespace dsv3 {

std::vector<int32_t> bytes_to_ids(std::string_view text) {
  std::vector<int32_t> ids(text.size());
  for (size_t i = 0; i < text.size(); i++) ids[i] = int32_t(static_cast<unsigned char>(text[i]));
  return ids;
}

std::string ids_to_bytes(std::span<const int32_t> ids) {
  std::string s;
  s.reserve(ids.size());
  for (int32_t id : ids) s += id >= 0 && id < 256 ? char(id) : '?';
  return s;
}

TextCodec::TextCodec() : desc_("byte-level ids") {}
TextCodec::TextCodec(const std::string& path)
    : enc_(std::make_unique<Encoder>(load_tokenizer_any(path), path)), desc_("tokenizer " + path) {}
TextCodec::~TextCodec() = default;
TextCodec::TextCodec(TextCodec&&) noexcept = default;
TextCodec& TextCodec::operator=(TextCodec&&) noexcept = default;

std::vector<int32_t> TextCodec::encode(std::string_view text) const {
  if (!enc_) return bytes_to_ids(text);
  return enc_->encode(text);
}

std::vector<int32_t> TextCodec::encode_with_specials(std::string_view text) const {
  if (!enc_) return bytes_to_ids(text);
  EncodeOptions o;
  o.allow_special = true;
  return enc_->encode(text, o);
}

int32_t TextCodec::special_id(std::string_view text) const {
  if (!enc_) return -1;
  for (const SpecialToken& s : enc_->tokenizer().specials)
    if (s.text == text) return s.id;
  return -1;
}

int32_t TextCodec::eos_id() const { return enc_ ? enc_->tokenizer().roles.eos : -1; }

std::string TextCodec::decode(std::span<const int32_t> ids) const {
  if (!enc_) return ids_to_bytes(ids);
  std::string out;
  const auto& vocab = enc_->tokenizer().vocab;
  for (int32_t id : ids)
    out += id >= 0 && size_t(id) < vocab.size() && !vocab[id].empty() ? vocab[id] : "\xEF\xBF\xBD";
  return out;
}

int TextCodec::vocab_size() const { return enc_ ? enc_->vocab_size() : 256; }

std::string find_tokenizer_for_model(const std::string& model_path) {
  fs::path dir = fs::is_directory(model_path) ? fs::path(model_path)
                                              : fs::path(model_path).parent_path();
  for (const char* name : {"tokenizer.dsv3tok", "tokenizer.json"})
    if (fs::exists(dir / name)) return (dir / name).string();
  return "";
}

}  // namespace dsv3

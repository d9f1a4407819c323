#include "infer/text_codec.h"

#include <filesystem>

#include "data/builtin_corpus.h"
#include "tokenizer/bpe.h"
#include "tokenizer/formats.h"

namespace fs = std::filesystem;

namespace dsv3 {

TextCodec::TextCodec() : desc_("byte-level ids") {}
TextCodec::TextCodec(const std::string& path)
    : enc_(std::make_unique<Encoder>(load_tokenizer_any(path), path)), desc_("tokenizer " + path) {}
TextCodec::~TextCodec() = default;
TextCodec::TextCodec(TextCodec&&) noexcept = default;
TextCodec& TextCodec::operator=(TextCodec&&) noexcept = default;

std::vector<int32_t> TextCodec::encode(std::string_view text) const {
  if (!enc_) return bytes_to_ids(std::string(text));
  return enc_->encode(text);
}

std::string TextCodec::decode(std::span<const int32_t> ids) const {
  if (!enc_) return ids_to_bytes(std::vector<int32_t>(ids.begin(), ids.end()));
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

// GPT-2 tokenizer files: encoder.json and vocab.bpe, the two parts of the input separated by
// "\n=====\n".
#include "tokenizer_oracle.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace dsv3;
  fuzz::init_once();
  const auto parts = fuzz::split_parts(data, size, 2);
  const std::string enc = fuzz::write_input(reinterpret_cast<const uint8_t*>(parts[0].data()),
                                            parts[0].size(), "encoder.json");
  const std::string bpe = fuzz::write_input(reinterpret_cast<const uint8_t*>(parts[1].data()),
                                            parts[1].size(), "vocab.bpe");
  fuzz::run_expecting_errors([&] {
    const Tokenizer t = load_gpt2_files(enc, bpe, pretok_preset("gpt2"));
    fuzz::check_tokenizer(t, data, size);
  });
  return 0;
}

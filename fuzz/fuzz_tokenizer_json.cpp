// Hugging Face tokenizer.json (BPE model, pre-tokenizers, post-processor, added tokens).
#include "tokenizer_oracle.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace dsv3;
  fuzz::init_once();
  const std::string path = fuzz::write_input(data, size, "tokenizer.json");
  fuzz::run_expecting_errors([&] {
    const Tokenizer t = load_hf_tokenizer_json(path);
    fuzz::check_tokenizer(t, data, size);
  });
  return 0;
}

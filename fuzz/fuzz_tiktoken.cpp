// tiktoken rank files ("base64 rank" lines; merges derived from the ranks).
#include "tokenizer_oracle.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace dsv3;
  fuzz::init_once();
  const std::string path = fuzz::write_input(data, size, "ranks.tiktoken");
  fuzz::run_expecting_errors([&] {
    const Tokenizer t = load_tiktoken_file(path, pretok_preset("gpt2"));
    fuzz::check_tokenizer(t, data, size);
  });
  return 0;
}

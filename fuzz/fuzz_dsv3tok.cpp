// dsv3's own tokenizer format (.dsv3tok): frame, JSON header, vocabulary and merge payload.
#include "tokenizer_oracle.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace dsv3;
  fuzz::init_once();
  const std::string path = fuzz::write_input(data, size, "tok.dsv3tok");
  fuzz::run_expecting_errors([&] {
    const Tokenizer t = load_dsv3_tokenizer(path);
    fuzz::check_tokenizer(t, data, size);
  });
  return 0;
}

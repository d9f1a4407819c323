// What every tokenizer that loads must do: encode any bytes and decode them back exactly
// (byte-level BPE: every byte has a token), and survive dsv3's own format unchanged.
#pragma once
#include <cstdio>
#include <cstdlib>
#include <string>

#include "fuzz_util.h"
#include "tokenizer/bpe.h"
#include "tokenizer/formats.h"

namespace dsv3::fuzz {

inline void check_tokenizer(const Tokenizer& t, const uint8_t* data, size_t size) {
  const Encoder enc(t, "fuzzed tokenizer");
  std::string text = "Hello, world! It's 2024:\n\t  spaces  and \xe4\xb8\xad\xe6\x96\x87 \xff\xfe";
  text.append(reinterpret_cast<const char*>(data), std::min<size_t>(size, 64));
  const std::vector<int32_t> ids = enc.encode(text);
  if (enc.decode(ids) != text) {
    std::fprintf(stderr, "decode(encode(text)) != text\n");
    std::abort();
  }
  const std::string path = write_input(nullptr, 0, "roundtrip.dsv3tok");
  save_dsv3_tokenizer(path, t);
  const Tokenizer back = load_dsv3_tokenizer(path);
  if (back.vocab != t.vocab || back.merges != t.merges || back.ignore_merges != t.ignore_merges ||
      back.pretok.patterns != t.pretok.patterns) {
    std::fprintf(stderr, "the dsv3 format changed the tokenizer\n");
    std::abort();
  }
}

}  // namespace dsv3::fuzz

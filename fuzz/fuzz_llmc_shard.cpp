// llm.c token files (256 x int32 header, uint16 ids), through both readers: read_token_file and
// Shard (which splits documents at an EOS id).
#include <vector>

#include "data/shard.h"
#include "data/token_file.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace dsv3;
  fuzz::init_once();
  const std::string path = fuzz::write_input(data, size, "tokens.bin");
  fuzz::run_expecting_errors([&] { read_token_file(path); });
  fuzz::run_expecting_errors([&] {
    ShardOpenOptions o;
    o.llmc_eos = size > 0 ? int32_t(data[0]) : 0;
    const Shard s = Shard::open(path, o);
    for (uint64_t i = 0; i < s.n_docs() && i < 64; i++) s.doc(i);
  });
  return 0;
}

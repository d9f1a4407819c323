// dsv3 token shards (DSV3SHRD): frame, JSON header, offset table, ids.
#include <vector>

#include "data/shard.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace dsv3;
  fuzz::init_once();
  const std::string path = fuzz::write_input(data, size, "part.shard");
  fuzz::run_expecting_errors([&] {
    const Shard s = Shard::open(path);
    for (uint64_t i = 0; i < s.n_docs() && i < 64; i++) s.doc(i);
    if (s.n_tokens() > 0) {
      std::vector<int32_t> out(size_t(std::min<uint64_t>(s.n_tokens(), 256)));
      s.read_tokens(0, out.size(), out.data());
    }
  });
  return 0;
}

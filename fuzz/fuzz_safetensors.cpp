// safetensors: the 8-byte header length, the JSON header (dtypes, shapes, offsets, metadata) and
// the conversion of each tensor to fp32.
#include <vector>

#include "checkpoint/safetensors.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace dsv3;
  fuzz::init_once();
  const std::string path = fuzz::write_input(data, size, "model.safetensors");
  fuzz::run_expecting_errors([&] {
    SafetensorsReader r(path);
    for (const SafetensorsEntry& e : r.tensors()) {
      if (e.numel > (uint64_t(1) << 22)) continue;  // the harness's buffer, not the reader's
      std::vector<float> dst(size_t(e.numel));
      fuzz::run_expecting_errors([&] { r.read_f32(e, dst.data()); });
    }
  });
  return 0;
}

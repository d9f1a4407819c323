// dsv3 int8 models (.dsv3q, dsv3 quantize): frame, JSON header, the scheme and the int8 layout
// derived from the config, the int8 bytes and fp32 scales. Checksums are off in the fuzz build.
// A model that loads must also dequantise (the scales and sizes it carries are used).
#include "checkpoint/quantized.h"
#include "fuzz_util.h"
#include "model/quant.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace dsv3;
  fuzz::init_once();
  const std::string path = fuzz::write_input(data, size, "model.dsv3q");
  fuzz::run_expecting_errors([&] {
    const Int8Model m = load_int8_model(path);
    (void)dequantize_params(m.config, m.params);
  });
  return 0;
}

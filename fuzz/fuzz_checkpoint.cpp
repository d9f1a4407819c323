// dsv3 checkpoints (.dsv3): frame, JSON header, section layout, tensor table, payload. Checksums
// are off in the fuzz build, so mutated headers and payloads reach the checks behind them.
#include "checkpoint/checkpoint.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace dsv3;
  fuzz::init_once();
  const std::string path = fuzz::write_input(data, size, "ckpt.dsv3");
  fuzz::run_expecting_errors([&] { load_checkpoint(path, true); });
  fuzz::run_expecting_errors([&] { load_checkpoint_train_state(path); });
  return 0;
}

// Sharded checkpoints (what a distributed run saves; checkpoint/sharded.h): manifest.json and two
// rank files, the input split at "\n=====\n" (an empty part: that file is absent). Opens the
// checkpoint and reads every parameter. Checksums are off in the fuzz build. Oracle: only
// dsv3::Error may reject; what loads has the parameter count the manifest's config implies.
#include <cstdlib>
#include <filesystem>

#include "checkpoint/sharded.h"
#include "fuzz_util.h"
#include "model/params.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace dsv3;
  namespace fs = std::filesystem;
  fuzz::init_once();
  const auto parts = fuzz::split_parts(data, size, 3);
  static const std::string dir = fuzz::scratch_path("sharded");  // a directory
  std::error_code ec;
  fs::remove_all(dir, ec);
  fs::create_directories(dir);
  const char* names[3] = {"manifest.json", "rank_00000.bin", "rank_00001.bin"};
  for (int i = 0; i < 3; i++)
    if (i == 0 || !parts[size_t(i)].empty()) {
      std::FILE* f = std::fopen((fs::path(dir) / names[i]).c_str(), "wb");
      if (!f) std::abort();
      const std::string& b = parts[size_t(i)];
      if (!b.empty() && std::fwrite(b.data(), 1, b.size(), f) != b.size()) std::abort();
      std::fclose(f);
    }
  fuzz::run_expecting_errors([&] {
    const ShardedCheckpoint ck(dir);
    (void)ck.has_array("adam_m");
    const std::vector<float> p = ck.full_params();
    if (p.size() != build_param_table(ck.config()).total) std::abort();
  });
  return 0;
}

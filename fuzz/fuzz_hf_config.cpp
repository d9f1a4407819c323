// Hugging Face config.json of a DeepseekV3/V2 model. Oracle: a config that imports and validates
// exports to a config.json that imports to the same model.
#include <cstdlib>

#include "checkpoint/hf.h"
#include "fuzz_util.h"
#include "model/params.h"

namespace {

// The settings that matter; YaRN's are ignored when YaRN is off (config.json then has none).
nlohmann::json settings(const dsv3::ModelConfig& c) {
  nlohmann::json j = dsv3::fields_to_json(dsv3::model_fields(), &c);
  if (c.yarn_factor == 1.0)
    for (const char* k : {"yarn_original_ctx", "yarn_beta_fast", "yarn_beta_slow", "yarn_mscale"})
      j.erase(k);
  return j;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace dsv3;
  fuzz::init_once();
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(data, data + size);
  } catch (const nlohmann::json::exception&) {
    return 0;  // not JSON: import_hf's own parse reports it (covered by the tests)
  }
  fuzz::run_expecting_errors([&] {
    std::vector<std::string> defaulted;
    const ModelConfig c = config_from_hf_json(j, "config.json", &defaulted);
    validate(c);
    if (param_count_lower_bound(c) < 1e6) build_param_table(c);
    const nlohmann::json back = nlohmann::json::parse(hf_config_json(c, DType::BF16).dump());
    const ModelConfig c2 = config_from_hf_json(back, "exported config.json");
    if (settings(c) != settings(c2)) {
      std::fprintf(stderr, "export/import round trip changed the model:\n%s\n%s\n",
                   settings(c).dump().c_str(), settings(c2).dump().c_str());
      std::abort();
    }
  });
  return 0;
}

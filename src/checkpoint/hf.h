// Hugging Face export/import (I6): config.json + safetensors in the DeepseekV3 layout
// (docs: ../shared/design/deepseek-v3.md, "Hugging Face layout"). Tensor names are the
// ParamTable's own names, so export and import are loops over the table.
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "model/config.h"
#include "model/params.h"

namespace dsv3 {

struct HfModel {
  ModelConfig config;
  std::vector<float> params;  // laid out per build_param_table(config)
  std::vector<std::string> defaulted;  // "key = value" for optional keys config.json left out
};

// Writes dir/config.json and dir/model.safetensors (every table tensor under its HF name, as F32
// or BF16; the MTP modules' embed_tokens / shared_head.head are not written: they are the main
// model's). Creates dir if needed; each file is written atomically.
void export_hf(const std::string& dir, const ModelConfig& c, const ParamTable& t,
               const float* params, DType dtype);

// Reads dir/config.json and dir/model.safetensors, or the shards named by
// dir/model.safetensors.index.json. Every table tensor must be present with its exact shape;
// BF16/F16 are converted to fp32. Extra tensors allowed: the MTP modules' copies of
// embed_tokens / shared_head.head, and rotary inv_freq buffers; any other is an Error.
HfModel import_hf(const std::string& dir);
// "note: config.json does not set a, b; transformers' defaults were used (a = 1, b = 2)", or "".
std::string hf_defaults_note(const HfModel& m);

// config.json contents for c (keys in a readable order). torch_dtype from `dtype`.
nlohmann::ordered_json hf_config_json(const ModelConfig& c, DType dtype);
// ModelConfig from a parsed config.json; `where` names the file in errors. Does not validate().
// Required keys missing or of the wrong type are Errors naming the key; unknown keys are ignored.
// Optional keys left out take transformers' DeepseekV3Config / DeepseekV2Config defaults; each
// is added to `defaulted` as "key = value".
ModelConfig config_from_hf_json(const nlohmann::json& j, const std::string& where,
                                std::vector<std::string>* defaulted = nullptr);

// A cheap lower bound of build_param_table(c).total, computed without building the table: lets
// a reader reject a (corrupt) config that describes more parameters than its file can hold
// before it builds a table of billions of entries. Needs a validated config.
double param_count_lower_bound(const ModelConfig& c);

}  // namespace dsv3

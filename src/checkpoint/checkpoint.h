// dsv3's native checkpoint (T8): one file per step, written atomically, self-describing.
//
//   offset 0   "DSV3CKPT"                 magic, 8 bytes
//          8   u32 format version         1
//         12   u32 header crc32           CRC-32 of the JSON header bytes
//         16   u64 header length N
//         24   N bytes of JSON header:
//                {"model": {model_fields() as JSON}, "train": {whatever the trainer saves},
//                 "n_params": n, "tensors": [{"name","shape","offset"}...] (the ParamTable),
//                 "sections": {"params": [off, len], "adam_m": [...], "adam_v": [...]},
//                 "crc32": CRC-32 of the payload}
//              zero padding to a multiple of 64 bytes: the payload starts there
//   payload    the sections, fp32 little-endian, each 64-byte aligned; section offsets and
//              lengths are in bytes from the payload start. Adam sections are absent in
//              weights-only files.
// All integers little-endian. Every byte of the file is covered by a check: magic, version,
// header CRC, payload CRC, exact file size.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/fields.h"
#include "model/config.h"
#include "model/quant.h"

namespace dsv3 {

constexpr uint32_t kCheckpointVersion = 1;

// When a run saves, what it keeps, where it resumes from (T8).
struct CheckpointConfig {
  long long save_every = 100;  // 0 = only at the end
  int keep = 3;                // checkpoints kept
  std::string resume;          // checkpoint file or run directory to continue from
  bool overwrite = false;      // delete another run's files in --out (never saved in checkpoints)
};
const std::vector<FieldSpec>& checkpoint_fields();
void validate(const CheckpointConfig& c);

// Writes params (and the Adam moments when both are non-null) of n floats, n ==
// build_param_table(c).total. `train` is stored as is (step, rng, data position, ...).
// Atomic: a crash or kill leaves either the old file or the new one.
void save_checkpoint(const std::string& path, const ModelConfig& c, const nlohmann::json& train,
                     const float* params, const float* adam_m, const float* adam_v, size_t n);

struct Checkpoint {
  ModelConfig config;
  nlohmann::json train;
  std::vector<float> params, adam_m, adam_v;  // adam_* empty for weights-only files
};

// Loads and verifies a checkpoint; every problem is an Error naming the file. With
// load_optimizer = false the Adam sections are checksummed but not kept.
Checkpoint load_checkpoint(const std::string& path, bool load_optimizer = true);

// The "train" object of a checkpoint's header (header checksum verified, payload not read).
nlohmann::json load_checkpoint_train_state(const std::string& path);

// dir/ckpt_00000100.dsv3 (8 digits, more when the step needs them).
std::string checkpoint_path(const std::string& dir, int64_t step);
// Paths of dir/ckpt_<step>.dsv3, sorted by step (temp files ignored); empty if dir is absent.
std::vector<std::string> list_checkpoints(const std::string& dir);
// The step in a checkpoint file name, or -1 if the name is not ckpt_<digits>.dsv3 (or
// ckpt_<digits><suffix>).
int64_t checkpoint_step(const std::string& path);
int64_t checkpoint_step(const std::string& path, const std::string& suffix);
// Deletes all but the newest `keep` checkpoints (keep <= 0: deletes none), and the temp files
// of saves whose process no longer runs. Whoever wrote them: a training run prunes only its own
// (train/run_dir.h).
void prune_checkpoints(const std::string& dir, int keep);
// Deletes the temp files "ckpt_<step>.dsv3.tmp.<pid>" of saves whose process no longer runs.
void remove_stale_checkpoint_temps(const std::string& dir);
// Whether `name` is such a temp file (of any process).
bool is_checkpoint_temp(const std::string& name);

struct LoadedModel {
  ModelConfig config;
  std::vector<float> params;  // build_param_table(config) layout
  std::string source;         // "checkpoint <path>", "hf <dir>" or "int8 model <path> (w8a8)"
  QuantizedParams int8;       // an int8 model as stored (scheme None for every other kind)
  std::string note;           // what the user should know ("" or: keys config.json left to defaults)
};
// A checkpoint file, a run directory (its latest ckpt_*.dsv3), a Hugging Face directory (with
// config.json) or an int8 model (checkpoint/quantized.h). The int8 weights are dequantised into
// params, unless keep_int8, which leaves params empty (load_model_weights keeps them int8).
LoadedModel load_model_any(const std::string& path, bool keep_int8 = false);

}  // namespace dsv3

// Sharded checkpoints (T8, P7): what a distributed run saves. One directory per step,
//
//   OUT/ckpt_00000100.shards/
//     rank_00000.bin ... rank_<world-1>.bin   each rank's shard, written in parallel
//     manifest.json                             written last (atomically, by rank 0) once every
//                                               shard is on disk: the commit point
//
// A directory without manifest.json is an incomplete save and is never used. The manifest holds
// the model config, the run's state (step, data position, RNG, settings: what a single-file
// checkpoint's "train" holds) and the layout that wrote it; shards hold values only, addressed by
// tensor name and element range, so any layout can read any other's checkpoint (resume on a
// different world size, HF export).
//
// Shard file, little-endian:
//   "DSV3SHRD", u32 version (1), u32 CRC-32 of the JSON header, u64 header length, header,
//   zero padding to 64 bytes, then for each array (header "arrays", e.g. params, adam_m,
//   adam_v) its `elements` floats, 64-byte aligned.
//   header: {"rank", "world", "arrays": [..], "elements": n,
//            "segments": [[tensor name, first element, count, crc32 of each array's floats]..]}
// Every segment carries a CRC per array, so a reader checks exactly the bytes it reads.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/config.h"

namespace dsv3 {

constexpr uint32_t kCkptShardVersion = 1;

// A part of one tensor held by a shard.
struct ShardSegment {
  std::string tensor;
  size_t begin = 0, count = 0;  // elements of the tensor
};

// What one rank writes: segments and, per array, their values back to back.
struct ShardData {
  std::vector<ShardSegment> segments;
  std::vector<std::string> arrays;        // "params", then the optimizer's state arrays
  std::vector<std::vector<float>> values;  // per array: sum of segment counts floats
};

std::string sharded_checkpoint_dir(const std::string& run_dir, int64_t step);
std::string shard_file(const std::string& ckpt_dir, int rank);
// Writes dir/rank_<rank>.bin atomically (creating dir).
void write_shard(const std::string& ckpt_dir, int rank, int world, const ShardData& d);
// Writes dir/manifest.json atomically: the commit point of a sharded checkpoint.
void write_manifest(const std::string& ckpt_dir, const nlohmann::json& manifest);

// An opened sharded checkpoint: the manifest, and an index of which shard holds which part of
// which tensor. Every problem (no manifest, a missing or corrupt shard, a part of a tensor in no
// shard) is an Error naming the file and what to do.
class ShardedCheckpoint {
 public:
  explicit ShardedCheckpoint(const std::string& dir);
  ~ShardedCheckpoint();
  const std::string& dir() const { return dir_; }
  const nlohmann::json& manifest() const { return manifest_; }
  const ModelConfig& config() const { return config_; }
  bool has_array(const std::string& name) const;
  // Elements [begin, begin + count) of tensor `name` from array `array` into out.
  void read(const std::string& array, const std::string& name, size_t begin, size_t count,
            float* out) const;
  // The whole model's parameters in build_param_table(config()) layout.
  std::vector<float> full_params() const;

  struct Impl;

 private:
  std::string dir_;
  nlohmann::json manifest_;
  ModelConfig config_;
  std::unique_ptr<Impl> p_;
};

// Whether path is a sharded checkpoint directory (has manifest.json; complete).
bool is_sharded_checkpoint(const std::string& path);
// The newest complete checkpoint in a run directory, single-file (ckpt_<step>.dsv3) or sharded
// (ckpt_<step>.shards with a manifest); "" when there is none.
std::string latest_checkpoint(const std::string& run_dir);
// The step of a checkpoint path of either kind (-1 if the name is neither).
int64_t any_checkpoint_step(const std::string& path);
// Deletes all but the newest `keep` complete checkpoints of either kind, and incomplete sharded
// directories older than the newest complete one.
void prune_all_checkpoints(const std::string& run_dir, int keep);

}  // namespace dsv3

#include "train/checkpointing.h"

#include <cstdio>
#include <filesystem>

#include "core/check.h"

namespace dsv3 {

ShardedSaver::ShardedSaver(ParallelContext& ctx, std::string run_dir, int keep)
    : ctx_(ctx), run_dir_(std::move(run_dir)), keep_(keep) {}

ShardedSaver::~ShardedSaver() {
  if (writer_.joinable()) writer_.join();
}

void ShardedSaver::save(int64_t step, ShardData data, nlohmann::json manifest) {
  flush();
  dir_ = sharded_checkpoint_dir(run_dir_, step);
  std::error_code ec;
  std::filesystem::remove(std::filesystem::path(dir_) / "manifest.json", ec);  // a stale one
  manifest_ = std::move(manifest);
  state_ = 0;
  error_.clear();
  writer_ = std::thread([this, d = std::move(data)] {
    try {
      write_shard(dir_, ctx_.rank, ctx_.world, d);
      state_ = 1;
    } catch (const std::exception& e) {
      error_ = e.what();
      state_ = -1;
    }
  });
}

std::string ShardedSaver::agree(bool block) {
  if (dir_.empty()) return "";
  if (block && writer_.joinable()) writer_.join();
  // min over ranks: -1 someone failed, 0 someone still writing, 1 all written
  int32_t s = state_.load();
  ctx_.coll->run(ctx_.coll->all_reduce(ctx_.world_group, dist::Purpose::Stats, &s, 1, DType::I32,
                                       dist::ReduceOp::Min));
  if (s == 0) return "";
  if (writer_.joinable()) writer_.join();
  const std::string dir = dir_;
  dir_.clear();
  if (s < 0)
    fail("saving checkpoint ", dir, " failed",
         state_ < 0 ? cat(" on rank ", ctx_.rank, ": ", error_) : std::string(" on another rank"),
         " (is the disk full or the directory not writable?)");
  // Rank 0 commits; the others wait for it (a rollback may read the checkpoint right away).
  int32_t committed = 1;
  std::string why;
  if (ctx_.root()) {
    try {
      nlohmann::json shards = nlohmann::json::array();
      for (int r = 0; r < ctx_.world; r++)
        shards.push_back(std::filesystem::path(shard_file(dir, r)).filename().string());
      manifest_["shards"] = shards;
      write_manifest(dir, manifest_);
      if (prune_) prune_(dir);
      else prune_all_checkpoints(run_dir_, keep_);
    } catch (const Error& e) {
      committed = 0, why = e.what();
    }
  }
  ctx_.coll->run(ctx_.coll->all_reduce(ctx_.world_group, dist::Purpose::Stats, &committed, 1,
                                       DType::I32, dist::ReduceOp::Min));
  DSV3_CHECK(committed == 1, "committing checkpoint ", dir, " failed",
             why.empty() ? std::string(" on rank 0") : ": " + why);
  return dir;
}

std::string ShardedSaver::poll() { return agree(false); }
std::string ShardedSaver::flush() { return agree(true); }

}  // namespace dsv3

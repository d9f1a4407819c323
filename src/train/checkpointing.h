// Asynchronous sharded checkpoints of a distributed run (T8): save() takes a snapshot (host
// copies of this rank's pieces, checkpoint/sharded.h) and hands it to a background writer while
// training goes on. Every step poll() asks all ranks (one small all-reduce) whether their shards
// are on disk; when all are, rank 0 writes manifest.json, which commits the checkpoint, and
// prunes old ones. A save waits for the previous one to commit first; a failed write on any rank
// is an error on every rank. MPI stays on the training thread (MPI_THREAD_FUNNELED): the writer
// thread only writes files.
#pragma once
#include <atomic>
#include <functional>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "checkpoint/sharded.h"
#include "train/parallel_step.h"

namespace dsv3 {

class ShardedSaver {
 public:
  ShardedSaver(ParallelContext& ctx, std::string run_dir, int keep);
  ~ShardedSaver();
  ShardedSaver(const ShardedSaver&) = delete;
  ShardedSaver& operator=(const ShardedSaver&) = delete;

  // Starts saving: `manifest` (rank 0's is written) describes the step; `data` is this rank's.
  void save(int64_t step, ShardData data, nlohmann::json manifest);
  // Every step, on every rank: the directory of a save that committed just now, else "".
  std::string poll();
  // Waits for the save in progress (if any) to commit; returns its directory or "".
  std::string flush();
  bool pending() const { return !dir_.empty(); }
  // Rank 0, after a commit: what removes old checkpoints (the run directory's own rotation,
  // train/run_dir.h); without it, prune_all_checkpoints.
  void set_prune(std::function<void(const std::string& committed_dir)> prune) {
    prune_ = std::move(prune);
  }

 private:
  std::string agree(bool block);

  ParallelContext& ctx_;
  std::string run_dir_;
  int keep_;
  std::thread writer_;
  std::atomic<int> state_{0};  // 0 writing, 1 written, -1 failed
  std::string error_, dir_;
  nlohmann::json manifest_;
  std::function<void(const std::string&)> prune_;
};

}  // namespace dsv3

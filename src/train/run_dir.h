// The run directory (T8): one run owns it at a time, and a run only ever deletes or rewrites what
// it wrote itself.
//
//   DIR/dsv3.lock           advisory lock (fcntl) held for the whole run; holds "pid host"
//   DIR/ckpt_<step>.dsv3    checkpoints; each names the run it belongs to (train state "run_id")
//   DIR/ckpt_<step>.shards/ a distributed run's sharded checkpoints (run id in manifest.json)
//   DIR/metrics.jsonl       one record per step / evaluation / rollback / resume
//   DIR/metrics_replayed.jsonl   records a resumed run superseded (steps after its checkpoint)
//   DIR/tokenizer.dsv3tok   the data's tokenizer (prepared data); events.out.tfevents.* (TensorBoard)
//   DIR/launch.jsonl        dsv3 launch's log of its attempts (never blocks a run, never deleted)
//   DIR/train.log           a sweep trial's console output, written by dsv3 sweep (the same)
//
// A run is one lineage of checkpoints: a fresh run draws a new run id, a resumed run carries the
// id of the checkpoint it resumed from. Checkpoints written before run ids existed carry none;
// they count as one lineage ("").
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace dsv3 {

// Where a run starts: fresh (no checkpoint), or from a checkpoint file of a given run and step.
struct RunOrigin {
  std::string checkpoint;  // empty for a fresh run
  std::string run_id;      // the checkpoint's run (a fresh run's new id)
  int64_t step = 0;        // the checkpoint's steps done
};

// A new run id: 16 hex digits from the clock, the pid and the OS's random source.
std::string new_run_id();

// Holds DIR for one run: the lock, and the list of this run's checkpoints there (oldest first).
class RunDirectory {
 public:
  // Creates DIR, takes its lock (another live process holding it is an error naming its pid),
  // then checks what DIR holds against `origin`:
  //  - a fresh run needs DIR empty (the lock file aside);
  //  - a resumed run needs DIR empty or holding only this run's checkpoints, none of them after
  //    the step it resumes from (those would be a branch it abandons).
  // Anything else is refused naming what is there, unless `overwrite`: then the files of other
  // runs and the later checkpoints are deleted (files that are not a run's are left alone).
  // For a resumed run, metrics.jsonl keeps the records up to origin.step; the rest move to
  // metrics_replayed.jsonl, so a reader sees one record per step.
  RunDirectory(const std::string& dir, const RunOrigin& origin, bool overwrite);
  ~RunDirectory();
  RunDirectory(const RunDirectory&) = delete;
  RunDirectory& operator=(const RunDirectory&) = delete;

  const std::string& path() const { return dir_; }
  const std::string& run_id() const { return run_id_; }
  // Records a checkpoint this run saved (file or sharded directory), then deletes this run's
  // oldest ones beyond `keep` (never another run's), temp files of saves whose process no
  // longer runs, and this run's older sharded saves that never committed.
  void saved(const std::string& checkpoint, int keep);
  const std::vector<std::string>& checkpoints() const { return own_; }

 private:
  std::string dir_, run_id_;
  int lock_fd_ = -1;
  std::vector<std::string> own_;  // this run's checkpoints in DIR, by step
};

// The lock file's name inside a run directory.
constexpr const char* kRunLockName = "dsv3.lock";

// Keeps the records of `metrics` with a "step" <= `step` (and lines without one), and appends
// the others, plus a last line cut short by a kill, to `replayed`. Atomic; no-op when nothing
// is past `step`. Returns how many records moved.
size_t truncate_metrics_after(const std::string& metrics, const std::string& replayed,
                              int64_t step);

}  // namespace dsv3

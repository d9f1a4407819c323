// Issue 9: no run destroys another, no write fails silently, every bad input is named. Each test
// reproduces one reported failure through the real command (real processes for the data-loss
// cases: two trainers on one directory, writes failing at the file-size limit).
//
// Write failures are injected with RLIMIT_FSIZE (docs/decisions.md, issue 9): the kernel fails
// every write(2) past the limit (EFBIG, "File too large") exactly as a full disk fails it with
// ENOSPC, for every file the process writes, with no mount privileges, as root or not.
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

#include "checkpoint/checkpoint.h"
#include "checkpoint/hf.h"
#include "checkpoint/safetensors.h"
#include "cli_util.h"
#include "core/io.h"
#include "curate/writer.h"
#include "data/shard.h"
#include "data/token_file.h"
#include "model/params.h"
#include "test_util.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace dsv3::test {
namespace {

const std::string kSmall =
    "--preset debug --batch 4 --seq_len 32 --eval_every 0 --sample_tokens 0 --peak_gflops 100 ";

void spit(const fs::path& p, const std::string& bytes) {
  fs::remove(p);
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), std::streamsize(bytes.size()));
}
std::string slurp(const fs::path& p) { return read_file_bytes(p.string()); }

std::vector<std::string> names_in(const fs::path& dir, const std::string& ext) {
  std::vector<std::string> v;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ext) v.push_back(e.path().filename().string());
  std::sort(v.begin(), v.end());
  return v;
}

std::vector<int64_t> train_steps(const fs::path& dir) {
  std::vector<int64_t> v;
  for (const auto& j : read_metrics((dir / "metrics.jsonl").string(), "train"))
    v.push_back(j["step"].get<int64_t>());
  return v;
}
// The same for a file another process is writing (its last line may be partial).
size_t live_train_records(const fs::path& dir, const char* file = "metrics.jsonl") {
  std::ifstream in(dir / file);
  size_t n = 0;
  for (std::string line; std::getline(in, line);)
    n += line.find("\"kind\":\"train\"") != std::string::npos && !line.empty() && line.back() == '}';
  return n;
}
std::vector<int64_t> one_to(int64_t n) {
  std::vector<int64_t> v;
  for (int64_t i = 1; i <= n; i++) v.push_back(i);
  return v;
}


// `dsv3 ARGS` with every file it writes limited to `limit` bytes (RLIMIT_FSIZE; SIGXFSZ ignored,
// so an over-long write fails with EFBIG instead of killing the process). stdout + stderr.
CmdResult run_cli_limited(const std::string& args, rlim_t limit, const char* stdout_path = nullptr) {
  int fds[2];
  if (::pipe(fds) != 0) return {-1, "pipe failed"};
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(fds[0]);
    ::dup2(fds[1], 2);
    if (stdout_path) {
      const int fd = ::open(stdout_path, O_WRONLY);
      ::dup2(fd, 1);
    } else {
      ::dup2(fds[1], 1);
    }
    ::signal(SIGXFSZ, SIG_IGN);
    struct rlimit rl = {limit, limit};
    ::setrlimit(RLIMIT_FSIZE, &rl);
    const std::string cmd = std::string(DSV3_BIN) + " " + args;
    ::execl("/bin/sh", "sh", "-c", cmd.c_str(), nullptr);
    ::_exit(127);
  }
  ::close(fds[1]);
  CmdResult r{0, ""};
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fds[0], buf, sizeof buf)) > 0) r.out.append(buf, size_t(n));
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

// A process in the background; killed and reaped when the test ends unless it was already
// (a failing assertion must not leave a trainer running).
struct Child {
  pid_t pid;
  explicit Child(pid_t p) : pid(p) {}
  Child(const Child&) = delete;
  ~Child() {
    int status;
    if (::waitpid(pid, &status, WNOHANG) == 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
    }
  }
};

// `dsv3 ARGS` in the background, its output in `log`.
Child start_cli(const std::string& args, const fs::path& log) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    const std::string cmd = "exec " + std::string(DSV3_BIN) + " " + args + " > '" + log.string() +
                            "' 2>&1";
    ::execl("/bin/sh", "sh", "-c", cmd.c_str(), nullptr);
    ::_exit(127);
  }
  return Child(pid);
}
int wait_exit(pid_t pid) {
  int status = 0;
  if (::waitpid(pid, &status, 0) != pid) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

template <typename Cond>
bool wait_for(Cond cond, double seconds) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < end) {
    if (cond()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return cond();
}

void expect_refused(const CmdResult& r, std::initializer_list<std::string> words,
                    const std::string& what) {
  EXPECT_NE(r.code, 0) << what << "\n" << r.out;
  EXPECT_LT(r.code, 128) << what << ": crashed\n" << r.out;
  for (const auto& w : words) EXPECT_TRUE(has(r.out, w)) << what << ": no '" << w << "' in\n" << r.out;
}

// ================================================================ data loss (cases 1-4)

// Case 1: a new run in a directory that holds another run rotated the old run's checkpoints away
// and mixed both runs' metrics, exit 0.
TEST(RunDirectory, NewRunRefusesAnotherRunsDirectoryUnlessOverwrite) {
  auto d = temp_dir("rel_dir_taken");
  auto r = run_cli("train " + kSmall + "--steps 6 --save_every 2 --keep 2 --out " + d.string());
  ASSERT_EQ(r.code, 0) << r.out;
  const auto ckpts = names_in(d, ".dsv3");
  ASSERT_EQ(ckpts, (std::vector<std::string>{"ckpt_00000004.dsv3", "ckpt_00000006.dsv3"}));
  const std::string metrics = slurp(d / "metrics.jsonl"), last = slurp(d / ckpts.back());

  r = run_cli("train " + kSmall + "--steps 3 --save_every 1 --keep 1 --seed 9 --out " + d.string());
  expect_refused(r, {d.string(), "is not empty", "--overwrite", "--resume"}, "second run");
  EXPECT_EQ(names_in(d, ".dsv3"), ckpts);  // nothing rotated away
  EXPECT_EQ(slurp(d / "metrics.jsonl"), metrics);
  EXPECT_EQ(slurp(d / ckpts.back()), last);

  // A directory holding anything else (a user's file) is not a run directory either.
  auto other = temp_dir("rel_dir_notes");
  spit(other / "notes.txt", "mine");
  r = run_cli("train " + kSmall + "--steps 2 --out " + other.string());
  expect_refused(r, {"is not empty", "notes.txt"}, "run into a directory with a user's file");

  // --overwrite: the old run's files go, the user's file stays, the new run is alone.
  spit(d / "notes.txt", "mine");
  r = run_cli("train " + kSmall + "--steps 3 --save_every 1 --keep 5 --seed 9 --overwrite --out " +
              d.string());
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(names_in(d, ".dsv3"), (std::vector<std::string>{"ckpt_00000001.dsv3",
                                                            "ckpt_00000002.dsv3",
                                                            "ckpt_00000003.dsv3"}));
  EXPECT_EQ(train_steps(d), one_to(3));
  EXPECT_EQ(slurp(d / "notes.txt"), "mine");
}

// A run only ever deletes its own checkpoints: resuming into a directory that also holds another
// run's checkpoint, or this run's later ones, is refused; --overwrite deletes exactly those.
TEST(RunDirectory, ResumeNeverRotatesAwayCheckpointsItDidNotWrite) {
  auto d = temp_dir("rel_resume_own");
  auto r = run_cli("train " + kSmall + "--steps 6 --save_every 2 --keep 5 --out " + (d / "a").string());
  ASSERT_EQ(r.code, 0) << r.out;
  r = run_cli("train " + kSmall + "--steps 2 --save_every 1 --keep 5 --seed 5 --out " +
              (d / "b").string());
  ASSERT_EQ(r.code, 0) << r.out;
  // b's checkpoint of step 1 sits in a's directory (copied by hand, say)
  fs::copy_file(d / "b" / "ckpt_00000001.dsv3", d / "a" / "ckpt_00000001.dsv3");
  const std::string foreign = slurp(d / "a" / "ckpt_00000001.dsv3");
  r = run_cli("train --resume " + (d / "a").string() + " --steps 10 --keep 1");
  expect_refused(r, {"another run", "ckpt_00000001.dsv3", "--overwrite"}, "resume beside a foreign checkpoint");
  EXPECT_EQ(slurp(d / "a" / "ckpt_00000001.dsv3"), foreign);

  // resuming from step 2 would abandon steps 4 and 6 of the same run
  fs::remove(d / "a" / "ckpt_00000001.dsv3");
  r = run_cli("train --resume " + (d / "a" / "ckpt_00000002.dsv3").string() + " --steps 8");
  expect_refused(r, {"after step 2", "ckpt_00000004.dsv3", "--resume " + (d / "a").string()},
                 "resume from an older checkpoint");
  EXPECT_EQ(names_in(d / "a", ".dsv3").size(), 3u);
  r = run_cli("train --resume " + (d / "a" / "ckpt_00000002.dsv3").string() +
              " --steps 8 --keep 2 --overwrite");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(names_in(d / "a", ".dsv3"),
            (std::vector<std::string>{"ckpt_00000006.dsv3", "ckpt_00000008.dsv3"}));
  EXPECT_EQ(train_steps(d / "a"), one_to(8));  // the abandoned 3..6 moved aside
  EXPECT_EQ(read_metrics((d / "a" / "metrics_replayed.jsonl").string(), "train").size(), 4u);

  // a resumed run rotates its own older checkpoints (b's 1 and 2 were written by the same run)
  r = run_cli("train --resume " + (d / "b").string() + " --steps 4 --keep 1");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(names_in(d / "b", ".dsv3"), (std::vector<std::string>{"ckpt_00000004.dsv3"}));
}

// Keep-last-N never deletes a file the run did not write, even one that appears while it runs.
TEST(RunDirectory, RotationSparesACheckpointOfAnotherRun) {
  auto d = temp_dir("rel_rotate");
  auto r = run_cli("train " + kSmall + "--steps 1 --seed 4 --out " + (d / "other").string());
  ASSERT_EQ(r.code, 0) << r.out;
  const fs::path out = d / "run";
  const Child trainer = start_cli("train " + kSmall + "--steps 1000000 --save_every 2 --keep 1 --out " +
                                      out.string(), d / "log");
  const pid_t pid = trainer.pid;
  // Steps are fast and --keep 1 rotates each checkpoint away at the next save: wait for any
  // checkpoint, not one by name (polling could miss ckpt 2's short life and wait forever).
  const auto latest = [&] {
    const auto c = list_checkpoints(out.string());
    return c.empty() ? int64_t(0) : checkpoint_step(c.back());
  };
  int64_t seen = 0;
  ASSERT_TRUE(wait_for([&] { return (seen = latest()) > 0; }, 120)) << slurp(d / "log");
  fs::copy_file(d / "other" / "ckpt_00000001.dsv3", out / "ckpt_00000001.dsv3");
  const bool rotated = wait_for([&] { return latest() >= seen + 6; }, 120);  // three more saves
  ::kill(pid, SIGKILL);
  wait_exit(pid);
  ASSERT_TRUE(rotated) << slurp(d / "log");
  EXPECT_EQ(slurp(out / "ckpt_00000001.dsv3"), slurp(d / "other" / "ckpt_00000001.dsv3"));
  EXPECT_FALSE(fs::exists(out / "ckpt_00000002.dsv3"));  // its own old ones did rotate
}

// Case 2: two trainers on one directory both ran; one's checkpoints were silently the other's.
TEST(RunDirectory, SecondTrainerOnALockedDirectoryNamesTheHolder) {
  auto d = temp_dir("rel_lock");
  const fs::path out = d / "run";
  const Child trainer = start_cli("train " + kSmall + "--steps 1000000 --save_every 3 --out " +
                                      out.string(), d / "first.log");
  const pid_t first = trainer.pid;
  ASSERT_TRUE(wait_for([&] { return fs::exists(out / "ckpt_00000003.dsv3"); }, 120))
      << slurp(d / "first.log");
  auto r = run_cli("train " + kSmall + "--steps 5 --out " + out.string());
  expect_refused(r, {"in use by another dsv3 process", "pid " + std::to_string(first)},
                 "second trainer, fresh");
  r = run_cli("train --resume " + out.string() + " --steps 5");
  expect_refused(r, {"in use", "pid " + std::to_string(first)}, "second trainer, resuming");
  ::kill(first, SIGKILL);
  EXPECT_EQ(wait_exit(first), 128 + SIGKILL);
  // The kernel released the lock with the process: the run resumes where it was killed.
  const int64_t at = checkpoint_step(list_checkpoints(out.string()).back());
  r = run_cli("train --resume " + out.string() + " --steps " + std::to_string(at + 2));
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(train_steps(out), one_to(at + 2));
}

TEST(RunDirectory, TwoTrainersStartedTogetherOnlyOneRuns) {
  auto d = temp_dir("rel_lock_race");
  const fs::path out = d / "run";
  const std::string args = "train " + kSmall + "--steps 1000000 --save_every 1000 --out " + out.string();
  const Child ca = start_cli(args, d / "a.log"), cb = start_cli(args, d / "b.log");
  const pid_t a = ca.pid, b = cb.pid;
  // the loser exits at once; the winner trains until killed
  int loser_code = -1;
  pid_t winner = -1;
  ASSERT_TRUE(wait_for([&] {
    int status;
    for (pid_t p : {a, b})
      if (::waitpid(p, &status, WNOHANG) == p) {
        loser_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        winner = p == a ? b : a;
        return true;
      }
    return false;
  }, 120));
  const std::string loser_log = slurp(d / (winner == a ? "b.log" : "a.log"));
  EXPECT_EQ(loser_code, 1) << loser_log;
  EXPECT_TRUE(has(loser_log, "in use by another dsv3 process (pid " + std::to_string(winner)) ||
              has(loser_log, "is not empty"))
      << loser_log;
  EXPECT_EQ(::waitpid(winner, nullptr, WNOHANG), 0) << "the winner stopped too";
  ::kill(winner, SIGKILL);
  wait_exit(winner);
}

// Case 3: a full disk left metrics.jsonl at 0 bytes and nothing was reported. Every file is
// limited here, so the metrics file fails first (the checkpoint is saved only at the end).
TEST(WriteFailure, MetricsWriteFailureStopsTheRunNamingFileAndReason) {
  auto d = temp_dir("rel_fsize_metrics");
  auto r = run_cli_limited("train " + kSmall + "--steps 40 --save_every 0 --out " + d.string(), 3000);
  expect_refused(r, {"cannot write the metrics file", (d / "metrics.jsonl").string(), "File too large"},
                 "train with a 3000-byte file limit");
  // the failure is at the first record that did not fit, not at the end of the run
  EXPECT_FALSE(has(r.out, "step 40/40")) << r.out;
}

// Every command that writes reports a failed write with the path and the reason, and exits
// non-zero; none exits 0 with a cut file.
TEST(WriteFailure, EveryWriterNamesThePathAndReason) {
  auto d = temp_dir("rel_fsize_all");
  auto r = run_cli("train " + kSmall + "--steps 2 --out " + (d / "run").string());
  ASSERT_EQ(r.code, 0) << r.out;
  r = run_cli("export --model " + (d / "run").string() + " --out " + (d / "hf").string());
  ASSERT_EQ(r.code, 0) << r.out;
  spit(d / "in.jsonl", "{\"text\": \"" + std::string(5000, 'a') + " end.\"}\n");
  // 2 KiB stops every writer at its first large write; train gets 64 KiB, which its metrics
  // (a start record with every setting, then one record per step) fit but a checkpoint does not
  const struct {
    std::string args, file;
    rlim_t limit = 2048;
  } cases[] = {
      {"train " + kSmall + "--steps 2 --out " + (d / "t").string(), "ckpt_00000002.dsv3", 65536},
      {"export --model " + (d / "run").string() + " --out " + (d / "hf2").string(), "model.safetensors"},
      {"import --hf " + (d / "hf").string() + " --out " + (d / "back.dsv3").string(), "back.dsv3"},
      {"tokenizer export --tokenizer " + shared_dir().string() + "/data/tokenizers/gpt2 --format hf "
       "--out " + (d / "tok.json").string(), "tok.json"},
      {"curate --input " + (d / "in.jsonl").string() + " --output " + (d / "cur").string() +
       " --compression none --stages normalize", "cur"},
  };
  for (const auto& c : cases) {
    if (has(c.args, "tokenizer export") && !have_shared()) continue;
    r = run_cli_limited(c.args, c.limit);
    expect_refused(r, {"cannot write", c.file, "File too large"}, c.args);
  }
  // standard output to a full device
  r = run_cli_limited("info --preset tiny", RLIM_INFINITY, "/dev/full");
  expect_refused(r, {"cannot write the standard output", "No space left on device"}, "info > /dev/full");
}

// Case 4: a resumed run replayed the steps after its checkpoint and appended a second record for
// each. The trainer is killed for real (SIGKILL) past a checkpoint, then resumed.
TEST(RunDirectory, KilledAndResumedRunHasOneRecordPerStep) {
  auto d = temp_dir("rel_replay");
  const fs::path out = d / "run";
  const Child trainer = start_cli("train " + kSmall + "--steps 1000000 --save_every 5 --keep 2 --out " +
                                      out.string(), d / "log");
  const pid_t pid = trainer.pid;
  ASSERT_TRUE(wait_for([&] {
    return fs::exists(out / "ckpt_00000005.dsv3") && live_train_records(out) >= 8;
  }, 120)) << slurp(d / "log");
  ::kill(pid, SIGKILL);
  wait_exit(pid);
  const size_t before = live_train_records(out);
  const int64_t at = checkpoint_step(list_checkpoints(out.string()).back());
  auto r = run_cli("train --resume " + out.string() + " --steps " + std::to_string(at + 6));
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(train_steps(out), one_to(at + 6));
  const auto starts = read_metrics((out / "metrics.jsonl").string(), "start");
  ASSERT_EQ(starts.size(), 2u);  // the first start and the resume
  EXPECT_EQ(starts[1]["step"], at);
  // the superseded records are kept aside, not lost (when the kill left any: it usually lands
  // between two checkpoints)
  if (before > size_t(at)) {
    EXPECT_GE(live_train_records(out, "metrics_replayed.jsonl"), before - size_t(at));
  }
}

TEST(RunDirectory, MetricsTailCutMidRecordIsMovedAside) {
  auto d = temp_dir("rel_cut_tail");
  auto r = run_cli("train " + kSmall + "--steps 6 --save_every 3 --keep 5 --out " + d.string());
  ASSERT_EQ(r.code, 0) << r.out;
  fs::remove(d / "ckpt_00000006.dsv3");  // killed after step 6 before its save ...
  std::string m = slurp(d / "metrics.jsonl");
  spit(d / "metrics.jsonl", m + "{\"kind\": \"train\", \"step\": 7, \"lo");  // ... mid-record
  r = run_cli("train --resume " + d.string() + " --steps 7");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(train_steps(d), one_to(7));  // every line parses: the cut record is gone
}

// ================================================================ silently accepted (5-11)

// Case 5: --config naming a directory ran with an empty config; a duplicate key kept the last
// value silently; a UTF-8 BOM made the first key unknown.
TEST(BadInput, ConfigFiles) {
  auto d = temp_dir("rel_cfg");
  auto r = run_cli("info --config " + d.string());
  expect_refused(r, {"cannot read config file", "directory"}, "--config DIR");
  spit(d / "dup.cfg", "hidden = 64\nlayers = 2\nhidden = 128\n");
  r = run_cli("info --config " + (d / "dup.cfg").string());
  expect_refused(r, {"dup.cfg:3", "'hidden' is set again (first at line 1)"}, "duplicate key");
  spit(d / "bom.cfg", "\xef\xbb\xbfhidden = 96\n");
  r = run_cli("info --json --config " + (d / "bom.cfg").string());
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(json::parse(r.out)["config"]["hidden"], 96);
  spit(d / "nul.cfg", std::string("hidden = 9\0\0", 12));
  r = run_cli("info --config " + (d / "nul.cfg").string());
  expect_refused(r, {"NUL bytes"}, "binary config");
}

// Case 6: negative loss weights and mtp_late_from > 1 were accepted. Every numeric setting now
// has a range in its field table, checked when set and shown by --help.
TEST(BadInput, EveryNumericSettingHasACheckedRange) {
  const std::pair<std::string, std::string> cases[] = {
      {"--mtp_weight -1", "mtp_weight must be >= 0 (got -1)"},
      {"--mtp_weight_late -0.5", "mtp_weight_late must be >= 0"},
      {"--balance_alpha -1", "balance_alpha must be >= 0"},
      {"--bias_update_rate -1e-3", "bias_update_rate must be >= 0"},
      {"--mtp_late_from 1.5", "mtp_late_from must be in [0, 1]"},
      {"--beta2 1", "beta2 must be in [0, 1)"},
  };
  for (const auto& [flag, msg] : cases) {
    auto r = run_cli("train " + kSmall + "--steps 1 --out /nonexistent/x " + flag);
    expect_refused(r, {msg}, flag);
  }
  // --help of every command: each int or float setting states its range
  for (const char* cmd : {"train", "eval", "sample", "serve", "bench", "info", "export", "import",
                          "prepare", "curate", "curate train-classifier", "tokenizer train",
                          "tokenizer encode", "tokenizer decode", "report", "sweep", "launch",
                          "quantize", "prune"}) {
    auto r = run_cli(std::string(cmd) + " --help");
    ASSERT_EQ(r.code, 0) << cmd << "\n" << r.out;
    // entries: a "  --name type" line and its continuation lines
    std::vector<std::string> entries;
    std::istringstream in(r.out);
    for (std::string line; std::getline(in, line);) {
      if (line.rfind("  --", 0) == 0) entries.push_back(line);
      else if (!entries.empty() && line.rfind("         ", 0) == 0) entries.back() += line;
      else entries.push_back("");
    }
    for (const auto& e : entries) {
      std::istringstream words(e);
      std::string name, type;
      words >> name >> type;
      if (type != "int" && type != "float") continue;
      EXPECT_TRUE(has(e, "(>") || has(e, "(in ") || has(e, "(<"))
          << cmd << ": " << name << " shows no range: " << e;
    }
  }
}

// Case 7: --preset tiny resumed a debug checkpoint silently; --hidden 64, the checkpoint's own
// value, was refused as a change. Both now compare values: the original command line is fine.
TEST(BadInput, ResumeComparesTheModelByValue) {
  auto d = temp_dir("rel_resume_model");
  auto r = run_cli("train " + kSmall + "--steps 2 --out " + d.string());
  ASSERT_EQ(r.code, 0) << r.out;
  r = run_cli("train --preset tiny --resume " + d.string() + " --steps 3");
  expect_refused(r, {"--preset tiny describes another model", "hidden"}, "--preset tiny on a debug run");
  r = run_cli("train --resume " + d.string() + " --hidden 64 --steps 3");
  EXPECT_EQ(r.code, 0) << r.out;
  r = run_cli("train " + kSmall + "--resume " + d.string() + " --steps 4");  // the original line
  EXPECT_EQ(r.code, 0) << r.out;
  r = run_cli("train --resume " + d.string() + " --hidden 32 --steps 5");
  expect_refused(r, {"--hidden 32 changes the model"}, "--hidden 32");
}

// Case 8: eval clamped --seq_len to max_seq silently, and printed "loss nan" with exit 0.
TEST(BadInput, EvalRefusesTooLongSequencesAndNonFiniteLoss) {
  auto d = temp_dir("rel_eval");
  auto r = run_cli("train " + kSmall + "--steps 1 --out " + d.string());
  ASSERT_EQ(r.code, 0) << r.out;
  std::vector<int32_t> ids(20000, 7);
  write_token_file((d / "val.bin").string(), ids);
  r = run_cli("eval --model " + d.string() + " --data " + (d / "val.bin").string() +
              " --seq_len 5000 --batch 1");
  expect_refused(r, {"seq_len 5000 exceeds the model's max_seq"}, "eval --seq_len 5000");
  // the same model with NaN weights
  Checkpoint ck = load_checkpoint(list_checkpoints(d.string()).back());
  std::fill(ck.params.begin(), ck.params.end(), NAN);
  save_checkpoint((d / "nan.dsv3").string(), ck.config, ck.train, ck.params.data(), nullptr,
                  nullptr, ck.params.size());
  r = run_cli("eval --model " + (d / "nan.dsv3").string() + " --data " + (d / "val.bin").string() +
              " --seq_len 32 --batch 2 --max_batches 2");
  expect_refused(r, {"not finite", "NaN"}, "eval of a NaN model");
}

std::string gpt2_dir() { return (shared_dir() / "data" / "tokenizers" / "gpt2").string(); }

// A small valid tokenizer.json (exported by dsv3 from the GPT-2 files), as JSON.
json small_tokenizer_json(const fs::path& dir) {
  auto r = run_cli("tokenizer export --tokenizer " + gpt2_dir() + " --format hf --out " +
                   (dir / "gpt2.json").string());
  EXPECT_EQ(r.code, 0) << r.out;
  return json::parse(slurp(dir / "gpt2.json"));
}

// Case 9: an empty vocab.bpe gave a byte-level tokenizer; tokenizer.json's dropout and
// TemplateProcessing were ignored while other unsupported pieces were refused.
TEST(BadInput, TokenizerPiecesAreReadOrRefusedConsistently) {
  DSV3_REQUIRE_SHARED();
  auto d = temp_dir("rel_tok");
  fs::create_directories(d / "g");
  fs::copy_file(gpt2_dir() + "/encoder.json", d / "g" / "encoder.json");
  spit(d / "g" / "vocab.bpe", "");
  auto r = run_cli("tokenizer info --tokenizer " + (d / "g").string());
  expect_refused(r, {"vocab.bpe", "empty file"}, "empty vocab.bpe");

  json j = small_tokenizer_json(d);
  j["model"]["dropout"] = 0.1;
  spit(d / "tokenizer.json", j.dump());
  r = run_cli("tokenizer info --tokenizer " + (d / "tokenizer.json").string());
  expect_refused(r, {"dropout 0.1 is not supported"}, "dropout");

  j["model"]["dropout"] = nullptr;
  j["post_processor"] = {{"type", "BertProcessing"}};
  spit(d / "tokenizer.json", j.dump());
  r = run_cli("tokenizer info --tokenizer " + (d / "tokenizer.json").string());
  expect_refused(r, {"post_processor 'BertProcessing' is not supported"}, "BertProcessing");

  // [bos] $A: the template names the bos role (here a token the defaults would not pick)
  j["added_tokens"].push_back({{"id", 50257}, {"content", "<|start|>"}, {"special", true}});
  j["post_processor"] = {
      {"type", "TemplateProcessing"},
      {"single", {{{"SpecialToken", {{"id", "<|start|>"}, {"type_id", 0}}}},
                  {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}}};
  spit(d / "tokenizer.json", j.dump());
  r = run_cli("tokenizer info --json --tokenizer " + (d / "tokenizer.json").string());
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(json::parse(r.out.substr(r.out.find('{')))["roles"]["bos"], 50257) << r.out;
  j["post_processor"]["single"].push_back({{"Sequence", {{"id", "B"}, {"type_id", 1}}}});
  spit(d / "tokenizer.json", j.dump());
  r = run_cli("tokenizer info --tokenizer " + (d / "tokenizer.json").string());
  expect_refused(r, {"TemplateProcessing"}, "a pair template in 'single'");
}

// Case 10: a config.json without routed_scaling_factor imported with dsv3's default (1), not
// transformers' (2.5), silently; a tensor relabelled to another dtype imported as NaN.
TEST(BadInput, HfImportFollowsTransformersDefaultsAndRefusesNonFiniteWeights) {
  auto d = temp_dir("rel_hf");
  auto r = run_cli("train " + kSmall + "--steps 1 --out " + (d / "run").string());
  ASSERT_EQ(r.code, 0) << r.out;
  r = run_cli("export --model " + (d / "run").string() + " --out " + (d / "hf").string() +
              " --dtype bf16");
  ASSERT_EQ(r.code, 0) << r.out;
  json cfg = json::parse(slurp(d / "hf" / "config.json"));
  cfg.erase("routed_scaling_factor");
  spit(d / "hf" / "config.json", cfg.dump());
  r = run_cli("import --hf " + (d / "hf").string() + " --out " + (d / "a.dsv3").string());
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(has(r.out, "transformers' defaults were used: routed_scaling_factor = 2.5")) << r.out;
  EXPECT_EQ(load_checkpoint((d / "a.dsv3").string()).config.route_scale, 2.5);

  // one bf16 element of one tensor replaced by the bytes of a NaN
  const std::string st = (d / "hf" / "model.safetensors").string();
  std::string bytes = slurp(st);
  const SafetensorsReader reader(st);
  const SafetensorsEntry* e = reader.find("model.norm.weight");
  ASSERT_NE(e, nullptr);
  const size_t at = size_t(8 + load_u64le(bytes.data()) + e->begin + 2);
  bytes[at] = char(0xc0), bytes[at + 1] = char(0x7f);
  spit(st, bytes);
  r = run_cli("import --hf " + (d / "hf").string() + " --out " + (d / "b.dsv3").string());
  expect_refused(r, {"model.norm.weight", "nan", "element 1", "must be finite"}, "NaN weight");
  EXPECT_FALSE(fs::exists(d / "b.dsv3"));
}

std::string gzip_bytes(const fs::path& dir, const std::string& s) {
  const fs::path p = dir / "tmp.gz";
  write_file_atomic(p.string(), [&](std::FILE* f) {
    curate::StreamWriter w(f, curate::Compression::Gzip, 6);
    w.write(s);
    w.finish();
  });
  return slurp(p);
}

// Case 11: curate on a corrupt .gz printed "0 read, 0 kept, 0 rejected" and exited 0; a .gz name
// on an uncompressed file gave broken_json.
TEST(BadInput, CurateSaysWhenAnInputCannotBeRead) {
  auto d = temp_dir("rel_curate_read");
  std::string lines;
  for (int i = 0; i < 50; i++)
    lines += "{\"text\": \"Document number " + std::to_string(i) + " is about the weather. It "
             "rained on the hills and the rivers rose, so the people stayed at home.\"}\n";
  const std::string gz = gzip_bytes(d, lines);
  spit(d / "cut.jsonl.gz", gz.substr(0, gz.size() / 2));
  spit(d / "plain.jsonl.gz", lines);
  spit(d / "good.jsonl", lines);
  const std::string common = " --stages normalize --compression none --output ";
  auto r = run_cli("curate --input " + (d / "cut.jsonl.gz").string() + common + (d / "o1").string());
  expect_refused(r, {"cut.jsonl.gz", "gzip", "cannot be read", "--skip_unreadable"}, "cut .gz");
  r = run_cli("curate --input " + (d / "plain.jsonl.gz").string() + common + (d / "o2").string());
  expect_refused(r, {"plain.jsonl.gz: not a gzip file", "text"}, "plain file named .gz");
  EXPECT_FALSE(has(r.out, "broken_json"));
  r = run_cli("curate --skip_unreadable --input " + (d / "cut.jsonl.gz").string() + "," +
              (d / "good.jsonl").string() + common + (d / "o3").string());
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(has(r.out, "warning: 1 input(s) could not be read")) << r.out;
}

// ================================================================ messages (12-17)

// Case 12: truncated checkpoints said "bad n_params" at some cut points.
TEST(BadInput, TruncatedCheckpointSaysTruncatedAtEveryCut) {
  auto d = temp_dir("rel_trunc");
  auto r = run_cli("train " + kSmall + "--steps 1 --out " + d.string());
  ASSERT_EQ(r.code, 0) << r.out;
  const std::string bytes = slurp(list_checkpoints(d.string()).back());
  std::set<size_t> cuts = {1, 8, 23, 24, 25, 100};
  for (size_t k = 1; k < 64; k++) cuts.insert(bytes.size() * k / 64);
  for (size_t k = 1; k < 8; k++) cuts.insert(bytes.size() - k);
  const fs::path cut = d / "cut.dsv3";
  for (size_t n : cuts) {
    spit(cut, bytes.substr(0, n));
    r = run_cli("export --model " + cut.string() + " --out " + (d / "hf").string());
    expect_refused(r, {"truncated: file is " + std::to_string(n) + " bytes, expected"},
                   "cut at " + std::to_string(n));
  }
}

// Case 13: messages quoting file content stopped at a NUL byte; decode on a shard did not say
// what the file is.
TEST(BadInput, QuotedContentIsEscapedAndFilesAreNamed) {
  DSV3_REQUIRE_SHARED();
  auto d = temp_dir("rel_quote");
  fs::create_directories(d / "g");
  fs::copy_file(gpt2_dir() + "/encoder.json", d / "g" / "encoder.json");
  spit(d / "g" / "vocab.bpe", std::string("#version: 0.2\nab\0cd after-the-nul\n", 34));
  auto r = run_cli("tokenizer info --tokenizer " + (d / "g").string());
  expect_refused(r, {"vocab.bpe:2", "token 'ab\\x00cd' is not in"}, "vocab.bpe with a NUL");
  std::vector<int32_t> ids = {1, 2, 3};
  write_token_file((d / "t.bin").string(), ids);
  spit(d / "blob.bin", std::string("\x01\x02\x00\x03garbage", 11));
  r = run_cli("tokenizer decode --tokenizer " + gpt2_dir() + " --input " + (d / "blob.bin").string());
  expect_refused(r, {"blob.bin", "not token ids"}, "decode of a binary file");
  r = run_cli("tokenizer decode --tokenizer " + (d / "t.bin").string() + " --ids 1");
  expect_refused(r, {"t.bin", "llm.c token file"}, "an llm.c shard as the tokenizer");
  // a prepared (dsv3) shard is no list of ids; an llm.c shard with ids past the vocabulary
  ShardInfo info;
  info.domain = "web", info.split = "train", info.vocab_size = 100, info.eos = 0;
  ShardWriter w((d / "part.shard").string(), info);
  w.add_document(std::vector<int32_t>{5, 6, 7}, 9);
  w.finish();
  r = run_cli("tokenizer decode --tokenizer " + gpt2_dir() + " --input " + (d / "part.shard").string());
  expect_refused(r, {"part.shard is not token ids (a dsv3 token shard)", "train --data"},
                 "decode of a prepared shard");
  write_token_file((d / "big.bin").string(), {1, 60000, 2});
  r = run_cli("tokenizer decode --tokenizer " + gpt2_dir() + " --input " + (d / "big.bin").string());
  expect_refused(r, {"big.bin: cannot decode", "60000"}, "decode of ids past the vocabulary");
}

// Case 14: a negative --max_batches named the wrong setting; absurd --batch/--seq_len reached
// an allocation ("cannot create std::vector larger than max_size()").
TEST(BadInput, RangeChecksComeFirstAndNameTheSetting) {
  auto r = run_cli("eval --model x --data y --max_batches -1");
  expect_refused(r, {"max_batches must be >= 0 (got -1)"}, "--max_batches -1");
  r = run_cli("train --batch 2000000000 --seq_len 2000000000 --steps 1 --out /nonexistent/x");
  expect_refused(r, {"batch must be in [1, 1048576] (got 2000000000)"}, "huge batch");
  EXPECT_FALSE(has(r.out, "max_size"));
  r = run_cli("train --preset debug --max_seq 1048576 --batch 4096 --seq_len 1048576 --steps 1 "
              "--out /nonexistent/x");
  expect_refused(r, {"tokens per micro-batch"}, "batch x seq_len beyond 2^31");
}

// Case 15: a tokenizer.json that is [] or has no "model" was reported as a missing vocab.bpe.
TEST(BadInput, TokenizerJsonWithoutAModelIsNamedAsSuch) {
  auto d = temp_dir("rel_tokjson");
  for (const std::string body : {"[]", "{\"version\": \"1.0\", \"added_tokens\": []}", "{}"}) {
    spit(d / "tokenizer.json", body);
    auto r = run_cli("tokenizer info --tokenizer " + (d / "tokenizer.json").string());
    expect_refused(r, {"tokenizer.json", "needs a \"model\" object"}, body);
    EXPECT_FALSE(has(r.out, "vocab.bpe")) << r.out;
  }
  spit(d / "other.json", "[1, 2]");
  auto r = run_cli("tokenizer info --tokenizer " + (d / "other.json").string());
  expect_refused(r, {"other.json", "got a JSON array"}, "a JSON array");
}

// Case 16: curate --strict on a bad line reported a chain of write failures.
TEST(BadInput, CurateStrictReportsTheReadErrorNotWrites) {
  auto d = temp_dir("rel_strict");
  spit(d / "in.jsonl", "{\"text\": \"fine document here.\"}\n{broken\n");
  auto r = run_cli("curate --strict --input " + (d / "in.jsonl").string() + " --output " +
                   (d / "o").string() + " --compression none");
  expect_refused(r, {"in.jsonl:2", "broken_json", "fatal with --strict"}, "--strict");
  EXPECT_FALSE(has(r.out, "cannot write")) << r.out;
}

// Case 17: the train state was not range-checked: negative or mistyped values started odd runs
// or leaked the JSON library's messages.
TEST(BadInput, CheckpointTrainStateIsChecked) {
  auto d = temp_dir("rel_state");
  auto r = run_cli("train " + kSmall + "--steps 2 --out " + (d / "run").string());
  ASSERT_EQ(r.code, 0) << r.out;
  const Checkpoint ck = load_checkpoint((d / "run" / "ckpt_00000002.dsv3").string());
  const struct {
    std::function<void(json&)> edit;
    std::string expect;
  } cases[] = {
      {[](json& t) { t["steps_done"] = -5; }, "'steps_done' must be a non-negative integer, got -5"},
      {[](json& t) { t["steps_done"] = "2"; }, "'steps_done' must be a non-negative integer"},
      {[](json& t) { t["tokens_seen"] = -1; }, "'tokens_seen' must be a non-negative integer"},
      {[](json& t) { t["attempts"] = 1.5; }, "'attempts' must be a non-negative integer"},
      {[](json& t) { t["optimizer_updates"] = 99; }, "inconsistent"},
      {[](json& t) { t["rng"] = {1, 2, "x", 4}; }, "rng state is malformed"},
      {[](json& t) { t["rng"] = {0, 0, 0, 0}; }, "all zero"},
      {[](json& t) { t["guard"] = {{"window", {1.0, "x"}}}; }, "guard state"},
      {[](json& t) { t["guard"]["bad_streak"] = -1; }, "'bad_streak' must be a non-negative"},
      {[](json& t) { t["data"] = 5; }, "'data' must be an object"},
      {[](json& t) { t["run_id"] = 7; }, "'run_id' must be a string"},
  };
  int i = 0;
  for (const auto& c : cases) {
    json t = ck.train;
    c.edit(t);
    const fs::path dir = d / ("case" + std::to_string(i++));
    fs::create_directories(dir);
    save_checkpoint((dir / "ckpt_00000002.dsv3").string(), ck.config, t, ck.params.data(),
                    ck.adam_m.data(), ck.adam_v.data(), ck.params.size());
    r = run_cli("train --resume " + dir.string() + " --steps 4");
    expect_refused(r, {c.expect}, t.dump().substr(0, 200));
    EXPECT_FALSE(has(r.out, "json.exception")) << r.out;
  }
}

}  // namespace
}  // namespace dsv3::test

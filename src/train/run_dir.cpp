#include "train/run_dir.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <random>

#include <fcntl.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "checkpoint/checkpoint.h"
#include "checkpoint/sharded.h"
#include "core/check.h"
#include "core/io.h"

namespace dsv3 {

namespace fs = std::filesystem;

std::string new_run_id() {
  std::random_device rd;
  uint64_t x = uint64_t(rd()) << 32 ^ uint64_t(rd());
  x ^= uint64_t(std::chrono::system_clock::now().time_since_epoch().count()) * 0x9e3779b97f4a7c15ull;
  x ^= uint64_t(::getpid()) << 40;
  char buf[24];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(x));
  return buf;
}

namespace {

std::string host_name() {
  char h[256] = {};
  if (::gethostname(h, sizeof h - 1) != 0) return "?";
  return h;
}

// Takes the advisory lock on dir/dsv3.lock (a POSIX record lock: released by the kernel when the
// process ends, however it ends, and visible across NFS). The file then holds "pid host".
int lock_run_directory(const std::string& dir) {
  const std::string path = (fs::path(dir) / kRunLockName).string();
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  DSV3_CHECK(fd >= 0, "cannot create the run directory's lock file ", path, ": ",
             std::strerror(errno));
  struct flock fl = {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  if (::fcntl(fd, F_SETLK, &fl) != 0) {
    const int e = errno;
    if (e != EACCES && e != EAGAIN) {
      ::close(fd);
      fail("cannot lock ", path, ": ", std::strerror(e));
    }
    // Who holds it: the kernel's answer (0 when the holder is in another pid namespace), else
    // what the holder wrote into the file.
    struct flock q = {};
    q.l_type = F_WRLCK;
    q.l_whence = SEEK_SET;
    std::string holder;
    if (::fcntl(fd, F_GETLK, &q) == 0 && q.l_type != F_UNLCK && q.l_pid > 0)
      holder = "pid " + std::to_string(q.l_pid);
    char text[300] = {};
    const ssize_t n = ::pread(fd, text, sizeof text - 1, 0);
    ::close(fd);
    std::string written = n > 0 ? std::string(text, size_t(n)) : "";
    while (!written.empty() && (written.back() == '\n' || written.back() == '\r')) written.pop_back();
    if (const size_t sp = written.find(' '); !written.empty() && sp != std::string::npos) {
      const std::string pid = written.substr(0, sp), host = written.substr(sp + 1);
      if (holder.empty()) holder = "pid " + pid;
      if (host != host_name()) holder += " on " + quote_bytes(host, 64);
    }
    fail("run directory ", dir, " is in use by another dsv3 process (",
         holder.empty() ? "pid unknown" : holder, "): two runs cannot share a run directory. "
         "Wait for it to finish, stop it, or choose another --out");
  }
  const std::string me = std::to_string(::getpid()) + " " + host_name() + "\n";
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, me.data(), me.size(), 0) != ssize_t(me.size())) {
    const int e = errno;
    ::close(fd);
    fail("cannot write the lock file ", path, ": ", std::strerror(e));
  }
  return fd;
}

enum class Kind { Own, Later, Foreign, RunFile, Temp, Other };

struct Entry {
  fs::path path;
  Kind kind;
  int64_t step = -1;
  std::string note;  // why a checkpoint is foreign
};

bool is_run_file(const std::string& name) {
  return name == "metrics.jsonl" || name == "metrics_replayed.jsonl" ||
         name == "tokenizer.dsv3tok" || name.rfind("events.out.tfevents.", 0) == 0;
}

// Files of whoever supervises the run in this directory, not of a run: `dsv3 launch` logs its
// attempts to launch.jsonl before the first start and marks a debug rank fault as done so a
// restart gets past it; `dsv3 sweep` sends a trial's console output to train.log before the
// trial's train starts. They never block a run and are never deleted.
bool is_supervisor_file(const std::string& name) {
  return name == kRunLockName || name == "launch.jsonl" || name == ".rank_fault_done" ||
         name == "train.log";
}

std::string describe(const std::vector<const Entry*>& list) {
  std::string s;
  const size_t show = 4;
  for (size_t i = 0; i < list.size() && i < show; i++) {
    s += (i ? ", " : "") + list[i]->path.filename().string();
    if (!list[i]->note.empty()) s += " (" + list[i]->note + ")";
  }
  if (list.size() > show) s += " and " + std::to_string(list.size() - show) + " more";
  return s;
}

void remove_file(const fs::path& p) {  // a file, or a sharded checkpoint's directory
  std::error_code ec;
  fs::remove_all(p, ec);
  DSV3_CHECK(!ec, "cannot delete ", p.string(), ": ", ec.message());
}

// The train state in a sharded checkpoint's manifest.json.
nlohmann::json sharded_train_state(const std::string& dir) {
  const std::string path = (fs::path(dir) / "manifest.json").string();
  try {
    const nlohmann::json m = nlohmann::json::parse(read_file(path));
    return m.at("train");
  } catch (const nlohmann::json::exception& e) {
    fail(path, ": ", json_error_text(e));
  }
}

bool by_step(const std::string& a, const std::string& b) {
  return any_checkpoint_step(a) < any_checkpoint_step(b);
}

}  // namespace

RunDirectory::RunDirectory(const std::string& dir, const RunOrigin& origin, bool overwrite)
    : dir_(dir), run_id_(origin.run_id) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  DSV3_CHECK(!ec, "cannot create the run directory ", dir, ": ", ec.message());
  DSV3_CHECK(fs::is_directory(dir, ec), "--out ", dir, " is not a directory");
  lock_fd_ = lock_run_directory(dir);
  try {
    const bool resuming = !origin.checkpoint.empty();
    std::vector<Entry> entries;
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
      const std::string name = it->path().filename().string();
      if (is_supervisor_file(name)) continue;
      Entry e{it->path(), Kind::Other, -1, ""};
      std::error_code fe;
      const int64_t step = any_checkpoint_step(name);
      const bool file = checkpoint_step(name) >= 0 && it->is_regular_file(fe);
      const bool shards = step >= 0 && !file && it->is_directory(fe);
      if (shards && !is_sharded_checkpoint(e.path.string())) {
        e.kind = Kind::Temp;  // a sharded save that never committed (no manifest.json)
        e.step = step;
      } else if (file || shards) {
        e.step = step;
        e.kind = Kind::Foreign;
        try {
          const nlohmann::json train = file ? load_checkpoint_train_state(e.path.string())
                                            : sharded_train_state(e.path.string());
          const nlohmann::json id = train.is_object() ? train.value("run_id", nlohmann::json(""))
                                                      : nlohmann::json();
          if (!id.is_string()) e.note = "unreadable run id";
          else if (!resuming) e.note = "";
          else if (id.get<std::string>() != origin.run_id) e.note = "another run";
          else e.kind = e.step <= origin.step ? Kind::Own : Kind::Later;
        } catch (const Error&) {
          e.note = "unreadable";
        }
      } else if (is_checkpoint_temp(name)) {
        e.kind = Kind::Temp;
      } else if (is_run_file(name)) {
        e.kind = Kind::RunFile;
      }
      entries.push_back(std::move(e));
    }
    DSV3_CHECK(!ec, "cannot list the run directory ", dir, ": ", ec.message());
    std::sort(entries.begin(), entries.end(),
              [](const Entry& a, const Entry& b) { return a.path < b.path; });
    const bool own_dir = std::any_of(entries.begin(), entries.end(),
                                     [](const Entry& e) { return e.kind == Kind::Own; });
    // What stands in the way: in this run's own directory, other runs' and later checkpoints;
    // anywhere else, anything at all.
    std::vector<const Entry*> blocking;
    for (const Entry& e : entries)
      if (!own_dir || e.kind == Kind::Foreign || e.kind == Kind::Later) blocking.push_back(&e);
    if (!blocking.empty() && !overwrite) {
      std::vector<const Entry*> ckpts;
      for (const Entry* e : blocking)
        if (e->step >= 0) ckpts.push_back(e);
      if (own_dir) {
        const bool later = std::any_of(blocking.begin(), blocking.end(),
                                       [](const Entry* e) { return e->kind == Kind::Later; });
        fail("run directory ", dir, " holds checkpoints ",
             later ? "of this run after step " + std::to_string(origin.step) +
                         ", the one resumed from"
                   : std::string("of another run"),
             ": ", describe(blocking), ". ",
             later ? "Resuming from step " + std::to_string(origin.step) +
                         " would abandon them: resume from the latest (--resume " + dir +
                         "), write this run elsewhere (--out NEW_DIR), "
                   : std::string("Move them away, write this run elsewhere (--out NEW_DIR), "),
             "or pass --overwrite to delete them");
      }
      fail("run directory ", dir, " is not empty: it holds ", describe(blocking),
           ckpts.empty() ? std::string()
                         : " (" + std::to_string(ckpts.size()) + " checkpoint(s) of " +
                               (resuming ? "another run" : "a run") + ")",
           ". A ", resuming ? "resumed" : "new", " run would mix with what is there: ",
           resuming || ckpts.empty() ? std::string() : "resume that run with --resume " + dir + ", ",
           "choose another --out, or pass --overwrite to delete the files of runs there");
    }
    // --overwrite: delete the other runs' files and the abandoned checkpoints; keep files that
    // are no run's (a user's notes).
    for (const Entry* e : blocking)
      if (e->kind != Kind::Other) remove_file(e->path);
    for (const Entry& e : entries)
      if (e.kind == Kind::Own) own_.push_back(e.path.string());
    std::sort(own_.begin(), own_.end(), by_step);
    remove_stale_checkpoint_temps(dir);
    if (resuming && own_dir) {
      const std::string metrics = (fs::path(dir) / "metrics.jsonl").string();
      if (fs::exists(metrics))
        truncate_metrics_after(metrics, (fs::path(dir) / "metrics_replayed.jsonl").string(),
                               origin.step);
    }
  } catch (...) {
    ::close(lock_fd_);
    throw;
  }
}

RunDirectory::~RunDirectory() {
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

void RunDirectory::saved(const std::string& checkpoint, int keep) {
  if (std::find(own_.begin(), own_.end(), checkpoint) == own_.end()) own_.push_back(checkpoint);
  std::sort(own_.begin(), own_.end(), by_step);
  while (keep > 0 && own_.size() > size_t(keep)) {
    std::error_code ec;
    fs::remove_all(own_.front(), ec);
    DSV3_CHECK(!ec, "cannot delete old checkpoint ", own_.front(), ": ", ec.message());
    own_.erase(own_.begin());
  }
  remove_stale_checkpoint_temps(dir_);
  // Sharded saves of this run that never committed, older than this one: abandoned (only this
  // run writes here while it holds the lock).
  const int64_t now = any_checkpoint_step(checkpoint);
  std::error_code ec;
  for (fs::directory_iterator it(dir_, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string p = it->path().string();
    const int64_t step = any_checkpoint_step(p);
    std::error_code fe;
    if (step >= 0 && step < now && it->is_directory(fe) && !is_sharded_checkpoint(p)) {
      std::error_code rm;
      fs::remove_all(p, rm);  // best effort, like a stale temp file
    }
  }
}

size_t truncate_metrics_after(const std::string& metrics, const std::string& replayed,
                              int64_t step) {
  const std::string text = read_file(metrics);
  std::string keep, moved;
  size_t n_moved = 0;
  for (size_t pos = 0; pos < text.size();) {
    const size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) {  // a record cut short by a kill or a full disk
      moved += text.substr(pos) + "\n";
      n_moved++;
      break;
    }
    const std::string line = text.substr(pos, nl + 1 - pos);
    pos = nl + 1;
    bool later = false;
    try {
      const nlohmann::json j = nlohmann::json::parse(line);
      later = j.is_object() && j.contains("step") && j["step"].is_number_integer() &&
              j["step"].get<int64_t>() > step;
    } catch (const nlohmann::json::exception&) {
      // not a record this run can place: kept where it is
    }
    (later ? moved : keep) += line;
    n_moved += later;
  }
  if (n_moved == 0) return 0;
  std::string before;
  if (fs::exists(replayed)) before = read_file(replayed);
  write_file_atomic(replayed, [&](std::FILE* f) {
    write_bytes(f, before.data(), before.size());
    write_bytes(f, moved.data(), moved.size());
  });
  write_file_atomic(metrics, [&](std::FILE* f) { write_bytes(f, keep.data(), keep.size()); });
  return n_moved;
}

}  // namespace dsv3

// `dsv3 launch -np N [--max_restarts K] [--min_ranks M] -- train ...` (P7): runs the training
// under mpirun (or srun) and, when a rank dies (kill -9) or the job hangs (the collective
// watchdog makes a hang an error; --hang_timeout also watches metrics.jsonl), starts it again
// from the last complete checkpoint, on fewer ranks when fewer are available (--hostfile slots)
// and at least --min_ranks remain. The global batch is pinned at its first value, so a restart
// on another world size continues the same training (docs/parallel.md). Each restart is logged
// on the console and in OUT/launch.jsonl.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <sstream>
#include <thread>

#include "checkpoint/sharded.h"
#include "commands.h"
#include "core/check.h"
#include "core/timer.h"
#include "flags.h"
#include "train/run_config.h"

namespace dsv3::cli {

namespace {

struct LaunchConfig {
  int np = 1;                  // ranks of the first start
  int max_restarts = 3;
  int min_ranks = 0;           // restart on fewer ranks, down to this many (0 = np: never fewer)
  std::string launcher = "mpirun";  // mpirun | srun
  std::string launcher_bin;    // the launcher's executable (default: the mpirun dsv3 was built with)
  std::string launcher_args;   // extra arguments for it, e.g. "--oversubscribe --allow-run-as-root"
  std::string hostfile;        // mpirun --hostfile; its slots bound the ranks of each start
  double hang_timeout = 0;     // restart when metrics.jsonl stops growing this long (0 = off)
  double restart_delay = 1;    // seconds between a failure and the next start
};

const std::vector<FieldSpec>& launch_fields() {
  using L = LaunchConfig;
  static const std::vector<FieldSpec> f = {
      field("np", &L::np, "ranks to start (also -np)", in_range(1, 1 << 20)),
      field("max_restarts", &L::max_restarts, "restarts after failures before giving up", in_range(0, 1 << 20)),
      field("min_ranks", &L::min_ranks,
            "restart on fewer ranks when fewer slots remain, down to this many (0 = np)", in_range(0, 1 << 20)),
      field("launcher", &L::launcher, "mpirun or srun"),
      field("launcher_bin", &L::launcher_bin, "the launcher executable (default: found at build)"),
      field("launcher_args", &L::launcher_args, "extra launcher arguments (space separated)"),
      field("hostfile", &L::hostfile, "mpirun hostfile; its slots bound the ranks of each start"),
      field("hang_timeout", &L::hang_timeout,
            "restart when OUT/metrics.jsonl has not grown for this many seconds (0 = off; the "
            "collective watchdog --collective_timeout catches hung collectives)", at_least(0)),
      field("restart_delay", &L::restart_delay, "seconds to wait before a restart", at_least(0)),
  };
  return f;
}

std::vector<std::string> split_words(const std::string& s) {
  std::istringstream in(s);
  std::vector<std::string> out;
  for (std::string w; in >> w;) out.push_back(w);
  return out;
}

// Slots in an Open MPI hostfile ("host slots=N" lines; a host without slots counts 1).
int hostfile_slots(const std::string& path) {
  std::ifstream in(path);
  DSV3_CHECK(in, "cannot open hostfile ", path);
  int slots = 0;
  for (std::string line; std::getline(in, line);) {
    if (const size_t h = line.find('#'); h != std::string::npos) line.resize(h);
    const auto words = split_words(line);
    if (words.empty()) continue;
    int n = 1;
    for (const auto& w : words)
      if (w.rfind("slots=", 0) == 0) n = int(parse_int("hostfile slots", w.substr(6)));
    slots += n;
  }
  return slots;
}

std::string self_exe() {
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  DSV3_CHECK(n > 0, "cannot find the dsv3 executable (/proc/self/exe)");
  return std::string(buf, size_t(n));
}

// The training's own settings, read from its arguments the way `dsv3 train` reads them.
RunSpec train_spec(const std::vector<std::string>& args) {
  RunSpec s;
  s.model = preset("tiny");
  std::vector<std::string> store = {"dsv3", "train"};
  store.insert(store.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : store) argv.push_back(a.data());
  parse_args(int(argv.size()), argv.data(), 2, run_groups(s),
             [&](const std::string& p) { s.model = preset(p); });
  return s;
}

// The largest world size <= most, >= least, on which the global batch splits evenly into
// micro-batches and the experts over ep (ep shrinks to a divisor of dp if it must).
bool pick_world(const RunSpec& s, int global, int most, int least, int* world, int* ep) {
  const int tp = s.parallel.tp, pp = s.parallel.pp;
  for (int w = most; w >= std::max(least, 1); w--) {
    if (w % (tp * pp)) continue;
    const int dp = w / (tp * pp);
    if (global % dp || (global / dp) % s.run.batch) continue;
    int e = std::gcd(std::max(s.parallel.ep, 1), dp);
    while (e > 1 && s.model.experts % e) e--;
    while (e > 1 && dp % e) e--;
    *world = w, *ep = std::max(e, 1);
    return true;
  }
  return false;
}

void log_event(const std::string& out, const nlohmann::json& j) {
  std::error_code ec;
  std::filesystem::create_directories(out, ec);
  std::ofstream f(out + "/launch.jsonl", std::ios::app);
  f << j.dump() << "\n";
  f.flush();
  DSV3_CHECK(f.good(), "cannot write ", out, "/launch.jsonl: ", std::strerror(errno));
  std::fprintf(stderr, "dsv3 launch: %s\n", j.value("message", "").c_str());
}

// The job's process group, so that an interrupted launcher does not leave the job running.
volatile sig_atomic_t g_job = 0;
void forward_and_exit(int sig) {
  if (g_job > 0) kill(-pid_t(g_job), SIGTERM);
  _exit(128 + sig);
}

// Runs argv in its own process group; returns its exit status (128 + signal when killed). With
// hang_timeout, kills the group when `watch` stops growing for that long.
int run_job(const std::vector<std::string>& cmd, double hang_timeout, const std::string& watch,
            bool* hung) {
  *hung = false;
  const pid_t pid = fork();
  DSV3_CHECK(pid >= 0, "cannot fork: ", std::strerror(errno));
  if (pid == 0) {
    setpgid(0, 0);
    std::vector<char*> argv;
    for (const auto& a : cmd) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execvp(argv[0], argv.data());
    std::fprintf(stderr, "dsv3 launch: cannot run %s: %s\n", argv[0], std::strerror(errno));
    _exit(127);
  }
  setpgid(pid, pid);
  g_job = pid;
  signal(SIGINT, forward_and_exit);
  signal(SIGTERM, forward_and_exit);
  uintmax_t last_size = 0;
  double last_change = now_seconds();
  for (;;) {
    int status = 0;
    const pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) {
      g_job = 0;
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    if (hang_timeout > 0) {
      std::error_code ec;
      const uintmax_t size = std::filesystem::file_size(watch, ec);
      if (!ec && size != last_size) last_size = size, last_change = now_seconds();
      if (now_seconds() - last_change > hang_timeout) {
        *hung = true;
        kill(-pid, SIGTERM);
        for (int i = 0; i < 50 && waitpid(pid, &status, WNOHANG) == 0; i++)
          std::this_thread::sleep_for(std::chrono::milliseconds(100));
        kill(-pid, SIGKILL);
        waitpid(pid, &status, 0);
        g_job = 0;
        return 128 + SIGKILL;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

}  // namespace

int cmd_launch(int argc, char** argv) {
  // dsv3 launch [launch settings] -- train [train settings]
  int sep = -1;
  for (int i = 2; i < argc; i++)
    if (std::string(argv[i]) == "--") {
      sep = i;
      break;
    }
  std::vector<std::string> own;
  for (int i = 2; i < (sep < 0 ? argc : sep); i++)
    own.push_back(std::string(argv[i]) == "-np" ? "--np" : argv[i]);
  std::vector<char*> own_argv = {argv[0], argv[1]};
  for (auto& a : own) own_argv.push_back(a.data());
  LaunchConfig lc;
  std::vector<FieldGroup> groups = {{"launch", &launch_fields(), &lc}};
  const auto parsed = parse_command(
      int(own_argv.size()), own_argv.data(), 2, groups,
      "dsv3 launch -np N [--max_restarts K] [--min_ranks M] [...] -- train [train settings]",
      "Runs dsv3 train under mpirun (or srun) and restarts it from the last complete checkpoint "
      "when a rank dies or the job hangs,\non fewer ranks when fewer slots remain. Logs each "
      "restart to the console and OUT/launch.jsonl.");
  if (!parsed) return 0;
  DSV3_CHECK(sep > 0 && sep + 1 < argc && std::string(argv[sep + 1]) == "train",
             "dsv3 launch needs the command after '--': dsv3 launch -np N -- train [settings]");
  DSV3_CHECK(lc.np >= 1, "-np must be >= 1");
  DSV3_CHECK(lc.max_restarts >= 0, "max_restarts must be >= 0");
  DSV3_CHECK(lc.min_ranks >= 0 && lc.min_ranks <= lc.np, "min_ranks must be in [0, np]");
  DSV3_CHECK(lc.launcher == "mpirun" || lc.launcher == "srun", "launcher must be mpirun or srun");
  DSV3_CHECK(lc.hang_timeout >= 0 && lc.restart_delay >= 0, "timeouts must be >= 0");
  std::vector<std::string> train_args;
  for (int i = sep + 2; i < argc; i++) train_args.push_back(argv[i]);
  const RunSpec spec = train_spec(train_args);
  const std::string out = spec.run.out;
  // The global batch of the first start, pinned for every restart.
  const int dp0 = lc.np / (spec.parallel.tp * spec.parallel.pp);
  const int global = spec.distributed.global_batch > 0 ? int(spec.distributed.global_batch)
                                                       : spec.run.batch * spec.run.grad_accum * dp0;
  std::string bin = lc.launcher_bin;
#ifdef DSV3_DEFAULT_MPIEXEC
  if (bin.empty() && lc.launcher == "mpirun") bin = DSV3_DEFAULT_MPIEXEC;
#endif
  if (bin.empty()) bin = lc.launcher;
  const std::string exe = self_exe();
  const int least = lc.min_ranks > 0 ? lc.min_ranks : lc.np;
  for (int attempt = 0;; attempt++) {
    const int slots = lc.hostfile.empty() ? lc.np : hostfile_slots(lc.hostfile);
    int world = 0, ep = 1;
    DSV3_CHECK(pick_world(spec, global, std::min(lc.np, slots), least, &world, &ep),
               "no world size between ", least, " and ", std::min(lc.np, slots),
               " ranks fits the global batch ", global, " (micro-batch ", spec.run.batch,
               "): lower --min_ranks or change --global_batch");
    std::vector<std::string> cmd = {bin};
    if (lc.launcher == "mpirun") cmd.insert(cmd.end(), {"-np", std::to_string(world)});
    else cmd.push_back("-n" + std::to_string(world));
    if (!lc.hostfile.empty()) cmd.insert(cmd.end(), {"--hostfile", lc.hostfile});
    for (const auto& w : split_words(lc.launcher_args)) cmd.push_back(w);
    cmd.insert(cmd.end(), {exe, "train"});
    cmd.insert(cmd.end(), train_args.begin(), train_args.end());
    cmd.insert(cmd.end(), {"--global_batch", std::to_string(global), "--grad_accum", "1", "--dp",
                           std::to_string(world / (spec.parallel.tp * spec.parallel.pp)), "--ep",
                           std::to_string(ep)});
    const std::string resume = attempt > 0 ? latest_checkpoint(out) : "";
    if (!resume.empty()) cmd.insert(cmd.end(), {"--resume", resume});
    // A restart with no checkpoint yet starts the run afresh over the failed attempt's files
    // (a new run refuses a directory that holds a run's files otherwise).
    if (attempt > 0 && resume.empty()) cmd.push_back("--overwrite");
    std::string line;
    for (const auto& w : cmd) line += (line.empty() ? "" : " ") + w;
    log_event(out, {{"event", "start"}, {"attempt", attempt}, {"world", world}, {"ep", ep},
                    {"resume", resume}, {"time", now_seconds()},
                    {"message", "attempt " + std::to_string(attempt + 1) + " on " +
                                    std::to_string(world) + " ranks" +
                                    (resume.empty() ? std::string(attempt > 0 ? " from the start (no complete checkpoint yet)" : "")
                                                    : " from " + resume) + ": " + line}});
    bool hung = false;
    const int code = run_job(cmd, lc.hang_timeout, out + "/metrics.jsonl", &hung);
    if (code == 0) {
      log_event(out, {{"event", "done"}, {"attempt", attempt}, {"world", world},
                      {"message", "training finished on attempt " + std::to_string(attempt + 1)}});
      return 0;
    }
    const std::string why = hung ? "hung (metrics.jsonl unchanged for " +
                                       std::to_string(int(lc.hang_timeout)) + " s)"
                                 : "failed (exit status " + std::to_string(code) + ")";
    if (attempt >= lc.max_restarts) {
      log_event(out, {{"event", "give_up"}, {"attempt", attempt}, {"code", code},
                      {"message", "the job " + why + "; no restarts left (--max_restarts " +
                                      std::to_string(lc.max_restarts) + ")"}});
      fail("training failed after ", attempt + 1, " attempts (", why, ")");
    }
    log_event(out, {{"event", "restart"}, {"attempt", attempt}, {"code", code}, {"hung", hung},
                    {"message", "the job " + why + "; restarting from the last complete "
                                                   "checkpoint"}});
    std::this_thread::sleep_for(std::chrono::duration<double>(lc.restart_delay));
  }
}

}  // namespace dsv3::cli

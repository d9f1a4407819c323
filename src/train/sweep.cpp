#include "train/sweep.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <thread>

#include "core/check.h"
#include "core/io.h"
#include "core/timer.h"
#include "train/run_config.h"

namespace dsv3 {

using json = nlohmann::json;
namespace fs = std::filesystem;

// ---- the space
namespace {
std::string trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t\n\r"), e = s.find_last_not_of(" \t\n\r");
  return b == std::string::npos ? "" : s.substr(b, e - b + 1);
}
std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  for (size_t i = 0; i <= s.size(); i++)
    if (i == s.size() || s[i] == sep) out.push_back(trim(s.substr(start, i - start))), start = i + 1;
  return out;
}
std::string fmt_value(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.6g", v);
  return b;
}
}  // namespace

std::vector<SweepParam> parse_space(const std::string& text) {
  std::vector<SweepParam> out;
  std::set<std::string> seen;
  for (const std::string& part : split(text, ';')) {
    if (part.empty()) continue;
    const std::string where = "--space '" + part + "': ";
    const size_t eq = part.find('=');
    DSV3_CHECK(eq != std::string::npos, where, "expected name=spec (spec: log(a,b), uniform(a,b), "
               "int(a,b) or [v1,v2,...])");
    SweepParam p;
    p.name = trim(part.substr(0, eq));
    std::replace(p.name.begin(), p.name.end(), '-', '_');
    const std::string spec = trim(part.substr(eq + 1));
    DSV3_CHECK(!p.name.empty() && std::all_of(p.name.begin(), p.name.end(), [](char c) {
                 return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
               }), where, "'", p.name, "' is not a setting name");
    DSV3_CHECK(seen.insert(p.name).second, where, p.name, " appears twice in the space");
    if (!spec.empty() && spec.front() == '[') {
      DSV3_CHECK(spec.back() == ']', where, "a list needs a closing ']'");
      p.kind = SweepParam::Kind::Choice;
      p.choices = split(spec.substr(1, spec.size() - 2), ',');
      DSV3_CHECK(!p.choices.empty() && std::none_of(p.choices.begin(), p.choices.end(),
                                                    [](const std::string& v) { return v.empty(); }),
                 where, "empty value in the list");
    } else {
      const size_t open = spec.find('(');
      DSV3_CHECK(open != std::string::npos && spec.back() == ')', where,
                 "expected log(a,b), uniform(a,b), int(a,b) or [v1,v2,...]");
      const std::string fn = trim(spec.substr(0, open));
      const auto args = split(spec.substr(open + 1, spec.size() - open - 2), ',');
      DSV3_CHECK(args.size() == 2, where, fn, " takes two numbers (low, high), got ", args.size());
      if (fn == "log") p.kind = SweepParam::Kind::Log;
      else if (fn == "uniform" || fn == "float") p.kind = SweepParam::Kind::Uniform;
      else if (fn == "int") p.kind = SweepParam::Kind::Int;
      else fail(where, "unknown distribution '", fn, "' (log, uniform, int or a [list])");
      p.lo = parse_float(p.name, args[0]);
      p.hi = parse_float(p.name, args[1]);
      DSV3_CHECK(std::isfinite(p.lo) && std::isfinite(p.hi) && p.lo < p.hi, where,
                 "needs low < high, got ", args[0], ", ", args[1]);
      DSV3_CHECK(p.kind != SweepParam::Kind::Log || p.lo > 0, where, "log needs low > 0");
      if (p.kind == SweepParam::Kind::Int)
        DSV3_CHECK(p.lo == std::floor(p.lo) && p.hi == std::floor(p.hi), where, "int needs integer bounds");
    }
    out.push_back(std::move(p));
  }
  DSV3_CHECK(!out.empty(), "--space is empty (e.g. --space 'lr=log(1e-4,3e-3); batch=[8,16]')");
  return out;
}

std::vector<TrialParams> grid_points(const std::vector<SweepParam>& space, int points) {
  std::vector<std::vector<std::string>> axis;
  for (const SweepParam& p : space) {
    std::vector<std::string> v;
    switch (p.kind) {
      case SweepParam::Kind::Choice: v = p.choices; break;
      case SweepParam::Kind::Int: {
        const double n = p.hi - p.lo + 1;
        if (n <= points) {
          for (double x = p.lo; x <= p.hi; x++) v.push_back(fmt_value(x));
        } else {
          for (int i = 0; i < points; i++) {
            const std::string s = fmt_value(std::round(p.lo + (p.hi - p.lo) * i / std::max(1, points - 1)));
            if (v.empty() || v.back() != s) v.push_back(s);
          }
        }
        break;
      }
      case SweepParam::Kind::Log:
      case SweepParam::Kind::Uniform:
        for (int i = 0; i < points; i++) {
          const double t = points == 1 ? 0.5 : double(i) / (points - 1);
          v.push_back(fmt_value(p.kind == SweepParam::Kind::Log
                                    ? std::exp(std::log(p.lo) + t * (std::log(p.hi) - std::log(p.lo)))
                                    : p.lo + t * (p.hi - p.lo)));
        }
        break;
    }
    axis.push_back(v);
  }
  std::vector<TrialParams> out(1);
  for (size_t d = 0; d < space.size(); d++) {
    std::vector<TrialParams> next;
    for (const auto& t : out)
      for (const auto& v : axis[d]) {
        TrialParams x = t;
        x.push_back({space[d].name, v});
        next.push_back(x);
      }
    out = std::move(next);
  }
  return out;
}

namespace {
// Internal coordinates: log for log, the value for uniform and int, the index for choices.
double to_internal(const SweepParam& p, const std::string& v) {
  if (p.kind == SweepParam::Kind::Choice)
    return double(std::find(p.choices.begin(), p.choices.end(), v) - p.choices.begin());
  const double x = std::stod(v);
  return p.kind == SweepParam::Kind::Log ? std::log(x) : x;
}
double lo_of(const SweepParam& p) { return p.kind == SweepParam::Kind::Log ? std::log(p.lo) : p.lo; }
double hi_of(const SweepParam& p) { return p.kind == SweepParam::Kind::Log ? std::log(p.hi) : p.hi; }
std::string from_internal(const SweepParam& p, double x) {
  switch (p.kind) {
    case SweepParam::Kind::Choice: return p.choices[size_t(x)];
    case SweepParam::Kind::Int: return fmt_value(std::clamp(std::round(x), p.lo, p.hi));
    case SweepParam::Kind::Log: return fmt_value(std::exp(x));
    case SweepParam::Kind::Uniform: return fmt_value(x);
  }
  return "";
}
double uniform_in(Rng& rng, double a, double b) { return a + (b - a) * double(rng.next_u64() >> 11) * 0x1p-53; }

// A Parzen estimator over one numeric dimension: Gaussians at the observations plus a wide prior
// at the centre, truncated to [lo, hi]; bandwidths from the neighbours' distances (as Optuna).
struct Parzen {
  std::vector<double> mu, sigma;
  double lo, hi;
  Parzen(std::vector<double> obs, double lo_, double hi_) : lo(lo_), hi(hi_) {
    obs.push_back((lo + hi) / 2);  // the prior
    std::sort(obs.begin(), obs.end());
    const double range = hi - lo, min_s = range / std::min(100.0, 1.0 + double(obs.size()));
    for (size_t i = 0; i < obs.size(); i++) {
      const double left = i > 0 ? obs[i] - obs[i - 1] : obs[i] - lo;
      const double right = i + 1 < obs.size() ? obs[i + 1] - obs[i] : hi - obs[i];
      mu.push_back(obs[i]);
      sigma.push_back(std::clamp(std::max(left, right), min_s, range));
    }
    // the prior's own width is the whole range
    for (size_t i = 0; i < mu.size(); i++)
      if (mu[i] == (lo + hi) / 2) { sigma[i] = range; break; }
  }
  double sample(Rng& rng) const {
    const size_t k = size_t(rng.next_u64() % mu.size());
    for (int tries = 0; tries < 100; tries++) {
      const double x = mu[k] + sigma[k] * double(rng.normal());
      if (x >= lo && x <= hi) return x;
    }
    return std::clamp(mu[k], lo, hi);
  }
  double log_pdf(double x) const {
    double s = 0;
    for (size_t i = 0; i < mu.size(); i++) {
      const double z = (x - mu[i]) / sigma[i];
      const double mass = 0.5 * (std::erf((hi - mu[i]) / (sigma[i] * M_SQRT2)) -
                                 std::erf((lo - mu[i]) / (sigma[i] * M_SQRT2)));
      s += std::exp(-0.5 * z * z) / (sigma[i] * std::sqrt(2 * M_PI) * std::max(mass, 1e-12));
    }
    return std::log(s / double(mu.size()) + 1e-300);
  }
};
}  // namespace

TrialParams random_point(const std::vector<SweepParam>& space, Rng& rng) {
  TrialParams t;
  for (const SweepParam& p : space) {
    if (p.kind == SweepParam::Kind::Choice) {
      t.push_back({p.name, p.choices[size_t(rng.next_u64() % p.choices.size())]});
    } else if (p.kind == SweepParam::Kind::Int) {
      t.push_back({p.name, fmt_value(p.lo + double(rng.next_u64() % uint64_t(p.hi - p.lo + 1)))});
    } else {
      t.push_back({p.name, from_internal(p, uniform_in(rng, lo_of(p), hi_of(p)))});
    }
  }
  return t;
}

TrialParams tpe_point(const std::vector<SweepParam>& space, const std::vector<TrialResult>& done,
                      Rng& rng, int startup, double gamma, int candidates) {
  std::vector<TrialResult> ok;
  for (const auto& r : done)
    if (std::isfinite(r.metric)) ok.push_back(r);
  if (int(ok.size()) < startup) return random_point(space, rng);
  std::stable_sort(ok.begin(), ok.end(), [](const auto& a, const auto& b) { return a.metric < b.metric; });
  const size_t n_good = std::max<size_t>(1, size_t(std::ceil(gamma * double(ok.size()))));
  TrialParams t;
  for (size_t d = 0; d < space.size(); d++) {
    const SweepParam& p = space[d];
    std::vector<double> good, bad;
    for (size_t i = 0; i < ok.size(); i++) {
      for (const auto& [name, v] : ok[i].params)
        if (name == p.name) (i < n_good ? good : bad).push_back(to_internal(p, v));
    }
    if (p.kind == SweepParam::Kind::Choice) {
      const size_t K = p.choices.size();
      std::vector<double> wl(K, 1.0 / double(K)), wg(K, 1.0 / double(K));  // prior counts
      for (double x : good) wl[size_t(x)] += 1;
      for (double x : bad) wg[size_t(x)] += 1;
      double sl = 0, sg = 0;
      for (size_t k = 0; k < K; k++) sl += wl[k], sg += wg[k];
      size_t best = 0;
      double best_score = -1e300;
      for (int c = 0; c < candidates; c++) {
        double u = uniform_in(rng, 0, sl);
        size_t k = 0;
        while (k + 1 < K && u >= wl[k]) u -= wl[k], k++;
        const double score = std::log(wl[k] / sl) - std::log(wg[k] / sg);
        if (score > best_score) best_score = score, best = k;
      }
      t.push_back({p.name, p.choices[best]});
      continue;
    }
    const double lo = lo_of(p) - (p.kind == SweepParam::Kind::Int ? 0.5 : 0);
    const double hi = hi_of(p) + (p.kind == SweepParam::Kind::Int ? 0.5 : 0);
    const Parzen l(good, lo, hi), g(bad, lo, hi);
    double best = l.sample(rng), best_score = -1e300;
    for (int c = 0; c < candidates; c++) {
      const double x = c == 0 ? best : l.sample(rng);
      const double score = l.log_pdf(x) - g.log_pdf(x);
      if (score > best_score) best_score = score, best = x;
    }
    t.push_back({p.name, from_internal(p, best)});
  }
  return t;
}

// ---- ASHA
int64_t Asha::rung_step(int k) const {
  int64_t s = min_steps_;
  for (int i = 0; i < k; i++) s *= eta_;
  return s;
}
int Asha::rung_of(int64_t step) const {
  int k = -1;
  while (rung_step(k + 1) <= step) k++;
  return k;
}
bool Asha::report(int k, double value) {
  values_.resize(std::max<size_t>(values_.size(), size_t(k) + 1));
  auto& v = values_[size_t(k)];
  v.push_back(value);
  std::vector<double> sorted = v;
  std::sort(sorted.begin(), sorted.end());
  const size_t top = std::max<size_t>(1, sorted.size() / size_t(eta_));
  return value <= sorted[top - 1];
}

// ---- settings
const char* sweep_algo_name(SweepAlgo a) {
  switch (a) {
    case SweepAlgo::Grid: return "grid";
    case SweepAlgo::Random: return "random";
    case SweepAlgo::Tpe: return "tpe";
  }
  return "?";
}
SweepAlgo parse_sweep_algo(const std::string& s) {
  if (s == "grid") return SweepAlgo::Grid;
  if (s == "random") return SweepAlgo::Random;
  if (s == "tpe") return SweepAlgo::Tpe;
  fail("unknown --algo '", s, "' (grid, random or tpe)");
}

const std::vector<FieldSpec>& sweep_fields() {
  using S = SweepConfig;
  static const std::vector<FieldSpec> f = {
      field("space", &S::space, "search space: 'lr=log(1e-4,3e-3); batch=[8,16]; warmup=int(10,100)'"),
      field("trials", &S::trials, "trials to run (grid: 0 = the whole grid)", in_range(0, 1 << 20)),
      choice("algo", &S::algo, "grid|random|tpe", "how trials are chosen", sweep_algo_name,
             parse_sweep_algo),
      field("jobs", &S::jobs, "trials running at once (child processes; each gets cores / jobs "
            "OpenMP threads unless OMP_NUM_THREADS is set)", in_range(1, 4096)),
      field("metric", &S::metric, "what to optimise: a key of the trials' eval records (val_loss, "
            "val_bpb), else of their train records (loss)"),
      field("mode", &S::mode, "min or max"),
      field("early_stop", &S::early_stop, "none or asha (successive halving at rungs)"),
      field("asha_min_steps", &S::asha_min_steps, "asha: step of the first rung (0 = eval_every)", at_least(0)),
      field("asha_eta", &S::asha_eta, "asha: reduction factor (rung k at min_steps * eta^k)", at_least(2)),
      field("grid_points", &S::grid_points, "grid: values per range dimension", in_range(1, 1 << 20)),
      field("seed", &S::seed, "seed of random and tpe", at_least(0)),
      field("out", &S::out, "sweep directory: trial_NNNN/ run directories, trials.jsonl"),
  };
  return f;
}

void validate(const SweepConfig& c) {
  parse_space(c.space);
  DSV3_CHECK(c.trials >= 0, "trials must be >= 0");
  DSV3_CHECK(c.algo == SweepAlgo::Grid || c.trials >= 1, "--trials N is required for --algo ",
             sweep_algo_name(c.algo));
  DSV3_CHECK(c.jobs >= 1, "jobs must be >= 1");
  DSV3_CHECK(c.mode == "min" || c.mode == "max", "mode must be min or max, got '", c.mode, "'");
  DSV3_CHECK(c.early_stop == "none" || c.early_stop == "asha", "early_stop must be none or asha, got '",
             c.early_stop, "'");
  DSV3_CHECK(c.asha_min_steps >= 0, "asha_min_steps must be >= 0");
  DSV3_CHECK(c.asha_eta >= 2, "asha_eta must be >= 2");
  DSV3_CHECK(c.grid_points >= 1, "grid_points must be >= 1");
  DSV3_CHECK(!c.metric.empty(), "metric must name a metrics key");
  DSV3_CHECK(!c.out.empty(), "out must name a directory");
}

// ---- running trials
namespace {

struct Trial {
  int id = 0;
  TrialParams params;
  std::string dir;
  pid_t pid = -1;
  double t0 = 0;
  uint64_t offset = 0;    // bytes of metrics.jsonl consumed
  std::string partial;    // an unfinished line
  double metric = NAN;    // latest value (internal: lower is better)
  int64_t step = 0;       // of that value
  int next_rung = 0;
  json rungs = json::object();
  bool pruned = false;
  // eval records of one step wait until the step's records are complete ("all" comes last)
  int64_t pending_step = -1;
  std::map<std::string, double> pending;
};

json params_json(const TrialParams& p) {
  json j = json::object();
  for (const auto& [k, v] : p) j[k] = v;
  return j;
}
TrialParams params_from(const json& j, const std::vector<SweepParam>& space) {
  TrialParams p;
  for (const SweepParam& s : space) {
    DSV3_CHECK(j.contains(s.name), "trials.jsonl: a trial without ", s.name);
    p.push_back({s.name, j[s.name].get<std::string>()});
  }
  return p;
}
std::string params_text(const TrialParams& p) {
  std::string s;
  for (const auto& [k, v] : p) s += (s.empty() ? "" : " ") + k + "=" + v;
  return s;
}

void append_line(const std::string& path, const json& j) {
  std::FILE* f = std::fopen(path.c_str(), "a");
  DSV3_CHECK(f, "cannot open ", path, ": ", std::strerror(errno));
  const std::string line = j.dump() + "\n";
  errno = 0;
  // fclose writes the buffer: its failure (a full disk) is the write's
  const bool ok = std::fwrite(line.data(), 1, line.size(), f) == line.size() && std::fflush(f) == 0;
  const int e = errno;
  const bool closed = std::fclose(f) == 0;
  DSV3_CHECK(ok && closed, "cannot write ", path, ": ", std::strerror(e ? e : errno));
}

// threads: OMP_NUM_THREADS for the child unless the environment sets it (J trials share the cores).
pid_t spawn(const std::string& exe, const std::vector<std::string>& args, const std::string& log,
            int threads) {
  std::vector<char*> argv;
  argv.push_back(const_cast<char*>(exe.c_str()));
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  DSV3_CHECK(fd >= 0, "cannot create ", log);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  DSV3_CHECK(pid >= 0, "fork failed: ", std::strerror(errno));
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);  // a killed sweep takes its trials with it
    if (getppid() != parent) _exit(127);
    dup2(fd, 1), dup2(fd, 2);
    if (!std::getenv("OMP_NUM_THREADS")) setenv("OMP_NUM_THREADS", std::to_string(threads).c_str(), 1);
    execv(exe.c_str(), argv.data());
    std::fprintf(stderr, "cannot run %s: %s\n", exe.c_str(), std::strerror(errno));
    _exit(127);
  }
  ::close(fd);
  return pid;
}

std::string tail_of(const std::string& path, size_t n = 600) {
  std::ifstream in(path);
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return s.size() > n ? s.substr(s.size() - n) : s;
}

}  // namespace

json run_sweep(const SweepConfig& c, const std::vector<std::string>& train_args, const std::string& exe) {
  validate(c);
  const std::vector<SweepParam> space = parse_space(c.space);
  DSV3_CHECK(!train_args.empty() && train_args[0] == "train",
             "give the trial command after --: dsv3 sweep ... -- train --preset tiny ...");
  // every dimension must be a setting of dsv3 train; the sweep owns --out
  {
    RunSpec probe;
    const auto groups = run_groups(probe);
    for (const SweepParam& p : space) {
      DSV3_CHECK(find_field(groups, p.name), "--space: '", p.name, "' is not a setting of dsv3 train");
      DSV3_CHECK(p.name != "out" && p.name != "resume", "--space: ", p.name, " cannot be swept");
    }
    for (const std::string& a : train_args) {
      if (a.rfind("--", 0) != 0) continue;
      std::string k = a.substr(2, a.find('=') == std::string::npos ? std::string::npos : a.find('=') - 2);
      std::replace(k.begin(), k.end(), '-', '_');
      DSV3_CHECK(k != "out" && k != "resume", "the trial command must not set --", k,
                 ": the sweep gives each trial its directory under ", c.out);
      for (const SweepParam& p : space)
        DSV3_CHECK(k != p.name, "the trial command sets --", k, ", which the space sweeps (drop it)");
    }
  }
  const bool asha = c.early_stop == "asha";
  int64_t min_steps = c.asha_min_steps;
  if (asha && min_steps == 0) {
    for (size_t i = 0; i + 1 < train_args.size(); i++)
      if (train_args[i] == "--eval_every" || train_args[i] == "--eval-every") min_steps = std::stoll(train_args[i + 1]);
    DSV3_CHECK(min_steps > 0, "--early_stop asha needs rungs: give --asha_min_steps, or --eval_every "
               "in the trial command");
  }
  const bool minimize = c.mode == "min";

  // the grid, or the number of trials
  std::vector<TrialParams> grid;
  int n_trials = c.trials;
  if (c.algo == SweepAlgo::Grid) {
    grid = grid_points(space, c.grid_points);
    if (n_trials == 0 || n_trials > int(grid.size())) n_trials = int(grid.size());
  }

  // the sweep's identity, to resume it and only it
  json spec = {{"space", c.space}, {"algo", sweep_algo_name(c.algo)}, {"trials", n_trials},
               {"metric", c.metric}, {"mode", c.mode}, {"early_stop", c.early_stop},
               {"asha_min_steps", min_steps}, {"asha_eta", c.asha_eta}, {"grid_points", c.grid_points},
               {"seed", c.seed}, {"command", train_args}};
  fs::create_directories(c.out);
  const std::string spec_path = c.out + "/sweep.json", log_path = c.out + "/trials.jsonl";
  if (fs::exists(spec_path)) {
    const json old = json::parse(read_file(spec_path), nullptr, false);
    DSV3_CHECK(!old.is_discarded(), spec_path, " is not JSON");
    for (auto it = spec.begin(); it != spec.end(); ++it)
      DSV3_CHECK(old.contains(it.key()) && old[it.key()] == *it, c.out, " holds a different sweep (",
                 it.key(), " was ", old.value(it.key(), json()).dump(), ", now ", it->dump(),
                 "): use another --out, or the same settings to resume it");
  } else {
    const std::string text = spec.dump(2) + "\n";
    write_file_atomic(spec_path, [&](std::FILE* f) { write_bytes(f, text.data(), text.size()); });
  }

  // what a killed sweep left: started trials' parameters, finished trials' results
  std::map<int, TrialParams> started;
  std::map<int, json> finished;
  Asha rungs(std::max<int64_t>(1, min_steps), c.asha_eta);
  if (fs::exists(log_path)) {
    std::ifstream in(log_path);
    std::string line;
    while (std::getline(in, line)) {
      const json j = json::parse(line, nullptr, false);
      if (j.is_discarded() || !j.is_object() || !j.contains("trial")) continue;  // a cut last line
      const int id = j["trial"].get<int>();
      if (j.value("event", "") == "start") started[id] = params_from(j["params"], space);
      if (j.value("event", "") == "end") finished[id] = j;
    }
    for (const auto& [id, j] : finished)
      for (auto it = j["rungs"].begin(); it != j["rungs"].end(); ++it)
        rungs.restore(std::stoi(it.key()), minimize ? it->get<double>() : -it->get<double>());
    if (!started.empty())
      std::fprintf(stderr, "sweep: resuming %s: %zu of %d trials finished\n", c.out.c_str(),
                   finished.size(), n_trials);
  }
  auto results = [&] {
    std::vector<TrialResult> r;
    for (const auto& [id, j] : finished)
      if (j.contains("metric") && j["metric"].is_number())
        r.push_back({params_from(j["params"], space), minimize ? j["metric"].get<double>() : -j["metric"].get<double>()});
    return r;
  };

  std::vector<Trial> running;
  int next = 0;
  const double t_start = now_seconds();
  auto finish = [&](Trial& t, int wstatus) {
    std::string status = t.pruned ? "pruned" : (WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0) ? "done" : "failed";
    json j = {{"trial", t.id}, {"event", "end"}, {"status", status}, {"params", params_json(t.params)},
              {"step", t.step}, {"seconds", now_seconds() - t.t0}, {"rungs", t.rungs}, {"dir", t.dir}};
    if (std::isfinite(t.metric)) j["metric"] = minimize ? t.metric : -t.metric;
    else j["metric"] = nullptr;
    if (status == "done" && !std::isfinite(t.metric)) {
      j["status"] = status = "failed";
      j["error"] = "no '" + c.metric + "' in its metrics (does the run evaluate? --eval_every)";
    }
    if (status == "failed" && !j.contains("error")) j["error"] = tail_of(t.dir + "/train.log");
    append_line(log_path, j);
    finished[t.id] = j;
    std::fprintf(stderr, "sweep: trial %d %s%s (%zu/%d done, %s)\n", t.id, status.c_str(),
                 std::isfinite(t.metric) ? (" " + c.metric + " " + fmt_value(minimize ? t.metric : -t.metric) +
                                             " at step " + std::to_string(t.step)).c_str() : "",
                 finished.size(), n_trials, format_duration(now_seconds() - t_start).c_str());
    if (status == "failed") std::fprintf(stderr, "  %s\n", j["error"].get<std::string>().c_str());
  };
  // a metric value at `step`: ASHA may stop the trial there
  auto observe = [&](Trial& t, int64_t step, double value) {
    if (!std::isfinite(value)) return;
    t.metric = minimize ? value : -value, t.step = step;
    if (!asha || t.pruned) return;
    const int k = rungs.rung_of(step);
    while (t.next_rung <= k) {
      const int r = t.next_rung++;
      t.rungs[std::to_string(r)] = value;
      if (!rungs.report(r, t.metric)) {
        t.pruned = true;
        ::kill(t.pid, SIGTERM);
        return;
      }
    }
  };
  auto flush_pending = [&](Trial& t) {
    if (t.pending.empty()) return;
    double v = NAN;
    if (t.pending.count("all")) v = t.pending["all"];
    else if (t.pending.size() == 1) v = t.pending.begin()->second;
    else {  // several domains and no mean: their plain mean
      v = 0;
      for (auto& [d, x] : t.pending) v += x / double(t.pending.size());
    }
    observe(t, t.pending_step, v);
    t.pending.clear();
  };
  auto poll = [&](Trial& t) {
    std::ifstream in(t.dir + "/metrics.jsonl", std::ios::binary);
    if (!in) return;
    in.seekg(std::streamoff(t.offset));
    std::string chunk((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    t.offset += chunk.size();
    t.partial += chunk;
    size_t nl;
    while ((nl = t.partial.find('\n')) != std::string::npos) {
      const json r = json::parse(t.partial.substr(0, nl), nullptr, false);
      t.partial.erase(0, nl + 1);
      if (r.is_discarded() || !r.is_object() || !r.contains("step")) continue;
      const std::string kind = r.value("kind", "");
      const int64_t step = r["step"].get<int64_t>();
      if (kind == "eval" && r.contains(c.metric)) {
        if (step != t.pending_step) flush_pending(t);
        t.pending_step = step;
        t.pending[r.value("domain", std::string("all"))] = r[c.metric].get<double>();
        continue;
      }
      flush_pending(t);
      if (kind == "train" && r.contains(c.metric) && r[c.metric].is_number())
        observe(t, step, r[c.metric].get<double>());
    }
  };

  while (int(finished.size()) < n_trials || !running.empty()) {
    while (int(running.size()) < c.jobs && next < n_trials) {
      const int id = next++;
      if (finished.count(id)) continue;
      Trial t;
      t.id = id;
      char name[32];
      std::snprintf(name, sizeof name, "trial_%04d", id);
      t.dir = c.out + "/" + name;
      if (started.count(id)) {
        t.params = started[id];
        fs::remove_all(t.dir);  // killed mid-run: it runs again from the start
      } else {
        Rng rng(uint64_t(c.seed) * 0x9e3779b97f4a7c15ull + uint64_t(id));
        t.params = c.algo == SweepAlgo::Grid ? grid[size_t(id)]
                   : c.algo == SweepAlgo::Random ? random_point(space, rng)
                                                 : tpe_point(space, results(), rng);
        append_line(log_path, {{"trial", id}, {"event", "start"}, {"params", params_json(t.params)}, {"dir", t.dir}});
        started[id] = t.params;
      }
      fs::create_directories(t.dir);
      std::vector<std::string> args = train_args;
      for (const auto& [k, v] : t.params) args.push_back("--" + k), args.push_back(v);
      args.push_back("--out"), args.push_back(t.dir);
      t.t0 = now_seconds();
      t.pid = spawn(exe, args, t.dir + "/train.log",
                    std::max(1, int(std::thread::hardware_concurrency()) / c.jobs));
      std::fprintf(stderr, "sweep: trial %d started: %s\n", id, params_text(t.params).c_str());
      running.push_back(std::move(t));
    }
    if (running.empty()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    for (size_t i = 0; i < running.size();) {
      Trial& t = running[i];
      poll(t);
      int wstatus = 0;
      const pid_t r = waitpid(t.pid, &wstatus, WNOHANG);
      if (r == t.pid) {
        poll(t);
        flush_pending(t);
        finish(t, wstatus);
        running.erase(running.begin() + std::ptrdiff_t(i));
        continue;
      }
      i++;
    }
  }

  // the table, best first (failed last)
  std::vector<json> rows;
  for (const auto& [id, j] : finished) rows.push_back(j);
  auto key = [&](const json& j) {
    if (!j["metric"].is_number()) return 1e300;
    const double m = j["metric"].get<double>();
    return (j["status"] == "done" ? 0.0 : 1e200) + (minimize ? m : -m);
  };
  std::stable_sort(rows.begin(), rows.end(), [&](const json& a, const json& b) { return key(a) < key(b); });
  std::printf("%-6s %-8s %12s %8s %9s  %s\n", "trial", "status", c.metric.c_str(), "step", "seconds", "params");
  for (const json& j : rows) {
    TrialParams p = params_from(j["params"], space);
    std::printf("%-6d %-8s %12s %8lld %9.1f  %s\n", j["trial"].get<int>(), j["status"].get<std::string>().c_str(),
                j["metric"].is_number() ? fmt_value(j["metric"].get<double>()).c_str() : "-",
                (long long)j.value("step", int64_t(0)), j.value("seconds", 0.0), params_text(p).c_str());
  }
  json out = {{"trials", rows}};
  if (!rows.empty() && rows[0]["status"] == "done") {
    const json& b = rows[0];
    std::string flags;
    for (const auto& [k, v] : params_from(b["params"], space)) flags += " --" + k + " " + v;
    std::printf("best: trial %d, %s %s:%s\n", b["trial"].get<int>(), c.metric.c_str(),
                fmt_value(b["metric"].get<double>()).c_str(), flags.c_str());
    out["best"] = b;
    const std::string text = b.dump(2) + "\n";
    write_file_atomic(c.out + "/best.json", [&](std::FILE* f) { write_bytes(f, text.data(), text.size()); });
  } else {
    fail("no trial of the sweep finished (see ", c.out, "/trial_*/train.log)");
  }
  return out;
}

}  // namespace dsv3

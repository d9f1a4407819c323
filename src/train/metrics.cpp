#include "train/metrics.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <algorithm>

#include "core/check.h"
#include "core/timer.h"

namespace dsv3 {

const std::vector<FieldSpec>& metrics_fields() {
  static const std::vector<FieldSpec> f = {
      field("tensorboard", &MetricsConfig::tensorboard,
            "also write TensorBoard event files (events.out.tfevents.*) into the run directory"),
      field("gpu_hour_cost", &MetricsConfig::gpu_hour_cost,
            "USD per device-hour: running cost (wall time x ranks) in the metrics and the console "
            "line (0 = off)", at_least(0)),
  };
  return f;
}

namespace {
std::string tag_part(std::string s) {  // "layer 3" -> "layer_3": tags read better without spaces
  std::replace(s.begin(), s.end(), ' ', '_');
  return s;
}
// Every number under j, as prefix/key/... (nested objects; arrays and strings are skipped).
void scalars_of(const nlohmann::json& j, const std::string& prefix, TbSummary* out) {
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string tag = prefix + "/" + tag_part(it.key());
    if (it->is_number() && !it->is_boolean()) out->scalars.push_back({tag, it->get<float>()});
    else if (it->is_object()) scalars_of(*it, tag, out);
  }
}
}  // namespace

bool tensorboard_summary(const nlohmann::json& rec, int64_t* step, TbSummary* out) {
  *out = {};
  if (!rec.is_object() || !rec.contains("kind") || !rec.contains("step")) return false;
  const std::string kind = rec["kind"].get<std::string>();
  *step = rec["step"].get<int64_t>();
  nlohmann::json top = nlohmann::json::object();
  for (auto it = rec.begin(); it != rec.end(); ++it)
    if (it.key() != "kind" && it.key() != "step" && it->is_number()) top[it.key()] = *it;
  if (kind == "train") {
    scalars_of(top, "train", out);
    for (const auto& l : rec.value("expert_load", nlohmann::json::array())) {
      const std::string layer = "expert_load/" + tag_part(l.at("layer").get<std::string>());
      nlohmann::json stats = nlohmann::json::object();
      for (auto it = l.begin(); it != l.end(); ++it)
        if (it->is_number()) stats[it.key()] = *it;
      scalars_of(stats, layer, out);
      if (l.contains("loads")) {
        const std::vector<double> loads = l["loads"].get<std::vector<double>>();
        out->histograms.push_back({layer, make_histogram(loads)});
      }
    }
  } else if (kind == "eval") {
    scalars_of(top, "eval/" + tag_part(rec.value("domain", std::string("all"))), out);
  } else if (kind == "mixture") {
    scalars_of(rec.value("mixture", nlohmann::json::object()), "mixture", out);
  } else if (kind == "rollback") {
    out->scalars.push_back({"guard/rollback_to_step", rec.value("to_step", 0.0f)});
  }
  return !out->empty();
}

MetricsLog::MetricsLog(const std::string& path, const std::string& tensorboard_dir) : path_(path) {
  f_ = std::fopen(path.c_str(), "a");
  DSV3_CHECK(f_, "cannot open the metrics file ", path, ": ", std::strerror(errno));
  if (!tensorboard_dir.empty()) tb_ = std::make_unique<EventWriter>(tensorboard_dir);
}
MetricsLog::~MetricsLog() {
  if (f_) std::fclose(f_);  // every record was flushed (and checked) when written
}
void MetricsLog::write(const nlohmann::json& record) {
  std::string line;
  try {
    line = record.dump() + "\n";
  } catch (const nlohmann::json::exception& e) {  // a string that is not UTF-8
    line = record.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  }
  // The data must reach the file now, not at exit: a full disk fails here, at the record that
  // did not fit, with the reason.
  errno = 0;
  const bool ok = std::fwrite(line.data(), 1, line.size(), f_) == line.size() &&
                  std::fflush(f_) == 0;
  if (!ok) {
    const int e = errno;
    std::clearerr(f_);
    fail("cannot write the metrics file ", path_, ": ",
         e ? std::strerror(e) : "write failed");
  }
  if (!tb_) return;
  if (record.value("kind", "") == "start") {
    tb_->session_start(record.at("step").get<int64_t>() + 1);
    return;
  }
  int64_t step = 0;
  TbSummary s;
  if (tensorboard_summary(record, &step, &s)) tb_->summary(step, s);
}

ProgressLine::ProgressLine(long long total)
    : total_(total), tty_(isatty(STDERR_FILENO)), every_(std::max(1LL, total / 20)) {}

void ProgressLine::update(long long done, const std::string& text, double eta) {
  const std::string line = "step " + std::to_string(done) + "/" + std::to_string(total_) + " | " +
                           text + " | ETA " + format_duration(eta);
  if (tty_) {
    std::fprintf(stderr, "\r\033[K%s", line.c_str());
    open_ = true;
  } else if (done % every_ == 0 || done == total_ || done == 1) {
    std::fprintf(stderr, "%s\n", line.c_str());
  }
  std::fflush(stderr);
}

void ProgressLine::print(const std::string& line) {
  if (open_) std::fprintf(stderr, "\r\033[K");
  std::fprintf(stderr, "%s\n", line.c_str());
  open_ = false;
}

void ProgressLine::finish() {
  if (open_) std::fprintf(stderr, "\n");
  open_ = false;
}

}  // namespace dsv3

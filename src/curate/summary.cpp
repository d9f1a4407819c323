#include "curate/summary.h"

#include <algorithm>
#include <cstdio>
#include <sstream>

#include "curate/pii.h"

namespace dsv3::curate {

void RuleStats::add(uint64_t order, const std::string& id, size_t keep) {
  docs++;
  if (examples.size() < keep || (!examples.empty() && order < examples.back().order)) {
    examples.insert(std::upper_bound(examples.begin(), examples.end(), Example{order, id}),
                    Example{order, id});
    if (examples.size() > keep) examples.pop_back();
  }
}

void RuleStats::merge(const RuleStats& o, size_t keep) {
  docs += o.docs;
  std::vector<Example> all;
  std::merge(examples.begin(), examples.end(), o.examples.begin(), o.examples.end(),
             std::back_inserter(all));
  if (all.size() > keep) all.resize(keep);
  examples.swap(all);
}

void StageStats::merge(const StageStats& o, size_t keep) {
  docs_in += o.docs_in;
  docs_out += o.docs_out;
  bytes_in += o.bytes_in;
  bytes_out += o.bytes_out;
  seconds += o.seconds;
  for (const auto& [name, r] : o.rules) rules[name].merge(r, keep);
}

void RunStats::add_bad(const BadInputRecord& r) {
  bad_input[r.kind]++;
  if (bad_examples.size() < kMaxBadExamples || r.order < bad_examples.back().order) {
    auto at = std::upper_bound(bad_examples.begin(), bad_examples.end(), r,
                               [](const BadInputRecord& a, const BadInputRecord& b) {
                                 return a.order < b.order;
                               });
    bad_examples.insert(at, r);
    if (bad_examples.size() > kMaxBadExamples) bad_examples.pop_back();
  }
}

void RunStats::merge(const RunStats& o, size_t keep) {
  for (const auto& [name, s] : o.stages) stages[name].merge(s, keep);
  for (const auto& [k, n] : o.bad_input) bad_input[k] += n;
  std::vector<BadInputRecord> all;
  std::merge(bad_examples.begin(), bad_examples.end(), o.bad_examples.begin(),
             o.bad_examples.end(), std::back_inserter(all),
             [](const BadInputRecord& a, const BadInputRecord& b) { return a.order < b.order; });
  if (all.size() > kMaxBadExamples) all.resize(kMaxBadExamples);
  bad_examples.swap(all);
  for (size_t i = 0; i < kPiiTypes; i++) pii[i] += o.pii[i];
  docs_read += o.docs_read;
  bytes_read += o.bytes_read;
  docs_written += o.docs_written;
  bytes_written += o.bytes_written;
  docs_rejected += o.docs_rejected;
}

nlohmann::json to_json(const RunStats& s) {
  nlohmann::json j;
  j["docs_read"] = s.docs_read;
  j["bytes_read"] = s.bytes_read;
  j["docs_written"] = s.docs_written;
  j["bytes_written"] = s.bytes_written;
  j["docs_rejected"] = s.docs_rejected;
  nlohmann::json st = nlohmann::json::object();
  for (const auto& [name, x] : s.stages) {
    nlohmann::json rules = nlohmann::json::object();
    for (const auto& [rule, r] : x.rules) {
      nlohmann::json ex = nlohmann::json::array();
      for (const auto& e : r.examples) ex.push_back({{"order", e.order}, {"id", e.id}});
      rules[rule] = {{"docs", r.docs}, {"examples", ex}};
    }
    st[name] = {{"docs_in", x.docs_in},   {"docs_out", x.docs_out}, {"bytes_in", x.bytes_in},
                {"bytes_out", x.bytes_out}, {"seconds", x.seconds},  {"rules", rules}};
  }
  j["stages"] = st;
  j["bad_input"] = s.bad_input;
  nlohmann::json bad = nlohmann::json::array();
  for (const auto& b : s.bad_examples)
    bad.push_back({{"order", b.order}, {"file", b.file}, {"line", b.line}, {"kind", b.kind},
                   {"detail", b.detail}});
  j["bad_input_examples"] = bad;
  nlohmann::json pii = nlohmann::json::object();
  for (size_t i = 0; i < kPiiTypes; i++) pii[pii_type_name(PiiType(i))] = s.pii[i];
  j["pii"] = pii;
  return j;
}

RunStats run_stats_from_json(const nlohmann::json& j) {
  RunStats s;
  s.docs_read = j.at("docs_read");
  s.bytes_read = j.at("bytes_read");
  s.docs_written = j.at("docs_written");
  s.bytes_written = j.at("bytes_written");
  s.docs_rejected = j.at("docs_rejected");
  for (const auto& [name, x] : j.at("stages").items()) {
    StageStats& t = s.stages[name];
    t.docs_in = x.at("docs_in");
    t.docs_out = x.at("docs_out");
    t.bytes_in = x.at("bytes_in");
    t.bytes_out = x.at("bytes_out");
    t.seconds = x.at("seconds");
    for (const auto& [rule, r] : x.at("rules").items()) {
      RuleStats& q = t.rules[rule];
      q.docs = r.at("docs");
      for (const auto& e : r.at("examples")) q.examples.push_back({e.at("order"), e.at("id")});
    }
  }
  for (const auto& [k, n] : j.at("bad_input").items()) s.bad_input[k] = n;
  for (const auto& b : j.at("bad_input_examples"))
    s.bad_examples.push_back({b.at("order"), b.at("file"), b.at("line"), b.at("kind"),
                              b.at("detail")});
  for (size_t i = 0; i < kPiiTypes; i++) {
    const auto& p = j.at("pii");
    if (p.contains(pii_type_name(PiiType(i)))) s.pii[i] = p.at(pii_type_name(PiiType(i)));
  }
  return s;
}

namespace {
std::string fmt(const char* f, double a) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, a);
  return buf;
}
}  // namespace

std::string format_report(const RunStats& s, const std::vector<std::string>& stage_order,
                          const std::map<std::string, double>& phases,
                          const nlohmann::json& extra) {
  std::ostringstream os;
  const double mb = 1e6;
  os << "# dsv3 curate report\n\n";
  os << "Read " << s.docs_read << " records (" << fmt("%.2f", double(s.bytes_read) / mb)
     << " MB); wrote " << s.docs_written << " documents ("
     << fmt("%.2f", double(s.bytes_written) / mb) << " MB of text), rejected "
     << s.docs_rejected << ".\n\n";
  os << "## Stages\n\n";
  os << "| stage | docs in | docs out | dropped | MB in | MB out | core-s | MB/s per core |\n";
  os << "|---|---:|---:|---:|---:|---:|---:|---:|\n";
  for (const auto& name : stage_order) {
    auto it = s.stages.find(name);
    if (it == s.stages.end()) continue;
    const StageStats& x = it->second;
    const double dropped = x.docs_in ? 100.0 * double(x.docs_in - x.docs_out) / double(x.docs_in) : 0;
    const double rate = x.seconds > 0 ? double(x.bytes_in) / mb / x.seconds : 0;
    os << "| " << name << " | " << x.docs_in << " | " << x.docs_out << " | "
       << fmt("%.1f%%", dropped) << " | " << fmt("%.2f", double(x.bytes_in) / mb) << " | "
       << fmt("%.2f", double(x.bytes_out) / mb) << " | " << fmt("%.2f", x.seconds) << " | "
       << (x.seconds > 0 ? fmt("%.1f", rate) : std::string("-")) << " |\n";
  }
  os << "\n## Drops by rule\n\n";
  bool any = false;
  for (const auto& name : stage_order) {
    auto it = s.stages.find(name);
    if (it == s.stages.end() || it->second.rules.empty()) continue;
    for (const auto& [rule, r] : it->second.rules) {
      any = true;
      os << "- " << name << " / " << rule << ": " << r.docs;
      if (!r.examples.empty()) {
        os << " (e.g.";
        for (size_t k = 0; k < r.examples.size(); k++) os << (k ? ", " : " ") << r.examples[k].id;
        os << ")";
      }
      os << "\n";
    }
  }
  if (!any) os << "(none)\n";
  os << "\n## Bad input\n\n";
  if (s.bad_input.empty()) {
    os << "(none)\n";
  } else {
    for (const auto& [k, n] : s.bad_input) os << "- " << k << ": " << n << "\n";
    os << "\nFirst cases:\n\n";
    for (const auto& b : s.bad_examples)
      os << "- " << b.file << ":" << b.line << ": " << b.kind
         << (b.detail.empty() ? "" : " (" + b.detail + ")") << "\n";
  }
  os << "\n## Sensitive information replaced\n\n";
  int64_t total = 0;
  for (size_t i = 0; i < kPiiTypes; i++) total += s.pii[i];
  if (!total) os << "(none)\n";
  for (size_t i = 0; i < kPiiTypes; i++)
    if (s.pii[i])
      os << "- " << pii_type_name(PiiType(i)) << ": " << s.pii[i] << " -> "
         << pii_placeholder(PiiType(i)) << "\n";
  os << "\n## Phases (wall seconds)\n\n";
  for (const auto& [p, t] : phases) os << "- " << p << ": " << fmt("%.2f", t) << "\n";
  if (!extra.empty()) os << "\n## Details\n\n```\n" << extra.dump(2) << "\n```\n";
  return os.str();
}

}  // namespace dsv3::curate

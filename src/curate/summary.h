// What a curation run counts (D3, D7 outputs): per stage documents and bytes in and out, time,
// drops per rule with example ids; bad input with file and line; PII per type. The counts are
// plain data that merge associatively (threads -> part -> rank -> run), and examples keep the
// first ones in document order, so the summary of a run does not depend on how it was split.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "curate/document.h"

namespace dsv3::curate {

struct Example {
  uint64_t order;  // doc_order(part, index)
  std::string id;
  bool operator<(const Example& o) const { return order < o.order; }
};

struct RuleStats {
  int64_t docs = 0;
  std::vector<Example> examples;  // the first `keep` by order
  void add(uint64_t order, const std::string& id, size_t keep);
  void merge(const RuleStats& o, size_t keep);
};

struct StageStats {
  int64_t docs_in = 0, docs_out = 0;
  int64_t bytes_in = 0, bytes_out = 0;
  double seconds = 0;  // CPU seconds of the threads that ran it (core-seconds)
  std::map<std::string, RuleStats> rules;  // drops by rule
  void merge(const StageStats& o, size_t keep);
};

struct BadInputRecord {
  uint64_t order = 0;
  std::string file;
  uint64_t line = 0;
  std::string kind, detail;
};

struct RunStats {
  std::map<std::string, StageStats> stages;
  std::map<std::string, int64_t> bad_input;   // kind -> count
  std::vector<BadInputRecord> bad_examples;   // the first kMaxBadExamples by order
  std::array<int64_t, kPiiTypes> pii{};       // replacements per type
  int64_t docs_read = 0, bytes_read = 0;      // records and bytes of the inputs
  int64_t docs_written = 0, bytes_written = 0;  // curated output (text bytes)
  int64_t docs_rejected = 0;
  void merge(const RunStats& o, size_t keep);
  void add_bad(const BadInputRecord& r);
};
constexpr size_t kMaxBadExamples = 100;

nlohmann::json to_json(const RunStats& s);
RunStats run_stats_from_json(const nlohmann::json& j);

// The human-readable report: a table of stages (docs and MB in/out, drop %, MB/s per core), the
// rules with counts and examples, bad input, PII, and the phases' wall times.
// `stage_order` lists the stages in pipeline order; `phases` maps phase -> wall seconds.
std::string format_report(const RunStats& s, const std::vector<std::string>& stage_order,
                          const std::map<std::string, double>& phases,
                          const nlohmann::json& extra);

}  // namespace dsv3::curate

// dsv3 report RUN [--out report.html] [--compare RUN2 ...]: the run report (O2, train/report.h).
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "commands.h"
#include "core/check.h"
#include "core/io.h"
#include "flags.h"
#include "train/report.h"

namespace dsv3::cli {

namespace {
struct ReportOptions {
  std::string out;  // default RUN/report.html
};
const std::vector<FieldSpec>& report_fields() {
  static const std::vector<FieldSpec> f = {
      field("out", &ReportOptions::out, "HTML file to write (default: RUN/report.html)"),
  };
  return f;
}
}  // namespace

int cmd_report(int argc, char** argv) {
  // RUN and the runs after --compare are positional; the rest goes to the flag parser.
  std::vector<std::string> runs;
  std::vector<char*> rest = {argv[0], argv[1]};
  bool comparing = false;
  for (int i = 2; i < argc; i++) {
    const std::string a = argv[i];
    if (a == "--compare") {
      comparing = true;
      continue;
    }
    if (a.rfind("--", 0) == 0 || a == "-h") {
      comparing = false;
      rest.push_back(argv[i]);
      if (a.find('=') == std::string::npos && a != "--help" && a != "-h" && a != "--json" && i + 1 < argc)
        rest.push_back(argv[++i]);
      continue;
    }
    DSV3_CHECK(runs.empty() || comparing, "unexpected argument '", a,
               "': give one run directory, and others after --compare");
    runs.push_back(a);
  }
  ReportOptions o;
  std::vector<FieldGroup> groups = {{"report", &report_fields(), &o}};
  const auto parsed = parse_command(int(rest.size()), rest.data(), 2, groups,
                                    "dsv3 report RUN [--out report.html] [--compare RUN2 ...]",
                                    "Writes one self-contained HTML page (inline SVG, no network) "
                                    "with the run's loss curves,\nlearning rate, gradient norm, "
                                    "throughput, MFU, memory, expert-load heatmaps, mixture\n"
                                    "weights, settings and checkpoints; --compare overlays other "
                                    "runs.");
  if (!parsed) return 0;
  DSV3_CHECK(!runs.empty(), "give a run directory (the --out of dsv3 train): dsv3 report RUN");
  std::vector<ReportRun> loaded;
  for (const auto& r : runs) loaded.push_back(load_report_run(r));
  const std::string html = render_report(loaded);
  const std::string out = o.out.empty() ? runs[0] + "/report.html" : o.out;
  write_file_atomic(out, [&](std::FILE* f) { write_bytes(f, html.data(), html.size()); });
  std::printf("wrote %s (%zu KiB)\n", out.c_str(), html.size() / 1024);
  return 0;
}

}  // namespace dsv3::cli

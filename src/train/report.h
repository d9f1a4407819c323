// Run report (O2): one self-contained HTML file (inline SVG and CSS, no script, no network) with
// what a person looks at after a run: loss curves (train, validation per domain, MTP), learning
// rate, gradient norm, tokens/s, MFU, memory, expert load (a heatmap of layers x experts over
// steps, and max/mean per layer), mixture weights over time, the settings and the checkpoints.
// Other runs given to compare are overlaid on the line charts.
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace dsv3 {

// A run directory's metrics.jsonl as the run ended up: a "start" record at step s (a process
// starting or resuming after s steps) drops the records past s that a killed process had written.
std::vector<nlohmann::json> effective_metrics(const std::string& metrics_path);

struct ReportRun {
  std::string dir, name;               // name: the directory's last component
  std::vector<nlohmann::json> records;  // effective_metrics
  nlohmann::json settings;             // from the last "start" record (null if none)
};
ReportRun load_report_run(const std::string& dir);

// The HTML page for runs[0], with runs[1..] overlaid.
std::string render_report(const std::vector<ReportRun>& runs);

// Pieces, exposed for tests: an SVG line chart and heatmap.
struct ChartSeries {
  std::string name, color;
  std::vector<std::pair<double, double>> points;  // (x, y), x ascending
  bool dashed = false;
};
std::string svg_line_chart(const std::string& id, const std::string& title, const std::string& x_label,
                           const std::vector<ChartSeries>& series, bool log_y = false);
// values[r][c]: row r (an expert), column c (a step bin); NaN cells are blank. Colour: the value
// relative to `center` (1 = balanced load) on a diverging scale.
std::string svg_heatmap(const std::string& id, const std::string& title,
                        const std::vector<std::string>& row_labels, const std::vector<double>& col_x,
                        const std::vector<std::vector<double>>& values, double center);

}  // namespace dsv3

#include "train/report.h"

#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <set>

#include "checkpoint/checkpoint.h"
#include "core/check.h"

namespace dsv3 {

using json = nlohmann::json;

std::vector<json> effective_metrics(const std::string& path) {
  std::ifstream in(path);
  DSV3_CHECK(in, "cannot open ", path, " (is this a run directory of dsv3 train?)");
  std::vector<json> out;
  std::string line;
  int64_t lineno = 0;
  while (std::getline(in, line)) {
    lineno++;
    if (line.empty()) continue;
    json r = json::parse(line, nullptr, false);
    // a line cut short by a kill mid-write (and whatever a resume appended to it) is skipped
    if (r.is_discarded()) {
      std::fprintf(stderr, "note: %s:%lld is not JSON (a write cut short?); skipped\n",
                   path.c_str(), (long long)lineno);
      continue;
    }
    if (!r.is_object() || !r.contains("kind") || !r.contains("step")) continue;
    if (r["kind"] == "start") {
      const int64_t s = r["step"].get<int64_t>();
      std::erase_if(out, [&](const json& x) { return x["kind"] != "start" && x["step"].get<int64_t>() > s; });
    }
    out.push_back(std::move(r));
  }
  return out;
}

ReportRun load_report_run(const std::string& dir) {
  DSV3_CHECK(std::filesystem::is_directory(dir), dir, " is not a directory (give a run directory: "
             "the --out of dsv3 train)");
  ReportRun r;
  r.dir = dir;
  r.name = std::filesystem::path(dir).lexically_normal().filename().string();
  if (r.name.empty()) r.name = std::filesystem::path(dir).lexically_normal().parent_path().filename().string();
  r.records = effective_metrics(dir + "/metrics.jsonl");
  for (const json& j : r.records)
    if (j["kind"] == "start" && j.contains("settings")) r.settings = j["settings"];
  return r;
}

// ---------------------------------------------------------------------------------------------
namespace {

const char* kPalette[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
                          "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"};

std::string esc(const std::string& s) {
  std::string o;
  for (char c : s) {
    switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      default: o += c;
    }
  }
  return o;
}

std::string num(double v, int prec = 4) {
  char b[64];
  if (v != 0 && (std::fabs(v) >= 1e5 || std::fabs(v) < 1e-3)) std::snprintf(b, sizeof b, "%.*g", prec - 1 > 0 ? prec - 1 : 1, v);
  else std::snprintf(b, sizeof b, "%.*g", prec, v);
  return b;
}

// About n "nice" ticks (1, 2, 5 x 10^k) covering [lo, hi].
std::vector<double> nice_ticks(double lo, double hi, int n = 5) {
  if (!(hi > lo)) return {lo};
  const double raw = (hi - lo) / n, p = std::pow(10.0, std::floor(std::log10(raw)));
  const double step = raw / p < 1.5 ? p : raw / p < 3.5 ? 2 * p : raw / p < 7.5 ? 5 * p : 10 * p;
  std::vector<double> t;
  for (double v = std::ceil(lo / step) * step; v <= hi + step * 1e-9; v += step)
    t.push_back(std::fabs(v) < step * 1e-9 ? 0.0 : v);
  return t;
}

// At most max_points points: the mean of equal-width runs of consecutive points.
std::vector<std::pair<double, double>> thin(const std::vector<std::pair<double, double>>& p,
                                            size_t max_points = 1500) {
  if (p.size() <= max_points) return p;
  std::vector<std::pair<double, double>> o;
  const double per = double(p.size()) / double(max_points);
  for (size_t i = 0; i < max_points; i++) {
    const size_t a = size_t(double(i) * per), b = std::min(p.size(), size_t(double(i + 1) * per));
    double x = 0, y = 0;
    for (size_t k = a; k < b; k++) x += p[k].first, y += p[k].second;
    o.push_back({x / double(b - a), y / double(b - a)});
  }
  return o;
}

constexpr int kW = 720, kH = 300, kL = 70, kR = 20, kT = 40, kB = 44;

}  // namespace

std::string svg_line_chart(const std::string& id, const std::string& title, const std::string& x_label,
                           const std::vector<ChartSeries>& series, bool log_y) {
  double x0 = std::numeric_limits<double>::infinity(), x1 = -x0, y0 = x0, y1 = -x0;
  size_t npoints = 0;
  for (const auto& s : series)
    for (auto [x, y] : s.points) {
      if (!std::isfinite(y) || (log_y && y <= 0)) continue;
      const double yy = log_y ? std::log10(y) : y;
      x0 = std::min(x0, x), x1 = std::max(x1, x), y0 = std::min(y0, yy), y1 = std::max(y1, yy);
      npoints++;
    }
  std::string o = "<svg class=\"chart\" data-chart=\"" + esc(id) + "\" data-points=\"" +
                  std::to_string(npoints) + "\" xmlns=\"http://www.w3.org/2000/svg\" width=\"" +
                  std::to_string(kW) + "\" height=\"" + std::to_string(kH) + "\" viewBox=\"0 0 " +
                  std::to_string(kW) + " " + std::to_string(kH) + "\">";
  o += "<rect width=\"100%\" height=\"100%\" fill=\"#fff\"/>";
  o += "<text x=\"" + std::to_string(kL) + "\" y=\"22\" class=\"ct\">" + esc(title) + "</text>";
  if (npoints == 0) {
    o += "<text x=\"" + std::to_string(kW / 2) + "\" y=\"" + std::to_string(kH / 2) +
         "\" text-anchor=\"middle\" class=\"muted\">no data</text></svg>";
    return o;
  }
  if (x1 == x0) x0 -= 0.5, x1 += 0.5;
  if (y1 == y0) {
    const double d = std::max(std::fabs(y0) * 0.05, 1e-12);
    y0 -= d, y1 += d;
  } else {
    const double pad = (y1 - y0) * 0.04;
    y0 -= pad, y1 += pad;
  }
  const double pw = kW - kL - kR, ph = kH - kT - kB;
  auto X = [&](double x) { return kL + (x - x0) / (x1 - x0) * pw; };
  auto Y = [&](double y) { return kT + (1 - ((log_y ? std::log10(y) : y) - y0) / (y1 - y0)) * ph; };
  char b[256];
  // axes, grid, ticks
  for (double t : nice_ticks(x0, x1, 6)) {
    std::snprintf(b, sizeof b, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" class=\"grid\"/>"
                  "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\" class=\"tick\">%s</text>",
                  X(t), kT, X(t), kH - kB, X(t), kH - kB + 16, num(t).c_str());
    o += b;
  }
  const std::vector<double> yt = log_y ? [&] {
    std::vector<double> v;
    for (double e = std::floor(y0); e <= std::ceil(y1); e++) if (e >= y0 && e <= y1) v.push_back(std::pow(10.0, e));
    if (v.size() < 2) for (double t : nice_ticks(std::pow(10.0, y0), std::pow(10.0, y1), 4)) if (t > 0) v.push_back(t);
    return v;
  }() : nice_ticks(y0, y1, 5);
  for (double t : yt) {
    std::snprintf(b, sizeof b, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" class=\"grid\"/>"
                  "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\" class=\"tick\">%s</text>",
                  kL, Y(t), kW - kR, Y(t), kL - 6, Y(t) + 4, num(t).c_str());
    o += b;
  }
  std::snprintf(b, sizeof b, "<rect x=\"%d\" y=\"%d\" width=\"%.0f\" height=\"%.0f\" class=\"frame\"/>",
                kL, kT, pw, ph);
  o += b;
  o += "<text x=\"" + std::to_string(kL + int(pw) / 2) + "\" y=\"" + std::to_string(kH - 6) +
       "\" text-anchor=\"middle\" class=\"tick\">" + esc(x_label) + "</text>";
  // series
  int legend_y = kT + 14;
  for (const auto& s : series) {
    std::string path;
    const auto pts = thin(s.points);
    bool pen_up = true;
    for (auto [x, y] : pts) {
      if (!std::isfinite(y) || (log_y && y <= 0)) {
        pen_up = true;
        continue;
      }
      std::snprintf(b, sizeof b, "%s%.1f,%.1f", pen_up ? "M" : " L", X(x), Y(y));
      path += b;
      pen_up = false;
    }
    if (path.empty()) continue;
    o += "<path d=\"" + path + "\" fill=\"none\" stroke=\"" + s.color + "\" stroke-width=\"1.6\"" +
         (s.dashed ? " stroke-dasharray=\"6 3\"" : "") + (pts.size() == 1 ? " stroke-linecap=\"round\" stroke-width=\"6\"" : "") +
         "><title>" + esc(s.name) + "</title></path>";
    if (pts.size() <= 60)  // few points (evaluations): mark them
      for (auto [x, y] : pts)
        if (std::isfinite(y) && !(log_y && y <= 0)) {
          std::snprintf(b, sizeof b, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"2.6\" fill=\"%s\"><title>%s step %s: %s</title></circle>",
                        X(x), Y(y), s.color.c_str(), esc(s.name).c_str(), num(x, 8).c_str(), num(y, 6).c_str());
          o += b;
        }
    std::snprintf(b, sizeof b, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"%s\" stroke-width=\"2.5\"%s/>"
                  "<text x=\"%d\" y=\"%d\" class=\"legend\">%s</text>",
                  kW - kR - 200, legend_y - 4, kW - kR - 178, legend_y - 4, s.color.c_str(),
                  s.dashed ? " stroke-dasharray=\"6 3\"" : "", kW - kR - 172, legend_y,
                  esc(s.name).c_str());
    o += b;
    legend_y += 15;
  }
  return o + "</svg>";
}

std::string svg_heatmap(const std::string& id, const std::string& title,
                        const std::vector<std::string>& row_labels, const std::vector<double>& col_x,
                        const std::vector<std::vector<double>>& values, double center) {
  const int rows = int(row_labels.size()), cols = int(col_x.size());
  const int cell_h = std::clamp(220 / std::max(1, rows), 3, 16);
  const int h = kT + rows * cell_h + kB;
  const double pw = kW - kL - kR - 60;
  std::string o = "<svg class=\"chart heatmap\" data-chart=\"" + esc(id) + "\" data-cells=\"" +
                  std::to_string(rows * cols) + "\" xmlns=\"http://www.w3.org/2000/svg\" width=\"" +
                  std::to_string(kW) + "\" height=\"" + std::to_string(h) + "\">";
  o += "<rect width=\"100%\" height=\"100%\" fill=\"#fff\"/>";
  o += "<text x=\"" + std::to_string(kL) + "\" y=\"22\" class=\"ct\">" + esc(title) + "</text>";
  // diverging: log2(value / center) in [-2, 2]: blue (under-loaded) - white - red (over-loaded)
  auto colour = [&](double v) {
    const double t = std::clamp(std::log2(std::max(v, 1e-9) / center) / 2.0, -1.0, 1.0);
    const int a = int(255 * (1 - std::fabs(t)));
    char b[16];
    if (t >= 0) std::snprintf(b, sizeof b, "#%02x%02x%02x", 215 + (255 - 215) * a / 255, a * 225 / 255 + 0, a);
    else std::snprintf(b, sizeof b, "#%02x%02x%02x", a, a * 225 / 255 + 0, 200 + (255 - 200) * a / 255);
    return std::string(b);
  };
  const double cw = cols > 0 ? pw / cols : pw;
  char b[256];
  for (int r = 0; r < rows; r++) {
    if (rows <= 32 || r % (rows / 16) == 0) {
      std::snprintf(b, sizeof b, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\" class=\"tick\">%s</text>",
                    kL - 6, kT + r * cell_h + cell_h - 2, esc(row_labels[size_t(r)]).c_str());
      o += b;
    }
    for (int c = 0; c < cols; c++) {
      const double v = values[size_t(r)][size_t(c)];
      if (!std::isfinite(v)) continue;
      std::snprintf(b, sizeof b, "<rect x=\"%.2f\" y=\"%d\" width=\"%.2f\" height=\"%d\" fill=\"%s\"><title>%s, step %s: %.3f</title></rect>",
                    kL + c * cw, kT + r * cell_h, cw + 0.3, cell_h, colour(v).c_str(),
                    esc(row_labels[size_t(r)]).c_str(), num(col_x[size_t(c)], 8).c_str(), v);
      o += b;
    }
  }
  if (cols > 0) {
    const double x0 = col_x.front(), x1 = col_x.back();
    for (double t : nice_ticks(x0, x1, 6)) {
      const double x = kL + (x1 > x0 ? (t - x0) / (x1 - x0) * (pw - cw) + cw / 2 : pw / 2);
      std::snprintf(b, sizeof b, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\" class=\"tick\">%s</text>",
                    x, kT + rows * cell_h + 16, num(t).c_str());
      o += b;
    }
  }
  o += "<text x=\"" + std::to_string(kL + int(pw) / 2) + "\" y=\"" + std::to_string(h - 6) +
       "\" text-anchor=\"middle\" class=\"tick\">step</text>";
  // colour key
  const int kx = kW - kR - 40;
  for (int i = 0; i <= 8; i++) {
    const double v = center * std::pow(2.0, 2.0 - i * 0.5);
    std::snprintf(b, sizeof b, "<rect x=\"%d\" y=\"%d\" width=\"14\" height=\"%d\" fill=\"%s\"/>",
                  kx, kT + i * 12, 12, colour(v).c_str());
    o += b;
  }
  std::snprintf(b, sizeof b, "<text x=\"%d\" y=\"%d\" class=\"tick\">4x</text><text x=\"%d\" y=\"%d\" class=\"tick\">1x</text>"
                "<text x=\"%d\" y=\"%d\" class=\"tick\">1/4</text>",
                kx + 17, kT + 10, kx + 17, kT + 4 * 12 + 10, kx + 17, kT + 8 * 12 + 10);
  o += b;
  return o + "</svg>";
}

// ---------------------------------------------------------------------------------------------
namespace {

using Points = std::vector<std::pair<double, double>>;

Points series_of(const ReportRun& r, const std::string& kind, const std::string& key,
                 const std::string& domain = "") {
  Points p;
  for (const json& j : r.records) {
    if (j["kind"] != kind || !j.contains(key) || !j[key].is_number()) continue;
    if (!domain.empty() && j.value("domain", std::string()) != domain) continue;
    p.push_back({j["step"].get<double>(), j[key].get<double>()});
  }
  return p;
}

std::vector<std::string> eval_domains(const ReportRun& r) {
  std::vector<std::string> d;
  for (const json& j : r.records)
    if (j["kind"] == "eval") {
      const std::string name = j.value("domain", std::string());
      if (std::find(d.begin(), d.end(), name) == d.end()) d.push_back(name);
    }
  return d;
}

std::string color(size_t i) { return kPalette[i % (sizeof kPalette / sizeof *kPalette)]; }

// One line chart of `key` of train records, one series per run.
std::string train_chart(const std::vector<ReportRun>& runs, const std::string& id, const std::string& title,
                        const std::string& key, double scale = 1, bool log_y = false) {
  std::vector<ChartSeries> s;
  for (size_t i = 0; i < runs.size(); i++) {
    Points p = series_of(runs[i], "train", key);
    for (auto& q : p) q.second *= scale;
    s.push_back({runs[i].name, color(i), p});
  }
  return svg_line_chart(id, title, "step", s, log_y);
}

std::string human_bytes(double b) {
  char s[32];
  if (b >= 1 << 30) std::snprintf(s, sizeof s, "%.2f GiB", b / (1 << 30));
  else std::snprintf(s, sizeof s, "%.1f MiB", b / (1 << 20));
  return s;
}

std::string count_text(double n) {
  char s[32];
  if (n >= 1e9) std::snprintf(s, sizeof s, "%.2fB", n / 1e9);
  else if (n >= 1e6) std::snprintf(s, sizeof s, "%.2fM", n / 1e6);
  else std::snprintf(s, sizeof s, "%.1fK", n / 1e3);
  return s;
}

std::string section(const std::string& title, const std::string& body) {
  return "<section><h2>" + esc(title) + "</h2>" + body + "</section>\n";
}

// The expert-load heatmap of one MoE layer: experts x step bins, load / mean load.
std::string load_heatmap(const ReportRun& r, const std::string& layer) {
  std::vector<std::pair<double, std::vector<double>>> rows;  // step, per-expert load / mean
  for (const json& j : r.records) {
    if (j["kind"] != "train" || !j.contains("expert_load")) continue;
    for (const json& l : j["expert_load"]) {
      if (l.value("layer", std::string()) != layer || !l.contains("loads")) continue;
      std::vector<double> loads = l["loads"].get<std::vector<double>>();
      double mean = 0;
      for (double v : loads) mean += v;
      mean /= std::max<size_t>(1, loads.size());
      for (double& v : loads) v = mean > 0 ? v / mean : 1;
      rows.push_back({j["step"].get<double>(), loads});
    }
  }
  if (rows.empty()) return "";
  const size_t E = rows[0].second.size(), bins = std::min<size_t>(rows.size(), 120);
  std::vector<double> xs(bins, 0);
  std::vector<std::vector<double>> v(E, std::vector<double>(bins, 0));
  std::vector<int> count(bins, 0);
  for (size_t i = 0; i < rows.size(); i++) {
    const size_t b = i * bins / rows.size();
    if (rows[i].second.size() != E) continue;
    xs[b] += rows[i].first, count[b]++;
    for (size_t e = 0; e < E; e++) v[e][b] += rows[i].second[e];
  }
  for (size_t b = 0; b < bins; b++) {
    xs[b] /= std::max(1, count[b]);
    for (size_t e = 0; e < E; e++) v[e][b] = count[b] ? v[e][b] / count[b] : NAN;
  }
  std::vector<std::string> labels;
  for (size_t e = 0; e < E; e++) labels.push_back("expert " + std::to_string(e));
  return svg_heatmap("expert_load_" + layer, "Expert load, " + layer + " (tokens / mean per expert)",
                     labels, xs, v, 1.0);
}

std::string settings_table(const json& settings) {
  if (!settings.is_object()) return "<p class=\"muted\">no settings recorded (a run from before "
                                    "run reports)</p>";
  std::string o = "<div class=\"cols\">";
  for (auto g = settings.begin(); g != settings.end(); ++g) {
    o += "<table><tr><th colspan=\"2\">" + esc(g.key()) + "</th></tr>";
    for (auto f = g->begin(); f != g->end(); ++f)
      o += "<tr><td>" + esc(f.key()) + "</td><td>" + esc(f->is_string() ? f->get<std::string>() : f->dump()) + "</td></tr>";
    o += "</table>";
  }
  return o + "</div>";
}

std::string checkpoints_table(const std::string& dir) {
  const auto list = list_checkpoints(dir);
  if (list.empty()) return "<p class=\"muted\">no checkpoints</p>";
  std::string o = "<table><tr><th>file</th><th>step</th><th>size</th><th>written</th></tr>";
  for (const auto& p : list) {
    struct stat st{};
    ::stat(p.c_str(), &st);
    char when[64] = "";
    std::tm tm{};
    localtime_r(&st.st_mtime, &tm);
    std::strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", &tm);
    o += "<tr><td>" + esc(std::filesystem::path(p).filename().string()) + "</td><td>" +
         std::to_string(checkpoint_step(p)) + "</td><td>" + human_bytes(double(st.st_size)) +
         "</td><td>" + when + "</td></tr>";
  }
  return o + "</table>";
}

std::string summary_table(const std::vector<ReportRun>& runs) {
  std::string o = "<table><tr><th>run</th><th>steps</th><th>tokens</th><th>last train loss</th>"
                  "<th>best val loss</th><th>mean tokens/s</th><th>mean MFU</th><th>time</th><th>skipped / rollbacks</th></tr>";
  for (size_t i = 0; i < runs.size(); i++) {
    const ReportRun& r = runs[i];
    double last_loss = NAN, best_val = NAN, tokens = 0, tps = 0, mfu = 0, secs = 0, steps = 0;
    int n = 0, skipped = 0, rollbacks = 0;
    for (const json& j : r.records) {
      if (j["kind"] == "train") {
        last_loss = j.value("loss", NAN);
        tokens = j.value("tokens", 0.0);
        steps = j["step"].get<double>();
        tps += j.value("tokens_per_s", 0.0), mfu += j.value("mfu", 0.0), secs += j.value("step_s", 0.0);
        n++;
        skipped += j.contains("skipped");
      } else if (j["kind"] == "eval" && (j.value("domain", std::string()) == "all" || eval_domains(r).size() == 1)) {
        const double v = j.value("val_loss", NAN);
        if (std::isfinite(v) && !(v >= best_val)) best_val = v;
      } else if (j["kind"] == "rollback") {
        rollbacks++;
      }
    }
    char b[512];
    std::snprintf(b, sizeof b, "<tr><td><span class=\"sw\" style=\"background:%s\"></span>%s</td><td>%.0f</td>"
                  "<td>%s</td><td>%s</td><td>%s</td><td>%.0f</td><td>%.1f%%</td><td>%.0f s</td><td>%d / %d</td></tr>",
                  color(i).c_str(), esc(r.name).c_str(), steps, count_text(tokens).c_str(), num(last_loss).c_str(),
                  std::isfinite(best_val) ? num(best_val).c_str() : "-", n ? tps / n : 0.0,
                  n ? 100 * mfu / n : 0.0, secs, skipped, rollbacks);
    o += b;
  }
  return o + "</table>";
}

}  // namespace

std::string render_report(const std::vector<ReportRun>& runs) {
  DSV3_CHECK(!runs.empty(), "report: no run");
  const ReportRun& main = runs[0];
  std::string title = "dsv3 run report: " + main.name;
  if (runs.size() > 1) {
    title += " vs";
    for (size_t i = 1; i < runs.size(); i++) title += " " + runs[i].name;
  }
  std::string h = "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>" + esc(title) +
                  "</title>\n<style>\n"
                  "body{font-family:system-ui,-apple-system,'DejaVu Sans',sans-serif;margin:24px;color:#222;background:#f6f6f4}\n"
                  "h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:26px 0 8px}\n"
                  "section{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px 16px 16px;margin:14px 0}\n"
                  ".grid2{display:flex;flex-wrap:wrap;gap:10px}\n"
                  "svg.chart{border:1px solid #eee}\n"
                  ".ct{font-size:14px;font-weight:600;fill:#222}.tick{font-size:11px;fill:#555}.legend{font-size:12px;fill:#222}\n"
                  ".grid{stroke:#eee;stroke-width:1}.frame{fill:none;stroke:#999;stroke-width:1}\n"
                  ".muted{color:#888;fill:#888}\n"
                  "table{border-collapse:collapse;font-size:12px;margin:4px 12px 8px 0}td,th{border:1px solid #ddd;padding:2px 8px;text-align:left}\n"
                  "th{background:#f0f0ee}.cols{display:flex;flex-wrap:wrap;align-items:flex-start}\n"
                  ".sw{display:inline-block;width:10px;height:10px;margin-right:6px;border-radius:2px}\n"
                  "</style></head><body>\n";
  h += "<h1>" + esc(title) + "</h1><p class=\"muted\">" + esc(main.dir) + " &middot; " +
       std::to_string(main.records.size()) + " metrics records</p>\n";
  h += section("Summary", summary_table(runs));

  // losses: train (solid), validation per domain (dashed), MTP
  std::vector<ChartSeries> loss, mtp;
  for (size_t i = 0; i < runs.size(); i++) {
    const std::string pre = runs.size() > 1 ? runs[i].name + " " : "";
    loss.push_back({pre + "train", color(i), series_of(runs[i], "train", "loss")});
    const auto doms = eval_domains(runs[i]);
    for (size_t d = 0; d < doms.size(); d++) {
      ChartSeries s{pre + "val " + doms[d], color(runs.size() > 1 ? i : d + 1),
                    series_of(runs[i], "eval", "val_loss", doms[d]), true};
      loss.push_back(s);
    }
    Points m = series_of(runs[i], "train", "mtp_loss");
    if (std::any_of(m.begin(), m.end(), [](auto p) { return p.second != 0; })) {
      mtp.push_back({pre + "MTP train", color(i), m});
      for (const auto& d : doms) mtp.push_back({pre + "MTP val " + d, color(i), series_of(runs[i], "eval", "val_mtp_loss", d), true});
    }
  }
  std::string charts = svg_line_chart("loss", "Loss (nats/token): train, validation per domain", "step", loss);
  if (!mtp.empty()) charts += svg_line_chart("mtp_loss", "MTP loss (nats/token)", "step", mtp);
  h += section("Loss", "<div class=\"grid2\">" + charts + "</div>");
  h += section("Optimisation",
               "<div class=\"grid2\">" + train_chart(runs, "lr", "Learning rate", "lr") +
                   train_chart(runs, "grad_norm", "Gradient norm (before clipping)", "grad_norm", 1, true) +
                   "</div>");
  h += section("Throughput and memory",
               "<div class=\"grid2\">" + train_chart(runs, "tokens_per_s", "Tokens / s", "tokens_per_s") +
                   train_chart(runs, "mfu", "MFU (%)", "mfu", 100) +
                   train_chart(runs, "memory", "Peak resident memory (MiB)", "peak_rss_bytes", 1.0 / 1048576) +
                   "</div>");
  // expert load: max/mean per layer over steps, and one heatmap per layer
  std::vector<std::string> layers;
  for (const json& j : main.records)
    if (j["kind"] == "train" && j.contains("expert_load")) {
      for (const json& l : j["expert_load"]) layers.push_back(l.value("layer", std::string()));
      break;
    }
  if (!layers.empty()) {
    std::vector<ChartSeries> mx;
    for (size_t li = 0; li < layers.size(); li++) {
      Points p;
      for (const json& j : main.records)
        if (j["kind"] == "train" && j.contains("expert_load"))
          for (const json& l : j["expert_load"])
            if (l.value("layer", std::string()) == layers[li]) p.push_back({j["step"].get<double>(), l.value("max_over_mean", NAN)});
      mx.push_back({layers[li], color(li), p});
    }
    std::string body = "<div class=\"grid2\">" + svg_line_chart("load_max", "Expert load: max / mean per MoE layer", "step", mx);
    for (const auto& l : layers) body += load_heatmap(main, l);
    h += section("Expert load (" + main.name + ")", body + "</div>");
  }
  // mixture weights
  std::map<std::string, Points> mix;
  for (const json& j : main.records)
    if (j["kind"] == "mixture" && j.contains("mixture") && j["mixture"].contains("weights"))
      for (auto it = j["mixture"]["weights"].begin(); it != j["mixture"]["weights"].end(); ++it)
        mix[it.key()].push_back({j["step"].get<double>(), it->get<double>()});
  if (!mix.empty()) {
    std::vector<ChartSeries> s;
    size_t i = 0;
    for (auto& [name, p] : mix) s.push_back({name, color(i++), p});
    h += section("Data mixture (" + main.name + ")", svg_line_chart("mixture", "Mixture weights", "step", s));
  }
  h += section("Settings (" + main.name + ")", settings_table(main.settings));
  for (const ReportRun& r : runs) h += section("Checkpoints (" + r.name + ")", checkpoints_table(r.dir));
  return h + "</body></html>\n";
}

}  // namespace dsv3

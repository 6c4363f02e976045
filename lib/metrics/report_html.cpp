// run_report::to_html(): one self-contained page (inline CSS and SVG, no script, no network).
#include <procflow/report.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <string>

namespace procflow {

namespace {

std::string escape(std::string_view s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

constexpr const char* palette[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};

// Busy / starved / blocked shares of each stage's replica time, as horizontal stacked bars.
std::string share_bars(const run_report& r) {
  const int row = 26, label = 170, width = 520;
  std::string svg = fmt::format("<svg xmlns='http://www.w3.org/2000/svg' width='{}' height='{}' role='img'>", label + width + 60,
                                row * static_cast<int>(r.stages.size()) + 30);
  int y = 0;
  for (const auto& s : r.stages) {
    const double denominator = r.wall_s * s.replicas;
    svg += fmt::format("<text x='0' y='{}' font-size='13'>{}</text>", y + 17, escape(s.name));
    if (denominator > 0) {
      double x = label;
      const std::pair<double, const char*> parts[] = {{s.busy_s, "#2ca02c"}, {s.starved_s, "#1f77b4"}, {s.blocked_s, "#d62728"}};
      for (const auto& [v, color] : parts) {
        const double w = std::clamp(v / denominator, 0.0, 1.0) * width;
        svg += fmt::format("<rect x='{:.1f}' y='{}' width='{:.1f}' height='18' fill='{}'/>", x, y + 4, w, color);
        x += w;
      }
      svg += fmt::format("<text x='{}' y='{}' font-size='12'>{:.0f}% busy</text>", label + width + 6, y + 17, 100 * s.busy_s / denominator);
    } else {
      svg += fmt::format("<text x='{}' y='{}' font-size='12' fill='#777'>runs in the caller's process</text>", label, y + 17);
    }
    y += row;
  }
  svg += fmt::format(
      "<rect x='{0}' y='{1}' width='12' height='12' fill='#2ca02c'/><text x='{2}' y='{3}' font-size='12'>busy</text>"
      "<rect x='{4}' y='{1}' width='12' height='12' fill='#1f77b4'/><text x='{5}' y='{3}' font-size='12'>starved</text>"
      "<rect x='{6}' y='{1}' width='12' height='12' fill='#d62728'/><text x='{7}' y='{3}' font-size='12'>blocked</text>",
      label, y + 8, label + 16, y + 19, label + 70, label + 86, label + 150, label + 166);
  return svg + "</svg>";
}

// Items out per second of each stage over time, from the sampled counters.
std::string throughput_chart(const run_report& r) {
  const int w = 720, h = 260, left = 70, bottom = 30;
  if (r.samples.size() < 2) return "<p>Too few samples for a chart (the run was shorter than the sampling interval).</p>";
  const double t_end = std::max(r.samples.back().time_s, 1e-9);
  std::vector<std::vector<std::pair<double, double>>> lines(r.stages.size());
  double peak = 0;
  for (std::size_t k = 1; k < r.samples.size(); ++k) {
    const auto& a = r.samples[k - 1];
    const auto& b = r.samples[k];
    const double dt = b.time_s - a.time_s;
    if (dt <= 0) continue;
    for (std::size_t i = 0; i < r.stages.size() && i < b.stages.size(); ++i) {
      const double rate = static_cast<double>(b.stages[i].items_out - std::min(a.stages[i].items_out, b.stages[i].items_out)) / dt;
      lines[i].push_back({b.time_s, rate});
      peak = std::max(peak, rate);
    }
  }
  if (peak <= 0) peak = 1;
  std::string svg = fmt::format("<svg xmlns='http://www.w3.org/2000/svg' width='{}' height='{}' role='img'>", w + 180, h + bottom);
  svg += fmt::format("<line x1='{0}' y1='0' x2='{0}' y2='{1}' stroke='#444'/><line x1='{0}' y1='{1}' x2='{2}' y2='{1}' stroke='#444'/>", left,
                     h, left + w);
  svg += fmt::format("<text x='0' y='12' font-size='12'>{:.3g}/s</text><text x='0' y='{}' font-size='12'>0</text>", peak, h);
  svg += fmt::format("<text x='{}' y='{}' font-size='12'>{:.2f} s</text>", left + w - 40, h + 20, t_end);
  for (std::size_t i = 0; i < lines.size(); ++i) {
    if (lines[i].empty() || r.stages[i].replicas == 0) continue;
    std::string points;
    for (const auto& [t, v] : lines[i]) points += fmt::format("{:.1f},{:.1f} ", left + t / t_end * w, h - v / peak * (h - 10));
    const char* color = palette[i % std::size(palette)];
    svg += fmt::format("<polyline fill='none' stroke='{}' stroke-width='2' points='{}'/>", color, points);
    svg += fmt::format("<rect x='{}' y='{}' width='12' height='12' fill='{}'/><text x='{}' y='{}' font-size='12'>{}</text>", left + w + 10,
                       10 + 18 * static_cast<int>(i), color, left + w + 26, 21 + 18 * static_cast<int>(i), escape(r.stages[i].name));
  }
  return svg + "</svg>";
}

}  // namespace

std::string run_report::to_html() const {
  std::string out =
      "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>procflow report: " + escape(pipeline) +
      "</title><style>body{font-family:sans-serif;margin:24px;color:#222;background:#fff}pre{font-size:12px;background:#f4f4f4;"
      "padding:8px;overflow-x:auto}h2{margin-top:28px}.verdict{font-size:16px;padding:8px;border-left:4px solid #d62728;"
      "background:#fff4f4}</style></head><body>\n";
  out += fmt::format("<h1>Pipeline '{}'</h1><p>{:.3f} s wall time, {} processes.</p>\n", escape(pipeline), wall_s, processes);
  if (const bottleneck_verdict v = verdict(); v.why != bottleneck_verdict::cause::none)
    out += fmt::format("<p class='verdict'>Bottleneck: <b>{}</b> ({}). {}</p>\n", escape(v.stage), procflow::to_string(v.why), escape(v.to_string()));
  out += "<h2>Time of each stage's replicas</h2>\n" + share_bars(*this) + "\n";
  out += "<h2>Throughput over time (items out per second)</h2>\n" + throughput_chart(*this) + "\n";
  bool any_counter = false;
  for (const auto& s : stages) any_counter = any_counter || !s.counters.empty();
  if (any_counter) {
    out += "<h2>Named counters</h2>\n<table><tr><th>stage</th><th>counter</th><th>count</th><th>per replica</th></tr>\n";
    for (const auto& s : stages)
      for (const auto& c : s.counters) {
        std::string per_replica;
        for (const auto& r : replica_rows)
          for (const auto& rc : r.counters)
            if (rc.stage == c.stage && rc.name == c.name) per_replica += fmt::format("{}{}", per_replica.empty() ? "" : " / ", rc.value);
        out += fmt::format("<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n", escape(c.stage), escape(c.name), c.value, per_replica);
      }
    out += "</table>\n";
  }
  out += "<h2>Table</h2>\n<pre>" + escape(to_string(true)) + "</pre>\n</body></html>\n";
  return out;
}

}  // namespace procflow

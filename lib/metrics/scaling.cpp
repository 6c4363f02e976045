#include <procflow/scaling.hpp>

#include <nlohmann/json.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <limits>
#include <stdexcept>

namespace procflow {

namespace {

double time_of(const std::function<void()>& f) {
  const auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Least-squares fit of f in 1/S(n) = f + (1 - f)/n, i.e. 1/S - 1/n = f (1 - 1/n), where S is the
// speedup relative to the pipeline at 1 core (`base`); clamped to [0, 1].
double fit_serial_fraction(const std::vector<scaling_point>& points, double base) {
  double num = 0, den = 0;
  for (const auto& p : points) {
    if (p.speedup <= 0 || base <= 0 || p.cores < 2) continue;
    const double x = 1.0 - 1.0 / p.cores;
    num += x * (base / p.speedup - 1.0 / p.cores);
    den += x * x;
  }
  return den > 0 ? std::clamp(num / den, 0.0, 1.0) : 0.0;
}

}  // namespace

scaling_study study_scaling(std::uint32_t max_cores, const std::function<void()>& sequential,
                            const std::function<run_report(std::uint32_t)>& run_at, std::uint32_t repeats) {
  if (max_cores == 0) throw std::invalid_argument("procflow::study_scaling: need at least 1 core");
  repeats = std::max(repeats, 1u);
  scaling_study s;
  s.sequential_s = std::numeric_limits<double>::infinity();
  for (std::uint32_t r = 0; r < repeats; ++r) s.sequential_s = std::min(s.sequential_s, time_of(sequential));
  for (std::uint32_t n = 1; n <= max_cores; ++n) {
    scaling_point p;
    p.cores = n;
    p.wall_s = std::numeric_limits<double>::infinity();
    for (std::uint32_t r = 0; r < repeats; ++r) {
      run_report report;
      const double t = time_of([&] { report = run_at(n); });
      if (t < p.wall_s) {
        p.wall_s = t;
        const stage_report* hot = report.bottleneck();
        p.bottleneck = hot ? hot->name : "";
      }
    }
    p.speedup = p.wall_s > 0 ? s.sequential_s / p.wall_s : 0;
    p.efficiency = p.speedup / n;
    s.points.push_back(p);
  }
  // The speedup at 1 core says what the runtime costs over the loop; the fit scales from it.
  const double base = s.points.front().speedup;
  s.serial_fraction = fit_serial_fraction(s.points, base);
  for (const std::uint32_t n : {2 * max_cores, 4 * max_cores}) {
    scaling_point p;
    p.cores = n;
    p.predicted = true;
    p.speedup = base / (s.serial_fraction + (1 - s.serial_fraction) / n);
    p.wall_s = p.speedup > 0 ? s.sequential_s / p.speedup : 0;
    p.efficiency = p.speedup / n;
    s.points.push_back(p);
  }
  return s;
}

std::string scaling_study::to_string() const {
  std::string out = fmt::format("sequential loop: {:.3f} s; Amdahl fit: serial fraction {:.3f}\n", sequential_s, serial_fraction);
  out += fmt::format("  {:>6} {:>10} {:>8} {:>11}  {}\n", "cores", "wall s", "speedup", "efficiency", "bottleneck");
  for (const auto& p : points)
    out += fmt::format("  {:>6} {:>10.3f} {:>7.2f}x {:>11.2f}  {}\n", p.cores, p.wall_s, p.speedup, p.efficiency,
                       p.predicted ? "(predicted)" : p.bottleneck);
  return out;
}

std::string scaling_study::to_json() const {
  nlohmann::json j;
  j["sequential_s"] = sequential_s;
  j["serial_fraction"] = serial_fraction;
  j["points"] = nlohmann::json::array();
  for (const auto& p : points)
    j["points"].push_back({{"cores", p.cores},
                           {"wall_s", p.wall_s},
                           {"speedup", p.speedup},
                           {"efficiency", p.efficiency},
                           {"bottleneck", p.bottleneck},
                           {"predicted", p.predicted}});
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string scaling_study::to_svg() const {
  const int w = 480, h = 320, left = 50, bottom = 40;
  double max_cores = 1, max_speedup = 1;
  for (const auto& p : points) {
    max_cores = std::max(max_cores, static_cast<double>(p.cores));
    max_speedup = std::max(max_speedup, p.speedup);
  }
  max_speedup = std::max(max_speedup, std::min(max_cores, max_speedup * 1.2));
  const auto x = [&](double c) { return left + c / max_cores * w; };
  const auto y = [&](double s) { return h - s / max_speedup * (h - 10); };
  std::string svg = fmt::format("<svg xmlns='http://www.w3.org/2000/svg' width='{}' height='{}' role='img'>", w + left + 120, h + bottom);
  svg += fmt::format("<line x1='{0}' y1='0' x2='{0}' y2='{1}' stroke='#444'/><line x1='{0}' y1='{1}' x2='{2}' y2='{1}' stroke='#444'/>", left, h,
                     left + w);
  svg += fmt::format("<text x='{}' y='{}' font-size='12'>cores</text><text x='0' y='14' font-size='12'>{:.1f}x</text>", left + w - 30,
                     h + 30, max_speedup);
  svg += fmt::format("<line x1='{:.1f}' y1='{:.1f}' x2='{:.1f}' y2='{:.1f}' stroke='#bbb' stroke-dasharray='4'/>", x(0), y(0),
                     x(std::min(max_cores, max_speedup)), y(std::min(max_cores, max_speedup)));
  std::string measured, predicted;
  for (const auto& p : points) {
    const std::string pt = fmt::format("{:.1f},{:.1f} ", x(p.cores), y(p.speedup));
    (p.predicted ? predicted : measured) += pt;
    if (!p.predicted) predicted = pt;  // the predicted line starts at the last measured point
    svg += fmt::format("<circle cx='{:.1f}' cy='{:.1f}' r='4' fill='{}'/><text x='{:.1f}' y='{}' font-size='11'>{}</text>", x(p.cores),
                       y(p.speedup), p.predicted ? "#ff7f0e" : "#1f77b4", x(p.cores) - 4, h + 15, p.cores);
  }
  svg += fmt::format("<polyline fill='none' stroke='#1f77b4' stroke-width='2' points='{}'/>", measured);
  svg += fmt::format("<polyline fill='none' stroke='#ff7f0e' stroke-width='2' stroke-dasharray='6' points='{}'/>", predicted);
  svg += fmt::format("<text x='{}' y='20' font-size='12' fill='#1f77b4'>measured</text><text x='{}' y='36' font-size='12' fill='#ff7f0e'>"
                     "predicted (Amdahl fit)</text><text x='{}' y='52' font-size='12' fill='#999'>ideal</text>",
                     left + w + 10, left + w + 10, left + w + 10);
  return svg + "</svg>\n";
}

}  // namespace procflow

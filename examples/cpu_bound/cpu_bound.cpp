// row numbers -> Mandelbrot row (points inside, iterations) -> rows   (timed against a plain loop)
//
//   cpu_bound [--output FILE] [--replicas N] [--width W] [--height H] [--iterations I]
//
// A compute-heavy map: each item is one row of a W x H Mandelbrot image (escape-time iteration, at most
// I iterations per point; rows through the set cost far more than rows outside it). It runs the same
// job as a plain sequential loop and as a procflow pipeline whose replicas claim chunks of the row
// numbers (dynamic dispatch, so the expensive middle rows do not idle a core), checks that both agree,
// and prints the speedup and the parallel efficiency (speedup / replicas). --output writes
// row,inside,iterations for every row.
#include <procflow/procflow.hpp>

#include "example_cli.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <sys/resource.h>
#include <cstdint>
#include <tuple>
#include <vector>

namespace pf = procflow;

namespace {

std::uint32_t width = 1600, height = 1200, max_iterations = 2000;
std::uint32_t scaling_max = 0;  // --scaling N

// (row, points of the row inside the set, iterations spent on the row)
using row_result = std::tuple<std::uint32_t, std::uint32_t, std::uint64_t>;

row_result mandelbrot_row(std::uint32_t y, std::uint32_t w, std::uint32_t h, std::uint32_t limit) {
  const double ci = -1.2 + 2.4 * (y + 0.5) / h;
  std::uint32_t inside = 0;
  std::uint64_t iterations = 0;
  for (std::uint32_t x = 0; x < w; ++x) {
    const double cr = -2.2 + 3.0 * (x + 0.5) / w;
    double zr = 0, zi = 0;
    std::uint32_t i = 0;
    while (i < limit && zr * zr + zi * zi <= 4.0) {
      const double t = zr * zr - zi * zi + cr;
      zi = 2 * zr * zi + ci;
      zr = t;
      ++i;
    }
    iterations += i;
    inside += i == limit;
  }
  return {y, inside, iterations};
}

// CPU seconds (user + system) of this process (`who` = RUSAGE_SELF) or of its reaped children.
double cpu_seconds(int who) {
  rusage ru{};
  ::getrusage(who, &ru);
  return double(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + 1e-6 * double(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

// --scaling N: the scaling study (procflow::study_scaling) at 1..N replicas instead of one run.
int scaling_study(const example::options& o) {
  const std::uint32_t w = width, h = height, limit = max_iterations;
  const auto study = pf::study_scaling(
      scaling_max,
      [&] {
        std::uint64_t sum = 0;
        for (std::uint32_t y = 0; y < h; ++y) sum += std::get<2>(mandelbrot_row(y, w, h, limit));
        if (sum == 0) std::fputc(' ', stderr);  // keeps the loop from being optimized away
      },
      [&](std::uint32_t n) {
        return pf::pipeline("cpu_bound", pf::cores(n))
            .source("rows", pf::iota<std::uint32_t>(0, h))
            .map("mandelbrot", [w, h, limit](std::uint32_t y) { return mandelbrot_row(y, w, h, limit); }, pf::replicas(n))
            .collect()
            .run()
            .report;
      });
  fmt::print("Mandelbrot {}x{}, at most {} iterations: scaling study\n{}", w, h, limit, study.to_string());
  if (!o.report_json.empty()) example::write_text_file(o.report_json, study.to_json());
  if (!o.html.empty())
    example::write_text_file(o.html, "<!DOCTYPE html><html><head><meta charset='utf-8'><title>cpu_bound scaling</title></head><body><pre>" +
                                         study.to_string() + "</pre>" + study.to_svg() + "</body></html>\n");
  return 0;
}

int run(const example::options& o) {
  if (scaling_max > 0) return scaling_study(o);
  const std::uint32_t w = width, h = height, limit = max_iterations;
  using clock = std::chrono::steady_clock;

  double cpu0 = cpu_seconds(RUSAGE_SELF);
  auto t0 = clock::now();
  std::vector<row_result> expected;
  expected.reserve(h);
  for (std::uint32_t y = 0; y < h; ++y) expected.push_back(mandelbrot_row(y, w, h, limit));
  const double loop_s = std::chrono::duration<double>(clock::now() - t0).count();
  const double loop_cpu = cpu_seconds(RUSAGE_SELF) - cpu0;

  cpu0 = cpu_seconds(RUSAGE_SELF) + cpu_seconds(RUSAGE_CHILDREN);
  t0 = clock::now();
  auto result = pf::pipeline("cpu_bound", example::profile(o))
                    .source("rows", pf::iota<std::uint32_t>(0, h))
                    .map("mandelbrot", [w, h, limit](std::uint32_t y) { return mandelbrot_row(y, w, h, limit); },
                         pf::replicas(o.replicas))
                    .collect()
                    .run();
  const double procflow_s = std::chrono::duration<double>(clock::now() - t0).count();
  const double procflow_cpu = cpu_seconds(RUSAGE_SELF) + cpu_seconds(RUSAGE_CHILDREN) - cpu0;

  auto& rows = result.value;
  std::sort(rows.begin(), rows.end());
  if (rows != expected) {
    fmt::print(stderr, "cpu_bound: the pipeline's rows differ from the sequential loop's\n");
    return 1;
  }
  std::uint64_t inside = 0, iterations = 0;
  for (const auto& [y, in, it] : rows) inside += in, iterations += it;
  const double speedup = loop_s / procflow_s;
  fmt::print("Mandelbrot {}x{}, at most {} iterations: {} points inside, {:.3g} iterations\n", w, h, limit, inside,
             double(iterations));
  fmt::print("sequential loop      {:8.3f} s wall {:8.3f} s CPU\n", loop_s, loop_cpu);
  fmt::print("procflow, {} replicas {:8.3f} s wall {:8.3f} s CPU   speedup {:.2f}x   parallel efficiency {:.2f}\n",
             o.replicas, procflow_s, procflow_cpu, speedup, speedup / o.replicas);
  fmt::print("(on a machine shared with other work the wall figures fall; CPU seconds show the work done)\n");
  std::fflush(stdout);

  return example::finish(o, rows, [](const auto& row) {
    const auto& [y, in, it] = row;
    return std::vector<std::string>{std::to_string(y), std::to_string(in), std::to_string(it)};
  }, result.report);
}

}  // namespace

int main(int argc, char** argv) {
  return example::main_guard(
      {"cpu_bound",
       "row numbers -> Mandelbrot row -> rows: a compute-heavy map, timed against the same sequential loop.", "", "",
       "row,inside,iterations",
       "  --width W      image width (default 1600)\n"
       "  --height H     image height = number of items (default 1200)\n"
       "  --iterations I at most I iterations per point (default 2000)\n"
       "  --scaling N    a scaling study instead: speedup and parallel efficiency at 1..N replicas vs the loop\n"
       "                 (--report-json / --html then get the study as JSON / an SVG chart)\n",
       ""},
      argc, argv, run, [](std::string_view flag, const char* value) {
        std::uint32_t* target = flag == "--width" ? &width : flag == "--height" ? &height : flag == "--iterations" ? &max_iterations
                                : flag == "--scaling" ? &scaling_max : nullptr;
        if (!target) return 0;
        if (!value) throw example::usage_error(fmt::format("{} needs a value", flag));
        *target = static_cast<std::uint32_t>(example::parse_count(flag, value, 1'000'000));
        return 2;
      });
}

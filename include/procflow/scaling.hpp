// A scaling study: the same pipeline at core budgets 1..N, timed against its sequential loop, with
// speedup and parallel efficiency per budget and what an Amdahl fit of the measurements predicts
// for larger budgets.
#pragma once

#include <procflow/report.hpp>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace procflow {

struct scaling_point {
  std::uint32_t cores = 0;    // the budget (replicas of the parallel stages, or pf::cores(n))
  double wall_s = 0;          // best of the repeats
  double speedup = 0;         // sequential_s / wall_s
  double efficiency = 0;      // speedup / cores
  std::string bottleneck;     // the report's bottleneck at this budget
  bool predicted = false;     // from the Amdahl fit, not measured
};

struct scaling_study {
  double sequential_s = 0;     // the sequential loop (best of the repeats)
  // Amdahl fit of the measured points: speedup(n) = speedup(1) / (f + (1 - f) / n).
  double serial_fraction = 0;
  std::vector<scaling_point> points;  // measured 1..N, then predicted 2N and 4N

  std::string to_string() const;  // a table
  std::string to_json() const;    // {"sequential_s", "serial_fraction", "points": [...]}
  std::string to_svg() const;     // speedup vs cores: measured, predicted and ideal
};

// Runs `sequential` and then `run_at(n)` for n = 1..max_cores, each `repeats` times (the best
// wall time counts), and fits Amdahl's law to the speedups. `run_at(n)` must run the pipeline
// with a budget of n cores (pf::cores(n), or n replicas of its parallel stages) and return its report.
scaling_study study_scaling(std::uint32_t max_cores, const std::function<void()>& sequential,
                            const std::function<run_report(std::uint32_t)>& run_at, std::uint32_t repeats = 1);

}  // namespace procflow

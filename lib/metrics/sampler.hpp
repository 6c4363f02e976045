// Sampler: the supervisor's view of a run while it goes on. At every tick past the sampling
// interval it reads every stage's counters and every boundary's ring occupancy from shared
// memory (relaxed loads, no syscall, nothing the replicas wait for), keeps the sample for the
// report's time series, and drives the progress line and callback.
#pragma once

#include "runtime/plan.hpp"
#include "runtime/run_state.hpp"

#include <procflow/report.hpp>

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace procflow::metrics {

class Sampler {
 public:
  Sampler(const detail::pipeline_def& def, const runtime::Plan& plan, const runtime::RunState& state);

  // Call at the start of the run (the steady clock origin of the samples).
  void start(std::uint64_t run_start_ns);
  // Samples if the interval has passed since the last sample; cheap otherwise. May call the
  // user's progress callback (whatever it throws goes to the caller).
  void tick();
  // The longest the supervisor should wait between ticks.
  std::chrono::milliseconds interval() const noexcept { return interval_; }
  // A last sample, the progress line cleared, and the time series moved into `report`.
  void finish(run_report& report);

 private:
  run_sample take(double time_s) const;
  void on_sample();
  std::string progress_line(const progress_snapshot& p) const;

  const detail::pipeline_def& def_;
  const runtime::Plan& plan_;
  const runtime::RunState& state_;
  const profile_options& options_;
  std::chrono::milliseconds interval_;
  bool print_ = false;  // write the progress line to stderr
  std::uint64_t run_start_ns_ = 0;
  std::uint64_t next_ns_ = 0;
  std::vector<run_sample> samples_;
  std::size_t line_width_ = 0;  // of the last progress line written
};

}  // namespace procflow::metrics

// Turns the shared-memory counters and ReplicaStats of a finished run into the report's
// per-replica rows and per-stage process figures (CPU, RSS, I/O).
#pragma once

#include "runtime/plan.hpp"
#include "runtime/run_state.hpp"

#include <procflow/report.hpp>

#include <cstdint>

namespace procflow::metrics {

// Adds one replica_report per replica slot that started, and fills each stage's cpu_s,
// peak_rss_bytes, read_bytes and written_bytes from its group's replicas. `run_start_ns` is the
// supervisor's steady-clock start of the run.
void add_replica_rows(run_report& report, const detail::pipeline_def& def, const runtime::Plan& plan,
                      const runtime::RunState& state, std::uint64_t run_start_ns);

}  // namespace procflow::metrics

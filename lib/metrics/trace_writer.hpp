// Writes a finished run as Chrome trace-event JSON (pf::trace): loads in ui.perfetto.dev and
// chrome://tracing. One process per process group, one thread track per replica with its busy /
// starved / blocked spans (from its SpanRing), and counter tracks from the sampled time series:
// items/s per stage and slots used per boundary.
#pragma once

#include "runtime/plan.hpp"
#include "runtime/run_state.hpp"

#include <procflow/report.hpp>

#include <cstdint>
#include <string>

namespace procflow::metrics {

// The trace as a string. Throws nothing but std::bad_alloc.
std::string trace_json(const run_report& report, const detail::pipeline_def& def, const runtime::Plan& plan,
                       const runtime::RunState& state, std::uint64_t run_start_ns);

// Writes trace_json() to `path` (through a temporary file renamed into place). Throws
// std::system_error naming the file when it cannot.
void write_trace(const std::string& path, const run_report& report, const detail::pipeline_def& def, const runtime::Plan& plan,
                 const runtime::RunState& state, std::uint64_t run_start_ns);

}  // namespace procflow::metrics

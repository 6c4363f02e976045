#include "metrics/trace_writer.hpp"

#include <nlohmann/json.hpp>

#include <fmt/format.h>

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <map>
#include <system_error>

namespace procflow::metrics {

namespace {

using json = nlohmann::json;

const char* kind_name(SpanKind k) {
  switch (k) {
    case SpanKind::busy: return "busy";
    case SpanKind::starved: return "starved";
    case SpanKind::blocked: return "blocked";
  }
  return "unknown";
}

// Trace processes: 1 + group index for the groups, and one for the pipeline's counters.
constexpr std::uint32_t counters_pid = 100000;

}  // namespace

std::string trace_json(const run_report& report, const detail::pipeline_def& def, const runtime::Plan& plan,
                       const runtime::RunState& state, std::uint64_t run_start_ns) {
  json events = json::array();
  const double run_end_us = report.wall_s * 1e6;
  std::uint64_t dropped = 0;
  for (std::size_t g = 0; g < plan.groups.size(); ++g) {
    const runtime::Group& group = plan.groups[g];
    std::string names;
    for (std::size_t i = group.first_stage; i < group.end_stage; ++i) names += (names.empty() ? "" : "+") + def.stages[i]->name();
    const auto pid = static_cast<std::uint32_t>(g + 1);
    events.push_back({{"name", "process_name"}, {"ph", "M"}, {"pid", pid}, {"args", {{"name", fmt::format("group {}: {}", g, names)}}}});
    events.push_back({{"name", "process_sort_index"}, {"ph", "M"}, {"pid", pid}, {"args", {{"sort_index", g}}}});
    for (std::uint32_t k = 0; k < group.slots; ++k) {
      const std::uint32_t global = state.first_replica(g) + k;
      // Relaxed: see ReplicaStats (the replica was reaped).
      if (state.stats(global).start_ns.load(std::memory_order_relaxed) == 0) continue;  // never started
      const auto tid = k + 1;
      events.push_back({{"name", "thread_name"}, {"ph", "M"}, {"pid", pid}, {"tid", tid}, {"args", {{"name", fmt::format("replica {}", k)}}}});
      const SpanRing* ring = state.spans(global);
      if (!ring) continue;
      // Relaxed: single writer, reaped (see SpanRing).
      const std::uint64_t n = std::min<std::uint64_t>(ring->count.load(std::memory_order_relaxed), SpanRing::capacity);
      dropped += ring->dropped.load(std::memory_order_relaxed);
      for (std::uint64_t e = 0; e < n; ++e) {
        const SpanEvent ev = ring->events[e];  // a copy: shared memory is read once
        if (ev.start_ns < run_start_ns) continue;
        const double ts = static_cast<double>(ev.start_ns - run_start_ns) / 1e3;
        if (ts > run_end_us) continue;
        const double dur = std::min(static_cast<double>(ev.duration_us), run_end_us - ts);
        events.push_back({{"name", kind_name(ev.kind)}, {"cat", "replica"}, {"ph", "X"}, {"ts", ts}, {"dur", dur}, {"pid", pid}, {"tid", tid}});
      }
    }
  }
  // Counter tracks from the samples.
  events.push_back({{"name", "process_name"}, {"ph", "M"}, {"pid", counters_pid}, {"args", {{"name", "pipeline '" + def.name + "'"}}}});
  const run_sample* prev = nullptr;
  for (const run_sample& s : report.samples) {
    const double ts = s.time_s * 1e6;
    if (prev && s.time_s > prev->time_s) {
      json rates = json::object();
      const double dt = s.time_s - prev->time_s;
      for (std::size_t i = 0; i < s.stages.size() && i < def.stages.size(); ++i) {
        const std::uint64_t a = prev->stages[i].items_out, b = s.stages[i].items_out;
        rates[def.stages[i]->name()] = static_cast<double>(b - std::min(a, b)) / dt;
      }
      events.push_back({{"name", "items out per second"}, {"ph", "C"}, {"ts", ts}, {"pid", counters_pid}, {"args", rates}});
    }
    json rings = json::object();
    for (std::size_t b = 0; b < s.ring_slots_used.size(); ++b) {
      const bool results = plan.has_results && b + 1 == s.ring_slots_used.size();
      rings[results ? fmt::format("group {} -> results", b) : fmt::format("group {} -> group {}", b, b + 1)] = s.ring_slots_used[b];
    }
    if (!rings.empty()) events.push_back({{"name", "ring slots used"}, {"ph", "C"}, {"ts", ts}, {"pid", counters_pid}, {"args", rings}});
    // Named counters (pf::counter): one counter track per stage that has any, a series per name.
    std::map<std::string, json> per_stage;
    for (const named_counter& c : s.counters) per_stage[c.stage][c.name] = c.value;
    for (auto& [stage, values] : per_stage)
      events.push_back({{"name", "counters: " + stage}, {"ph", "C"}, {"ts", ts}, {"pid", counters_pid}, {"args", std::move(values)}});
    prev = &s;
  }
  json trace = {{"traceEvents", std::move(events)},
                {"displayTimeUnit", "ms"},
                {"otherData", {{"pipeline", def.name}, {"wall_s", report.wall_s}, {"dropped_spans", dropped}}}};
  return trace.dump(-1, ' ', false, json::error_handler_t::replace);
}

void write_trace(const std::string& path, const run_report& report, const detail::pipeline_def& def, const runtime::Plan& plan,
                 const runtime::RunState& state, std::uint64_t run_start_ns) {
  const std::string text = trace_json(report, def, plan, state, run_start_ns);
  const std::string tmp = fmt::format("{}.tmp-{}", path, ::getpid());
  std::FILE* f = std::fopen(tmp.c_str(), "we");
  if (!f) throw std::system_error(errno, std::generic_category(), fmt::format("cannot write trace file '{}'", path));
  const bool written = std::fwrite(text.data(), 1, text.size(), f) == text.size();
  const int err = errno;
  if (std::fclose(f) != 0 || !written) {
    std::remove(tmp.c_str());
    throw std::system_error(written ? errno : err, std::generic_category(), fmt::format("cannot write trace file '{}'", path));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int e = errno;
    std::remove(tmp.c_str());
    throw std::system_error(e, std::generic_category(), fmt::format("cannot write trace file '{}'", path));
  }
}

}  // namespace procflow::metrics

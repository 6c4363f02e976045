#include "metrics/replica_rows.hpp"

#include <algorithm>

namespace procflow::metrics {

namespace {

double seconds(std::uint64_t ns) { return static_cast<double>(ns) / 1e9; }

}  // namespace

void add_replica_rows(run_report& report, const detail::pipeline_def& def, const runtime::Plan& plan,
                      const runtime::RunState& state, std::uint64_t run_start_ns) {
  const std::uint64_t run_end = run_start_ns + static_cast<std::uint64_t>(report.wall_s * 1e9);
  for (std::size_t g = 0; g < plan.groups.size(); ++g) {
    const runtime::Group& group = plan.groups[g];
    std::string names;
    for (std::size_t i = group.first_stage; i < group.end_stage; ++i) names += (names.empty() ? "" : "+") + def.stages[i]->name();
    double cpu = 0;
    std::uint64_t peak = 0, read = 0, written = 0;
    for (std::uint32_t k = 0; k < group.slots; ++k) {
      // Relaxed loads: see ReplicaStats and StageCounters (the replicas were reaped).
      const ReplicaStats& st = state.stats(state.first_replica(g) + k);
      const std::uint64_t start = st.start_ns.load(std::memory_order_relaxed);
      if (start == 0) continue;  // never started (a scalable group's spare slot)
      std::uint64_t end = st.end_ns.load(std::memory_order_relaxed);
      if (end == 0 || end > run_end) end = run_end;  // killed before it could record its end
      // A replica the scheduler retired left the run: its time ends there. Any other replica's
      // slot spans the run: after its end of stream it sits idle until the run ends (starved),
      // and a replica started with the run owns the time it took to fork it (runtime).
      // Relaxed: see ReplicaRecord::retire (read after the replica was reaped).
      const bool retired = state.record(state.first_replica(g) + k).retire.load(std::memory_order_relaxed) != 0;
      const bool from_start = k < group.replicas;
      const std::uint64_t slot_start = from_start ? std::min(run_start_ns, start) : start;
      const std::uint64_t slot_end = retired ? end : std::max(run_end, end);
      const std::uint64_t idle_after_end = slot_end > end ? slot_end - end : 0;
      replica_report r;
      r.process_group = static_cast<std::uint32_t>(g);
      r.replica = k;
      r.stages = names;
      r.start_s = start > run_start_ns ? seconds(start - run_start_ns) : 0;
      r.end_s = end > run_start_ns ? seconds(end - run_start_ns) : 0;
      r.wall_s = slot_end > slot_start ? seconds(slot_end - slot_start) : 0;
      std::uint64_t busy = 0;
      for (std::size_t i = group.first_stage; i < group.end_stage; ++i)
        busy += state.counters(i, k).busy_ns.load(std::memory_order_relaxed);
      const runtime::StageCounters& first = state.counters(group.first_stage, k);
      r.items_in = group.input == runtime::GroupInput::channel ? first.items_in.load(std::memory_order_relaxed)
                                                               : first.items_out.load(std::memory_order_relaxed);
      r.busy_s = seconds(busy);
      r.starved_s = seconds(first.starved_ns.load(std::memory_order_relaxed) + idle_after_end);
      r.idle_after_end_s = seconds(idle_after_end);
      report.stages[group.first_stage].starved_s += r.idle_after_end_s;
      r.blocked_s = seconds(state.counters(group.end_stage - 1, k).blocked_ns.load(std::memory_order_relaxed));
      r.runtime_s = r.wall_s - r.busy_s - r.starved_s - r.blocked_s;
      r.cpu_user_s = seconds(st.cpu_user_ns.load(std::memory_order_relaxed));
      r.cpu_system_s = seconds(st.cpu_system_ns.load(std::memory_order_relaxed));
      r.peak_rss_bytes = st.peak_rss_bytes.load(std::memory_order_relaxed);
      r.private_bytes = st.private_bytes.load(std::memory_order_relaxed);
      r.read_bytes = st.read_bytes.load(std::memory_order_relaxed);
      r.written_bytes = st.written_bytes.load(std::memory_order_relaxed);
      cpu += r.cpu_user_s + r.cpu_system_s;
      peak = std::max(peak, r.peak_rss_bytes);
      read += r.read_bytes;
      written += r.written_bytes;
      report.replica_rows.push_back(std::move(r));
    }
    for (std::size_t i = group.first_stage; i < group.end_stage && i < report.stages.size(); ++i) {
      stage_report& s = report.stages[i];
      s.cpu_s = cpu;
      s.peak_rss_bytes = peak;
      s.read_bytes = read;
      s.written_bytes = written;
    }
  }
}

}  // namespace procflow::metrics

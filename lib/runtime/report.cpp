#include <procflow/report.hpp>

#include <fmt/format.h>

#include <algorithm>

namespace procflow {

const stage_report* run_report::bottleneck() const {
  const std::string name = verdict().stage;
  for (const auto& s : stages)
    if (!name.empty() && s.name == name) return &s;
  return nullptr;
}

namespace {

std::string mebibytes(std::uint64_t bytes) { return fmt::format("{:.1f}", static_cast<double>(bytes) / (1024.0 * 1024.0)); }

}  // namespace

std::string restart_record::to_string() const {
  return fmt::format("stage '{}' replica {} (pid {}, {}) at {:.3f} s{}", stage, replica, pid, cause, time_s,
                     redelivered ? fmt::format("; redelivered {} ({} output slots already sent)", batch, sent_slots) : std::string());
}

std::string run_report::to_string(bool per_replica) const {
  std::string out = fmt::format("pipeline '{}': {:.3f} s wall, {} processes{}\n", pipeline, wall_s, processes,
                                peak_processes != 0 && peak_processes < processes ? fmt::format(" (at most {} at once)", peak_processes) : "");
  out += fmt::format("  {:<16} {:<13} {:>4} {:>5} {:>12} {:>12} {:>11} {:>7} {:>7} {:>7} {:>8} {:>8} {:>9} {:>9}\n", "stage", "kind",
                     "proc", "repl", "items in", "items out", "items/s", "busy %", "starv %", "block %", "CPU s", "RSS MiB",
                     "read MiB", "write MiB");
  const stage_report* hot = bottleneck();
  const bool scaled = std::any_of(stages.begin(), stages.end(), [](const stage_report& s) { return s.peak_replicas != s.replicas; }) ||
                      !decisions.empty();
  for (const auto& s : stages) {
    const double rate = wall_s > 0 ? static_cast<double>(s.items_out) / wall_s : 0;
    // Shares of the replicas' combined wall time (the run's wall time each).
    const double denominator = (wall_s > 0 && s.replicas > 0) ? wall_s * s.replicas : 0;
    const auto share = [&](double v) { return denominator > 0 ? 100.0 * v / denominator : 0.0; };
    out += fmt::format("  {:<16} {:<13} {:>4} {:>5} {:>12} {:>12} {:>11.3g} {:>7.1f} {:>7.1f} {:>7.1f} {:>8.3f} {:>8} {:>9} {:>9}{}\n",
                       s.name, s.kind, s.replicas ? fmt::format("{}", s.process_group) : "sup", s.replicas, s.items_in,
                       s.items_out, rate, share(s.busy_s), share(s.starved_s), share(s.blocked_s), s.cpu_s,
                       mebibytes(s.peak_rss_bytes), mebibytes(s.read_bytes), mebibytes(s.written_bytes),
                       &s == hot ? "  <- bottleneck" : "");
  }
  if (scaled) {
    out += fmt::format("  scheduler: {} cores; replicas final/peak:", cores);
    for (const auto& s : stages)
      if (s.replicas || s.peak_replicas) out += fmt::format(" {} {}/{}", s.name, s.replicas, s.peak_replicas);
    out += "\n";
  }
  for (const auto& d : decisions)
    out += fmt::format("  decision at {:.3f} s: group {} ({}) {} -> {} replicas{}\n", d.time_s, d.process_group, d.stages, d.from, d.to,
                       d.forced ? " (forced)"
                                : fmt::format(": true rate {:.4g}/s per replica, required {:.4g}/s, observed {:.4g}/s", d.true_rate,
                                              d.required_rate, d.observed_rate));
  if (per_replica && !replica_rows.empty()) {
    out += fmt::format("  {:<22} {:>4} {:>7} {:>12} {:>8} {:>7} {:>7} {:>7} {:>7} {:>8} {:>8} {:>9}\n", "replica (stages)", "proc",
                       "replica", "items in", "wall s", "busy %", "starv %", "block %", "rt %", "CPU s", "RSS MiB", "priv MiB");
    for (const auto& r : replica_rows) {
      const auto share = [&](double v) { return r.wall_s > 0 ? 100.0 * v / r.wall_s : 0.0; };
      out += fmt::format("  {:<22} {:>4} {:>7} {:>12} {:>8.3f} {:>7.1f} {:>7.1f} {:>7.1f} {:>7.1f} {:>8.3f} {:>8} {:>9}\n",
                         r.stages.size() > 22 ? r.stages.substr(0, 19) + "..." : r.stages, r.process_group, r.replica, r.items_in,
                         r.wall_s, share(r.busy_s), share(r.starved_s), share(r.blocked_s), share(r.runtime_s),
                         r.cpu_user_s + r.cpu_system_s, mebibytes(r.peak_rss_bytes), r.private_bytes != 0 ? mebibytes(r.private_bytes) : "-");  // "-": not measured
    }
  }
  // Named counters (pf::counter): the stage's sum, then each replica's count.
  for (const auto& s : stages)
    for (const auto& c : s.counters) {
      std::string per_replica_counts;
      for (const auto& r : replica_rows)
        for (const auto& rc : r.counters)
          if (rc.stage == c.stage && rc.name == c.name) per_replica_counts += fmt::format(" {}", rc.value);
      out += fmt::format("  counter {} '{}': {}{}\n", c.stage, c.name, c.value,
                         per_replica_counts.empty() ? "" : " (replicas:" + per_replica_counts + ")");
    }
  if (const bottleneck_verdict v = verdict(); v.why != bottleneck_verdict::cause::none) out += "  verdict: " + v.to_string() + "\n";
  for (const auto& s : stages)
    if (!s.note.empty()) out += fmt::format("  note: stage '{}' {}\n", s.name, s.note);
  for (const auto& s : stages)
    if (s.items_skipped || s.retries) out += fmt::format("  {}: {} items skipped, {} retries\n", s.name, s.items_skipped, s.retries);
  for (const auto& s : stages)
    if (s.recycles) out += fmt::format("  {}: {} replicas recycled\n", s.name, s.recycles);
  for (const auto& r : restarts) out += "  restart: " + r.to_string() + "\n";
  for (const auto& d : dead_letters)
    out += fmt::format("  dead letter: stage '{}' replica {} item {} ({}): {}: {}\n", d.stage, d.replica, d.item_seq,
                       d.item_kept ? fmt::format("{} bytes kept", d.item.size()) : "item not kept", d.exception_type,
                       d.message);
  return out;
}

}  // namespace procflow

#include <procflow/report.hpp>

#include <fmt/format.h>

#include <algorithm>

namespace procflow {

namespace {

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += fmt::format("\\u{:04x}", static_cast<unsigned>(c));
    } else {
      out += c;
    }
  }
  return out + "\"";
}

}  // namespace

const stage_report* run_report::bottleneck() const {
  const stage_report* best = nullptr;
  double best_load = -1;
  for (const auto& s : stages) {
    if (s.replicas == 0) continue;
    const double load = s.busy_s / s.replicas;
    if (load > best_load) {
      best_load = load;
      best = &s;
    }
  }
  return best;
}

std::string run_report::to_string() const {
  std::string out = fmt::format("pipeline '{}': {:.3f} s wall, {} processes\n", pipeline, wall_s, processes);
  out += fmt::format("  {:<16} {:<13} {:>4} {:>5} {:>12} {:>12} {:>11} {:>8} {:>9} {:>9}\n", "stage", "kind", "proc", "repl",
                     "items in", "items out", "items/s", "busy %", "starved s", "blocked s");
  const stage_report* hot = bottleneck();
  const bool scaled = std::any_of(stages.begin(), stages.end(), [](const stage_report& s) { return s.peak_replicas != s.replicas; }) ||
                      !decisions.empty();
  for (const auto& s : stages) {
    const double rate = wall_s > 0 ? static_cast<double>(s.items_out) / wall_s : 0;
    const double busy = (wall_s > 0 && s.replicas > 0) ? 100.0 * s.busy_s / (wall_s * s.replicas) : 0;
    out += fmt::format("  {:<16} {:<13} {:>4} {:>5} {:>12} {:>12} {:>11.3g} {:>8.1f} {:>9.3f} {:>9.3f}{}\n", s.name, s.kind,
                       s.replicas ? fmt::format("{}", s.process_group) : "sup", s.replicas, s.items_in, s.items_out, rate, busy,
                       s.starved_s, s.blocked_s, &s == hot ? "  <- bottleneck" : "");
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
  for (const auto& s : stages)
    if (s.items_skipped || s.retries) out += fmt::format("  {}: {} items skipped, {} retries\n", s.name, s.items_skipped, s.retries);
  for (const auto& d : dead_letters)
    out += fmt::format("  dead letter: stage '{}' replica {} item {}: {}: {}\n", d.stage, d.replica, d.item_seq, d.exception_type, d.message);
  return out;
}

std::string run_report::to_json() const {
  std::string out = fmt::format("{{\"pipeline\":{},\"wall_s\":{:.6f},\"processes\":{},\"stages\":[", json_string(pipeline), wall_s, processes);
  for (std::size_t i = 0; i < stages.size(); ++i) {
    const auto& s = stages[i];
    out += fmt::format(
        "{}{{\"name\":{},\"kind\":{},\"replicas\":{},\"process_group\":{},\"items_in\":{},\"items_out\":{},"
        "\"batches_in\":{},\"bytes_in\":{},\"busy_s\":{:.6f},\"starved_s\":{:.6f},\"blocked_s\":{:.6f},\"peak_replicas\":{}}}",
        i ? "," : "", json_string(s.name), json_string(s.kind), s.replicas, s.process_group, s.items_in, s.items_out,
        s.batches_in, s.bytes_in, s.busy_s, s.starved_s, s.blocked_s, s.peak_replicas);
  }
  out += fmt::format("],\"cores\":{},\"decisions\":[", cores);
  for (std::size_t i = 0; i < decisions.size(); ++i) {
    const auto& d = decisions[i];
    out += fmt::format(
        "{}{{\"time_s\":{:.6f},\"process_group\":{},\"stages\":{},\"from\":{},\"to\":{},\"true_rate\":{:.6g},"
        "\"required_rate\":{:.6g},\"observed_rate\":{:.6g},\"forced\":{}}}",
        i ? "," : "", d.time_s, d.process_group, json_string(d.stages), d.from, d.to, d.true_rate, d.required_rate, d.observed_rate,
        d.forced ? "true" : "false");
  }
  return out + "]}";
}

}  // namespace procflow

// run_report::to_json(): the report as JSON, schema "procflow.report/1" (lib/metrics/profiling.md).
// Field names are stable: new fields may be added, none renamed or removed within version 1.
#include <procflow/report.hpp>

#include "faults/dead_letter_file.hpp"

#include <nlohmann/json.hpp>

namespace procflow {

namespace {

using json = nlohmann::json;

double share(double part, double whole) { return whole > 0 ? part / whole : 0.0; }

json stage_json(const stage_report& s, double wall_s) {
  const double denominator = wall_s * s.replicas;
  json j = {
      {"name", s.name},
      {"kind", s.kind},
      {"process_group", s.process_group},
      {"replicas", s.replicas},
      {"peak_replicas", s.peak_replicas},
      {"items_in", s.items_in},
      {"items_out", s.items_out},
      {"batches_in", s.batches_in},
      {"bytes_in", s.bytes_in},
      {"items_out_per_s", share(static_cast<double>(s.items_out), wall_s)},
      {"busy_s", s.busy_s},
      {"starved_s", s.starved_s},
      {"blocked_s", s.blocked_s},
      {"busy_share", share(s.busy_s, denominator)},
      {"starved_share", share(s.starved_s, denominator)},
      {"blocked_share", share(s.blocked_s, denominator)},
      {"cpu_s", s.cpu_s},
      {"peak_rss_bytes", s.peak_rss_bytes},
      {"read_bytes", s.read_bytes},
      {"written_bytes", s.written_bytes},
      {"replica_items_in", s.replica_items_in},
  };
  json counters = json::object();  // pf::counter: name -> count, summed over replicas
  for (const auto& c : s.counters) counters[c.name] = c.value;
  j["counters"] = std::move(counters);
  if (!s.note.empty()) j["note"] = s.note;
  if (s.items_skipped || s.retries) {  // pf::skip / pf::retry (policy.hpp)
    j["items_skipped"] = s.items_skipped;
    j["retries"] = s.retries;
  }
  if (s.restarts) j["restarts"] = s.restarts;  // pf::restart
  if (s.recycles) j["recycles"] = s.recycles;  // pf::recycle  // why the stage runs as it does (e.g. holds state)
  return j;
}

json counter_list(const std::vector<named_counter>& counters) {
  json list = json::array();
  for (const auto& c : counters) list.push_back({{"stage", c.stage}, {"name", c.name}, {"value", c.value}});
  return list;
}

json replica_json(const replica_report& r) {
  return {
      {"counters", counter_list(r.counters)},
      {"process_group", r.process_group},
      {"replica", r.replica},
      {"stages", r.stages},
      {"items_in", r.items_in},
      {"start_s", r.start_s},
      {"end_s", r.end_s},
      {"wall_s", r.wall_s},
      {"busy_s", r.busy_s},
      {"starved_s", r.starved_s},
      {"idle_after_end_s", r.idle_after_end_s},
      {"blocked_s", r.blocked_s},
      {"runtime_s", r.runtime_s},
      {"cpu_user_s", r.cpu_user_s},
      {"cpu_system_s", r.cpu_system_s},
      {"peak_rss_bytes", r.peak_rss_bytes},
      {"private_bytes", r.private_bytes},
      {"read_bytes", r.read_bytes},
      {"written_bytes", r.written_bytes},
  };
}

json decision_json(const scheduler_decision& d) {
  return {
      {"time_s", d.time_s},         {"process_group", d.process_group}, {"stages", d.stages},
      {"from", d.from},             {"to", d.to},                       {"true_rate", d.true_rate},
      {"required_rate", d.required_rate}, {"observed_rate", d.observed_rate}, {"forced", d.forced},
  };
}

json sample_json(const run_sample& s) {
  json stages = json::array();
  for (const auto& st : s.stages)
    stages.push_back({{"items_in", st.items_in},
                      {"items_out", st.items_out},
                      {"busy_s", st.busy_s},
                      {"starved_s", st.starved_s},
                      {"blocked_s", st.blocked_s}});
  return {{"time_s", s.time_s}, {"stages", std::move(stages)}, {"ring_slots_used", s.ring_slots_used}, {"counters", counter_list(s.counters)}};
}

}  // namespace

std::string run_report::to_json() const {
  json j;
  j["schema"] = "procflow.report/1";
  j["pipeline"] = pipeline;
  j["wall_s"] = wall_s;
  j["processes"] = processes;
  j["peak_processes"] = peak_processes;
  j["cores"] = cores;
  const stage_report* hot = bottleneck();
  j["bottleneck"] = hot ? json(hot->name) : json(nullptr);
  const bottleneck_verdict v = verdict();
  j["verdict"] = {
      {"stage", v.stage.empty() ? json(nullptr) : json(v.stage)},
      {"process", v.process},
      {"why", procflow::to_string(v.why)},
      {"cause_stage", v.cause_stage.empty() ? json(nullptr) : json(v.cause_stage)},
      {"busy_share", v.busy_share},
      {"starved_share", v.starved_share},
      {"blocked_share", v.blocked_share},
      {"evidence", v.evidence},
      {"replicas", v.replicas},
      {"true_rate", v.true_rate},
      {"items_per_s", v.items_per_s},
      {"add_replicas", v.add_replicas},
      {"predicted_speedup", v.predicted_speedup},
      {"predicted_items_per_s", v.predicted_items_per_s},
      {"next_limit", v.next_limit.empty() ? json(nullptr) : json(v.next_limit)},
      {"next_limit_items_per_s", v.next_limit_items_per_s},
      {"text", v.to_string()},
  };
  j["stages"] = json::array();
  for (const auto& s : stages) j["stages"].push_back(stage_json(s, wall_s));
  j["replicas"] = json::array();
  for (const auto& r : replica_rows) j["replicas"].push_back(replica_json(r));
  j["decisions"] = json::array();
  for (const auto& d : decisions) j["decisions"].push_back(decision_json(d));
  j["samples"] = json::array();
  for (const auto& s : samples) j["samples"].push_back(sample_json(s));
  j["dead_letters"] = json::array();  // pf::skip: the encoded item in base64 (dead_letter.hpp)
  for (const auto& d : dead_letters) j["dead_letters"].push_back(faults::dead_letter_json(d));
  if (!restarts.empty()) {  // pf::restart
    j["restarts"] = json::array();
    for (const auto& r : restarts)
      j["restarts"].push_back({{"time_s", r.time_s}, {"stage", r.stage}, {"replica", r.replica}, {"pid", r.pid}, {"cause", r.cause},
                               {"redelivered", r.redelivered}, {"batch", r.batch}, {"sent_slots", r.sent_slots}});
  }
  // Invalid UTF-8 in a stage name is replaced rather than thrown on.
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

}  // namespace procflow

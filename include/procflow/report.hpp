// run_report: what a pipeline run did, per stage — items in and out, time busy in user code,
// starved (waiting for input) and blocked (waiting for room downstream), summed over replicas.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <procflow/dead_letter.hpp>
#include <procflow/profile.hpp>
#include <procflow/verdict.hpp>

#include <fmt/format.h>

namespace procflow {

struct stage_report {
  std::string name;
  std::string kind;             // "source", "map", "filter", ...
  std::uint32_t replicas = 0;       // at the end of the run
  std::uint32_t peak_replicas = 0;  // the most running at once (auto_scale may change the count)
  std::uint32_t process_group = 0;  // stages with the same group run fused in the same processes
  std::uint64_t items_in = 0;
  std::uint64_t items_out = 0;
  std::uint64_t batches_in = 0;
  std::uint64_t bytes_in = 0;
  double busy_s = 0;     // in user code (and encoding/decoding), summed over replicas
  double starved_s = 0;  // waiting for input, and idle after its stream ended (per process group)
  double blocked_s = 0;  // waiting for room downstream (per process group)
  std::vector<std::uint64_t> replica_items_in;  // items_in of each replica (how evenly work spread)
  // What the kernel accounted to the processes of this stage's process group (fused stages share
  // them, so they show the same figures); 0 for a stage running in the supervisor.
  double cpu_s = 0;                  // user + system CPU, summed over replicas
  std::uint64_t peak_rss_bytes = 0;  // the largest peak RSS of one replica
  std::uint64_t read_bytes = 0;      // through read-like syscalls (/proc/self/io rchar), summed
  std::uint64_t written_bytes = 0;   // through write-like syscalls (wchar), summed
  std::string note;  // why the stage runs as it does, when that is not what was asked (else empty)
  std::uint64_t items_skipped = 0;  // set aside under pf::skip (policy.hpp)
  std::uint64_t retries = 0;        // tries after a failure under pf::retry
  std::vector<named_counter> counters;  // its pf::counter counts, summed over replicas (counter.hpp)
  std::uint32_t restarts = 0;       // replicas that died in this stage and were replaced (pf::restart)
  std::uint32_t recycles = 0;       // replicas of its process group replaced by pf::recycle
};

// One replica process: where its time went and what the kernel accounted to it. Busy, starved
// and blocked are disjoint; runtime_s is the rest of its wall time (being forked, the runtime's
// own work between batches, finishing): busy_s + starved_s + blocked_s + runtime_s == wall_s.
// A replica's wall time is the run's, except for one the scheduler started later (from its
// start) or retired (to its end): a replica whose stream ended before the run did sits idle,
// and that time is starved time (idle_after_end_s says how much of it).
struct replica_report {
  std::uint32_t process_group = 0;
  std::uint32_t replica = 0;  // within its group
  std::string stages;         // the stages it runs, "parse+filter"
  std::uint64_t items_in = 0; // into its first stage (out of it for a source)
  double start_s = 0;         // since the run started: when its process began its work
  double end_s = 0;           // since the run started: when it finished
  double wall_s = 0;          // the run's wall time (see above)
  double busy_s = 0;          // in user code and encoding/decoding, over its stages
  double starved_s = 0;       // waiting for input, up to the end of the run
  double idle_after_end_s = 0;  // of starved_s: after it finished, until the run's end
  double blocked_s = 0;       // waiting for room downstream
  double runtime_s = 0;       // wall_s minus the three above
  double cpu_user_s = 0;
  double cpu_system_s = 0;
  std::uint64_t peak_rss_bytes = 0;
  // Resident and not shared with other processes (at its end); 0: not measured, because reading it
  // would cost more than ~1% of the replica's life (the read walks every page the process maps:
  // ~0.1 ms + ~15 us per MiB resident, a forked child of a large caller included).
  std::uint64_t private_bytes = 0;
  std::uint64_t read_bytes = 0;
  std::uint64_t written_bytes = 0;
  std::vector<named_counter> counters;  // the pf::counter counts of its stages in this replica
};

// One change the scheduler made: a process group (its stages) went from `from` to `to` replicas,
// because one replica takes `true_rate` items per second of busy time and the group must take
// `required_rate` items per second for the planned throughput (it took `observed_rate`).
struct scheduler_decision {
  double time_s = 0;  // since the run started
  std::uint32_t process_group = 0;
  std::string stages;  // "parse+filter"
  std::uint32_t from = 0;
  std::uint32_t to = 0;
  double true_rate = 0;
  double required_rate = 0;
  double observed_rate = 0;
  bool forced = false;  // made by a test hook, not the policy
};

// A replica that died and was replaced under pf::restart (policy.hpp), and the batch it had in
// hand, delivered again to its replacement.
struct restart_record {
  double time_s = 0;            // since the run started
  std::string stage;            // the stage it died in
  std::uint32_t replica = 0;
  std::int32_t pid = 0;         // the process that died
  std::string cause;            // "killed by signal 9 (Killed)", "exit code 3", "watchdog"
  bool redelivered = false;     // a batch went to the replacement again
  std::string batch;            // which one: "batch 12: source items [992, 1024)"
  std::uint64_t sent_slots = 0; // of its output slots, published by the dead replica (not sent twice)

  // "stage 'b' replica 1 (pid 42, killed by signal 9 (Killed)) at 0.120 s; redelivered batch 3: ..."
  std::string to_string() const;
};

struct run_report {
  std::string pipeline;
  double wall_s = 0;
  std::uint32_t processes = 0;  // replicas forked (auto_scale: over the whole run)
  // The most of them alive at once (a retiring replica until it exits); 0 where not counted
  // (thread mode, the totals of an MPI job).
  std::uint32_t peak_processes = 0;
  std::uint32_t cores = 0;      // the core budget the scheduler shared out
  std::vector<stage_report> stages;
  std::vector<scheduler_decision> decisions;
  std::vector<replica_report> replica_rows;  // every replica process that ran, by group and replica
  std::vector<run_sample> samples;           // the counters sampled while the run went on
  std::vector<dead_letter> dead_letters;
  std::vector<restart_record> restarts;  // pf::restart, in order

  // The stage that limits throughput: verdict().stage (nullptr if none ran in a replica).
  const stage_report* bottleneck() const;
  // Which stage limits throughput, why, and what more replicas of it would give (verdict.hpp).
  bottleneck_verdict verdict() const;
  // A table, one row per stage (what fmt::print("{}", report) prints); with `per_replica`, a
  // second table with one row per replica process (a skewed replica shows there).
  std::string to_string(bool per_replica = false) const;
  // The whole report as one JSON object (schema "procflow.report/1", documented in
  // lib/metrics/profiling.md); parse it with any JSON library.
  std::string to_json() const;
  // One self-contained HTML page (no scripts, no external styles or fonts): the verdict, the
  // table, and SVG charts of each stage's throughput over time and its busy / starved / blocked
  // shares.
  std::string to_html() const;
};

}  // namespace procflow

template <>
struct fmt::formatter<procflow::run_report> : fmt::formatter<std::string_view> {
  template <class Context>
  auto format(const procflow::run_report& r, Context& ctx) const {
    return fmt::formatter<std::string_view>::format(r.to_string(), ctx);
  }
};

// run_report: what a pipeline run did, per stage — items in and out, time busy in user code,
// starved (waiting for input) and blocked (waiting for room downstream), summed over replicas.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

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
  double starved_s = 0;  // waiting for input (per process group)
  double blocked_s = 0;  // waiting for room downstream (per process group)
  std::vector<std::uint64_t> replica_items_in;  // items_in of each replica (how evenly work spread)
  std::uint64_t items_skipped = 0;  // set aside under pf::skip (policy.hpp)
  std::uint64_t retries = 0;        // tries after a failure under pf::retry
};

// An item a stage skipped (pf::skip): the stage, the replica, the item's sequence number (as
// stage_error::item_seq) and what its function threw. The first dead_letters_per_replica per
// replica are kept.
struct dead_letter {
  std::string stage;
  std::uint32_t replica = 0;
  std::uint64_t item_seq = 0;
  std::string exception_type;
  std::string message;
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

struct run_report {
  std::string pipeline;
  double wall_s = 0;
  std::uint32_t processes = 0;  // replicas forked (auto_scale: over the whole run)
  std::uint32_t cores = 0;      // the core budget the scheduler shared out
  std::vector<stage_report> stages;
  std::vector<scheduler_decision> decisions;
  std::vector<dead_letter> dead_letters;

  // The stage whose replicas were busiest relative to their count (nullptr if none ran).
  const stage_report* bottleneck() const;
  // A table, one row per stage (what fmt::print("{}", report) prints).
  std::string to_string() const;
  // One JSON object.
  std::string to_json() const;
};

}  // namespace procflow

template <>
struct fmt::formatter<procflow::run_report> : fmt::formatter<std::string_view> {
  template <class Context>
  auto format(const procflow::run_report& r, Context& ctx) const {
    return fmt::formatter<std::string_view>::format(r.to_string(), ctx);
  }
};

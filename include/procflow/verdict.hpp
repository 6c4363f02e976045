// verdict: which stage limits a run's throughput, why, and what more replicas of it would give
// (run_report::verdict(), worked out from the report's counters alone).
//
// The model (DS2's, OSDI 2018): a process group's *true rate* is the items it took per second of
// busy time per replica (waiting for input or for room downstream does not count). n replicas of
// it can take n times that; the pipeline goes as fast as its slowest group allows, and no faster
// than its cores can do the CPU work every source item costs. Rates are in source items per
// second (a group after a filter sees fewer items, and the model scales by that).
#pragma once

#include <cstdint>
#include <string>

namespace procflow {

struct bottleneck_verdict {
  // What holds the named stage back.
  enum class cause : std::uint8_t {
    none,     // nothing ran in a replica (no stage to name)
    busy,     // its own work: its replicas are busy most of the time; more of them would help
    starved,  // waiting for input: the limit is upstream (cause_stage), not in this stage
    blocked,  // waiting for room downstream: the limit is downstream (cause_stage)
    cores,    // every core is working: more replicas would share the same cores
    runtime,  // most of its time is the runtime's own (forking, moving batches, finishing): a run
              // too short or items too cheap for any stage's work to be the limit
  };

  std::string stage;         // the stage that limits throughput ("" when cause is none)
  std::string process;       // the stages of its process group, "parse+filter"
  cause why = cause::none;
  std::string cause_stage;   // starved: the stage upstream it waits on; blocked: the one downstream
  double busy_share = 0;     // of its replicas' wall time, 0..1
  double starved_share = 0;
  double blocked_share = 0;
  std::string evidence;      // what the neighbours show: "'read' blocked 71% (its input is full); 'sum' starved 80%"

  // The prediction (cause busy only; otherwise add_replicas is 0).
  std::uint32_t replicas = 0;          // the stage's replicas in this run
  double true_rate = 0;                // items into its process group per busy second, per replica
  double items_per_s = 0;              // this run: source items per second of wall time
  std::uint32_t add_replicas = 0;      // the suggestion: this many more replicas of the stage
  double predicted_speedup = 0;        // over this run, with the suggestion
  double predicted_items_per_s = 0;    // items_per_s * predicted_speedup
  std::string next_limit;              // what limits then: a stage's name, or "cores" (or "" if nothing known)
  double next_limit_items_per_s = 0;   // at that rate (source items per second)

  // One or two sentences: "parse: 97% busy (3% starved, 0% blocked): it limits throughput. 'read'
  // blocked 71% (its input is full); 'sum' starved 80%. 2 more replicas of parse (3): ~2.4x,
  // ~1.1e+04 items/s, until 'read' limits at 1.1e+04 items/s."
  std::string to_string() const;
};

// "busy", "starved", "blocked", "cores", "runtime", "none".
const char* to_string(bottleneck_verdict::cause c) noexcept;

}  // namespace procflow

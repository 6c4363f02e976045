// Plan: how a declared pipeline maps onto processes.
//
// Stages are grouped into *process groups*: adjacent stages with the same replica count are
// fused into one process per replica (like operator chaining in stream engines), unless a stage
// asks for its own processes or the pipeline turns fusion off. A splittable source (a range, a
// vector) joins the first group: its replicas claim chunks of it through a shared counter. A
// generator source has a group of its own (one process). collect, and a sink without
// replicas(n > 1) or own_process, run in the supervisor (fed by the results channel).
//
//   source -> map -> filter -> reduce        (default: fused)
//   [ group 0: source chunks + map + filter + reduce ] x R  --results-->  supervisor
#pragma once

#include <procflow/pipeline.hpp>

#include "channel/outbox.hpp"

#include <cstdint>
#include <vector>

namespace procflow::runtime {

enum class GroupInput : std::uint8_t { chunks, generator, channel };
enum class GroupOutput : std::uint8_t { channel, results, none };

struct Group {
  std::size_t first_stage = 0;  // [first_stage, end_stage) index into pipeline_def::stages
  std::size_t end_stage = 0;
  std::uint32_t replicas = 1;   // replicas started with
  // Replica slots laid out in shared memory (counters, records, rings): the most replicas the
  // group may ever have started, including retired ones (a slot is never reused). == replicas
  // unless the group is scalable.
  std::uint32_t slots = 1;
  bool scalable = false;        // the scheduler may start and retire replicas while it runs
  bool auto_scale = false;      // the user asked for auto_scale (scalable, or not when unsafe)
  GroupInput input = GroupInput::channel;
  GroupOutput output = GroupOutput::channel;
  // For output == channel/results: the stage whose encode_input() writes the port (the next
  // group's first stage, or the collect / terminal stage), and how the port dispatches.
  std::size_t encoder_stage = 0;
  channel::Dispatch dispatch = channel::Dispatch::least_loaded;
  bool keyed = false;
  // Batch geometry of the port this group writes.
  channel::RingGeometry out_geometry;
  // Latency bound of that port in ns (-1: off, 0: publish every item).
  std::int64_t out_latency_ns = 0;
  // pf::restart on one of its stages: a replica that dies is replaced in its slot and its batch
  // redelivered (runtime/redelivery.hpp); batches end with their output published.
  bool restartable = false;
  // pf::recycle (recycle.hpp): a replica leaves after this many items into its first stage, or
  // when its RSS passes this many bytes (checked after every batch); 0: never.
  std::uint64_t recycle_items = 0;
  std::uint64_t recycle_rss_bytes = 0;
};

struct Plan {
  std::vector<Group> groups;
  std::vector<std::uint32_t> stage_group;  // group index of every stage (collect: groups.size())
  bool ordered = false;
  bool has_results = false;                // the last group sends results to the supervisor
  std::uint64_t chunk_items = 0;           // chunked source: items per claim
  std::uint64_t chunks = 0;
  std::uint32_t total_replicas = 0;       // replicas started with
  std::uint32_t total_slots = 0;          // replica slots laid out (>= total_replicas)
  std::uint32_t cores = 1;                // the core budget
  bool scheduled = false;                 // some group is scalable: run the scheduler
  std::uint64_t seed = 0;                 // run seed: pf::seed(s), else fresh entropy (replica.hpp)
  // The source is pf::input (detail::caller_source_base): group 0 is not a process; the
  // caller's process writes its port (runtime/started_run.cpp).
  bool caller_fed = false;
  // Per stage: 1 when it holds state and so runs in one process instead of inheriting a count.
  std::vector<std::uint8_t> held_to_one;
  // Per stage: pf::restart(n)'s n (0: none).
  std::vector<std::uint32_t> restarts;
  bool restart_chunks = false;  // the chunk-claiming group is restartable: chunks have owner words
  // pf::pinning: the CPUs replica processes are pinned to, round robin by replica slot (the
  // first plan.cores CPUs this process may run on); empty: not pinned.
  std::vector<int> pin_cpus;
  // Pause rounds an idle port spins before it sleeps (channel/event.hpp): none when more
  // processes may be busy at once than this process has CPUs, where a spinning waiter would
  // take the core the process it waits for needs.
  std::uint32_t spin = channel::default_spin_iterations;
};

// Chunks a restartable chunk-claiming group may have (one owner word each in shared memory).
inline constexpr std::uint64_t max_restart_chunks = std::uint64_t{1} << 20;

// The CPUs this process may run on (sched_getaffinity), at least 1.
std::uint32_t available_cores();
// Their numbers, in increasing order (empty when sched_getaffinity fails).
std::vector<int> available_cpus();

// The pipeline's source is fed by the caller (pf::input).
bool caller_fed(const detail::pipeline_def& def) noexcept;

// Throws std::invalid_argument naming the stage when the declaration cannot run.
Plan make_plan(const detail::pipeline_def& def);

// Items [first, last) of a chunked source's chunk number `chunk` (of `total` items); empty
// (first == last == total) past the last chunk. Exact for every total up to 2^64 - 1.
struct ChunkRange {
  std::uint64_t first;
  std::uint64_t last;
};
ChunkRange chunk_range(const Plan& plan, std::uint64_t chunk, std::uint64_t total) noexcept;

}  // namespace procflow::runtime

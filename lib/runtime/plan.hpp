// Plan: how a declared pipeline maps onto processes.
//
// Stages are grouped into *process groups*: adjacent stages with the same replica count are
// fused into one process per replica (like operator chaining in stream engines), unless a stage
// asks for its own processes or the pipeline turns fusion off. A splittable source (a range, a
// vector) joins the first group: its replicas claim chunks of it through a shared counter. A
// generator source has a group of its own (one process). collect runs in the supervisor.
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
  std::uint32_t replicas = 1;
  GroupInput input = GroupInput::channel;
  GroupOutput output = GroupOutput::channel;
  // For output == channel/results: the stage whose encode_input() writes the port (the next
  // group's first stage, or the collect / terminal stage), and how the port dispatches.
  std::size_t encoder_stage = 0;
  channel::Dispatch dispatch = channel::Dispatch::least_loaded;
  bool keyed = false;
  // Batch geometry of the port this group writes.
  channel::RingGeometry out_geometry;
};

struct Plan {
  std::vector<Group> groups;
  std::vector<std::uint32_t> stage_group;  // group index of every stage (collect: groups.size())
  bool ordered = false;
  bool has_results = false;                // the last group sends results to the supervisor
  std::uint64_t chunk_items = 0;           // chunked source: items per claim
  std::uint64_t chunks = 0;
  std::uint32_t total_replicas = 0;
};

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

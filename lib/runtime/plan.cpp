#include "runtime/plan.hpp"

#include <fmt/format.h>

#include <sched.h>

#include <algorithm>
#include <random>
#include <stdexcept>

namespace procflow::runtime {

namespace {

constexpr std::uint32_t default_batch_bytes = 64 * 1024;
constexpr std::uint32_t default_ring_slots = 16;
// Like Kafka's linger.ms: long enough that a full-rate stream fills its slots first (a 64 KiB
// slot of 8-byte items fills in about 10 us), short next to what a person or a paced API waits.
constexpr std::int64_t default_max_latency_ns = 5'000'000;

channel::RingGeometry geometry_for(const detail::pipeline_def& def, const stage_options& s) {
  const auto& d = def.options.defaults;
  return {s.ring_slots.value_or(d.ring_slots.value_or(default_ring_slots)),
          s.batch_bytes.value_or(d.batch_bytes.value_or(default_batch_bytes))};
}

// A boundary where a side can grow has P x Q rings of slots x batch bytes; keep it within this
// (smaller rings before smaller batches: the batch size is what the stages' throughput feels).
constexpr std::uint64_t scalable_boundary_bytes = 64ull << 20;
constexpr std::uint32_t max_slots = 64;  // active-lane masks are 64 bits

void fit_boundary(channel::RingGeometry& g, std::uint64_t rings) {
  auto bytes = [&] { return rings * g.slot_count * std::uint64_t{g.payload_bytes}; };
  while (bytes() > scalable_boundary_bytes && g.slot_count > 2) g.slot_count /= 2;
  while (bytes() > scalable_boundary_bytes && g.payload_bytes > 8192) g.payload_bytes /= 2;
}

// Whether stage s may run in the processes of the group before it (the group loop's `joins`
// adds: the same count or both auto, and a group that does not read a generator). A sink with
// replicas of its own joins too (a sink in the caller is never in a group): the items it takes
// cross no ring; own_process keeps any stage (and key_by, which implies it) apart.
bool may_join(const detail::stage_base& s, bool fusion) {
  return fusion && !s.options().own_process;
}

// The maps, filters and flat_maps right after the source that took the previous stage's count
// (`inherited`) take the first explicit count after them instead, when they and that stage all
// run in one group: `lines -> filter -> map(replicas(4))` filters in the map's 4 processes (which
// then read the chunks themselves) instead of in one process and a hop before them.
void adopt_first_count(const detail::pipeline_def& def, const std::vector<bool>& inherited, std::vector<std::uint32_t>& replicas) {
  const auto& stages = def.stages;
  auto adopts = [&](std::size_t i) {
    const detail::stage_base& s = *stages[i];
    const bool stateless_kind = s.kind() == detail::stage_kind::map || s.kind() == detail::stage_kind::filter ||
                                s.kind() == detail::stage_kind::flat_map;
    return inherited[i] && stateless_kind && !s.options().keyed && may_join(s, def.options.fusion);
  };
  std::size_t first = 1;
  while (first < stages.size() && adopts(first)) ++first;
  if (first == 1 || first == stages.size()) return;
  const detail::stage_base& counted = *stages[first];
  if (!counted.options().replicas || counted.options().keyed || counted.runs_in_supervisor() || !may_join(counted, def.options.fusion)) return;
  for (std::size_t i = 1; i < first; ++i) replicas[i] = *counted.options().replicas;
}

}  // namespace

// Which auto groups may change while running, how many replicas they start with (an even share
// of the budget left by fixed groups) and how many slots they get.
void size_groups(Plan& plan) {
  std::uint32_t fixed = 0;
  std::uint32_t automatic = 0;
  for (std::size_t k = 0; k < plan.groups.size(); ++k) {
    Group& g = plan.groups[k];
    // What stays correct when replicas come and go (see lib/scheduler/README.md): stateless
    // stages and reduce (per-replica partials) scale; a generator is one process; ordered
    // pipelines number batches by replica count; keyed dispatch pins keys to replicas.
    const bool keyed_input = k > 0 && plan.groups[k - 1].keyed;
    g.scalable = g.auto_scale && g.input != GroupInput::generator && !plan.ordered && !keyed_input;
    if (g.auto_scale && g.input != GroupInput::generator) {
      ++automatic;
    } else {
      fixed += g.input == GroupInput::generator ? 1 : g.replicas;
    }
  }
  const std::uint32_t share = automatic ? std::max<std::uint32_t>(1, (plan.cores > fixed ? plan.cores - fixed : 0) / automatic) : 1;
  std::uint32_t minimum = 0;
  for (auto& g : plan.groups) {
    if (g.auto_scale && g.input != GroupInput::generator) g.replicas = std::min(share, max_slots);
    if (g.input == GroupInput::generator) g.replicas = 1;
    minimum += g.scalable ? 1 : g.replicas;
  }
  for (auto& g : plan.groups) {
    g.slots = g.replicas;
    if (!g.scalable) continue;
    const std::uint32_t reach = std::max(g.replicas, plan.cores > minimum ? plan.cores - minimum + 1 : 1);
    // Retired slots are not reused: room for the budget twice over (at least 4).
    g.slots = std::min(max_slots, std::max({g.replicas, 2 * reach, 4u}));
    plan.scheduled = true;
  }
}

std::vector<int> available_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> cpus;
  if (sched_getaffinity(0, sizeof set, &set) != 0) return cpus;
  for (std::size_t c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &set)) cpus.push_back(static_cast<int>(c));
  return cpus;
}

std::uint32_t available_cores() { return static_cast<std::uint32_t>(std::max<std::size_t>(1, available_cpus().size())); }

bool caller_fed(const detail::pipeline_def& def) noexcept {
  return !def.stages.empty() && dynamic_cast<const detail::caller_source_base*>(def.stages.front().get()) != nullptr;
}

Plan make_plan(const detail::pipeline_def& def) {
  const auto& stages = def.stages;
  if (stages.size() < 2) throw std::invalid_argument(fmt::format("pipeline '{}' needs a source and a terminal stage", def.name));
  if (!stages.front()->source()) throw std::invalid_argument(fmt::format("pipeline '{}': the first stage must be a source", def.name));

  Plan plan;
  plan.ordered = def.options.defaults.ordered;
  plan.caller_fed = caller_fed(def);
  for (const auto& s : stages) plan.ordered = plan.ordered || s->options().ordered;

  // Replica counts: explicit, else inherited from the previous stage (source = 1); sinks
  // default to one process (a file written by several would interleave).
  // auto_scale (on the stage, or on the pipeline for a stage without a count) is inherited the
  // same way; a sink is auto-scaled only when it asks itself.
  const std::uint32_t hardware = available_cores();
  plan.cores = def.options.cores.value_or(hardware);
  plan.seed = def.options.seed ? *def.options.seed : (std::uint64_t{std::random_device{}()} << 32) ^ std::random_device{}();
  std::vector<std::uint32_t> replicas(stages.size(), 1);
  plan.held_to_one.assign(stages.size(), 0);
  std::vector<bool> automatic(stages.size(), false);
  std::vector<bool> inherited(stages.size(), false);
  for (std::size_t i = 1; i < stages.size(); ++i) {
    const auto& o = stages[i]->options();
    const bool sink = stages[i]->kind() == detail::stage_kind::sink;
    if (o.replicas) {
      replicas[i] = *o.replicas;
    } else if (stages[i]->runs_in_supervisor()) {
      replicas[i] = 1;
    } else if (o.auto_scale) {
      automatic[i] = true;
    } else if (sink) {
      replicas[i] = 1;
    } else if (stages[i]->holds_state()) {
      replicas[i] = 1;  // a stateful callable is never replicated by accident (options.hpp)
      plan.held_to_one[i] = 1;
    } else if (def.options.defaults.auto_scale) {
      automatic[i] = true;
    } else {
      replicas[i] = replicas[i - 1];
      automatic[i] = automatic[i - 1];
      inherited[i] = true;
    }
  }
  adopt_first_count(def, inherited, replicas);
  constexpr std::uint32_t max_replicas = 256;  // P x Q rings per boundary: keep the segment sane
  for (std::size_t i = 1; i < stages.size(); ++i)
    if (replicas[i] > max_replicas)
      throw std::invalid_argument(fmt::format("pipeline '{}': stage '{}' asks for {} replicas (at most {})", def.name,
                                              stages[i]->name(), replicas[i], max_replicas));
  if (stages.front()->options().replicas && *stages.front()->options().replicas != 1)
    throw std::invalid_argument(fmt::format("pipeline '{}': source '{}' runs in one process; give replicas to the stages after it",
                                            def.name, stages.front()->name()));

  const detail::source_base* src = stages.front()->source();
  const std::size_t last_worker = stages.back()->runs_in_supervisor() ? stages.size() - 1 : stages.size();
  // A sink in the caller's process takes its items from the results channel, outside any
  // replica's policy guard: a skip or retry asked of it could only be ignored.
  if (const auto& t = *stages.back(); t.kind() == detail::stage_kind::sink && t.runs_in_supervisor() && t.options().on_error)
    throw std::invalid_argument(fmt::format(
        "procflow: stage '{}': pf::skip / pf::retry cannot apply to a sink that runs in the caller's process (its items "
        "are handed to it outside any replica); give it pf::own_process to run it in a replica, where the policy applies",
        t.name()));
  const bool fuse = def.options.fusion;

  // Source group, or the source fused into the first group.
  Group g;
  g.first_stage = 0;
  g.end_stage = 1;
  const bool chunked = src->splittable() && fuse && last_worker > 1 && !stages[1]->options().own_process &&
                       stages[1]->kind() != detail::stage_kind::sink;
  if (chunked) {
    g.input = GroupInput::chunks;
    g.replicas = replicas[1];
    g.auto_scale = automatic[1];
    replicas[0] = replicas[1];
  } else {
    g.input = GroupInput::generator;
    g.replicas = 1;
  }
  plan.groups.push_back(g);

  for (std::size_t i = 1; i < last_worker; ++i) {
    const auto& s = *stages[i];
    Group& cur = plan.groups.back();
    const bool joins = may_join(s, fuse) && automatic[i] == cur.auto_scale && (automatic[i] || replicas[i] == cur.replicas) &&
                       (cur.input != GroupInput::generator);
    if (joins) {
      cur.end_stage = i + 1;
      continue;
    }
    Group next;
    next.first_stage = i;
    next.end_stage = i + 1;
    next.replicas = replicas[i];
    next.auto_scale = automatic[i];
    next.input = GroupInput::channel;
    plan.groups.push_back(next);
  }

  // Outputs and dispatch.
  for (std::size_t k = 0; k < plan.groups.size(); ++k) {
    Group& grp = plan.groups[k];
    const auto& last = *stages[grp.end_stage - 1];
    const bool is_last_group = k + 1 == plan.groups.size();
    if (is_last_group) {
      if (last.kind() == detail::stage_kind::sink) {
        grp.output = GroupOutput::none;
      } else {
        grp.output = GroupOutput::results;
        grp.encoder_stage = last.is_terminal() ? grp.end_stage - 1 : stages.size() - 1;  // partials or collect
        plan.has_results = true;
      }
    } else {
      grp.output = GroupOutput::channel;
      grp.encoder_stage = plan.groups[k + 1].first_stage;
    }
    const auto& consumer = *stages[grp.output == GroupOutput::channel ? grp.encoder_stage : stages.size() - 1];
    // Key-hash dispatch needs a producer that encodes per item with the key (encode_input);
    // a source in its own process writes through produce(), so it dispatches by load instead
    // (still correct: the supervisor merges the partial maps by key).
    // key_by(fn) has no such fallback: its stage's state is per key, so run() refuses what cannot dispatch by key.
    if (grp.output == GroupOutput::channel && consumer.options().keyed && (plan.ordered || grp.input == GroupInput::generator))
      throw std::invalid_argument("procflow: stage '" + consumer.name() + "': key_by() " +
                                  (plan.ordered ? "cannot be combined with pf::ordered" : "cannot take its items straight from a source in its own process (put a map before it)"));
    if (grp.output == GroupOutput::channel &&
        (consumer.kind() == detail::stage_kind::reduce_by_key || consumer.options().keyed) && !plan.ordered &&
        grp.input != GroupInput::generator) {
      grp.dispatch = channel::Dispatch::by_key;
      grp.keyed = true;
    } else if (plan.ordered) {
      grp.dispatch = channel::Dispatch::by_sequence;
    } else {
      grp.dispatch = consumer.options().dispatch == dispatch::round_robin ? channel::Dispatch::round_robin
                                                                          : channel::Dispatch::least_loaded;
    }
    grp.out_geometry = geometry_for(def, stages[grp.end_stage - 1]->options());
    grp.out_latency_ns = stages[grp.end_stage - 1]->options().max_latency_ns.value_or(
        def.options.defaults.max_latency_ns.value_or(default_max_latency_ns));
  }
  // pf::restart: which groups replace a dead replica (see runtime/redelivery.hpp).
  plan.restarts.assign(stages.size(), 0);
  for (std::size_t i = 0; i < stages.size(); ++i) {
    const auto& o = stages[i]->options();
    plan.restarts[i] = o.restarts.value_or(def.options.defaults.restarts.value_or(0));
    if (plan.restarts[i] == 0) continue;
    const std::uint32_t k = i < last_worker ? static_cast<std::uint32_t>(
                                                  std::find_if(plan.groups.begin(), plan.groups.end(),
                                                               [&](const Group& gr) { return i >= gr.first_stage && i < gr.end_stage; }) -
                                                  plan.groups.begin())
                                            : static_cast<std::uint32_t>(plan.groups.size());
    if (k == plan.groups.size()) {
      plan.restarts[i] = 0;  // runs in the supervisor: nothing to restart
      continue;
    }
    if (plan.groups[k].input == GroupInput::generator && !o.restarts) {
      // A generator is run again from its start (faults/redelivery.hpp): only when its own
      // restart(n) says it yields the same items again, not by the pipeline's default.
      plan.restarts[i] = 0;
      continue;
    }
    plan.groups[k].restartable = true;
  }
  // pf::recycle: the smallest limits of a group's stages (per stage only: not a pipeline default).
  for (std::size_t i = 0; i < stages.size(); ++i) {
    const auto& o = stages[i]->options();
    if (o.recycle_items == 0 && o.recycle_rss_bytes == 0) continue;
    const auto it = std::find_if(plan.groups.begin(), plan.groups.end(), [&](const Group& gr) { return i >= gr.first_stage && i < gr.end_stage; });
    if (i >= last_worker || it == plan.groups.end()) continue;  // runs in the supervisor
    if (it->input == GroupInput::generator)
      throw std::invalid_argument(fmt::format("procflow: stage '{}': recycle cannot replace a source that runs in its own process",
                                              stages[i]->name()));
    auto smallest = [](std::uint64_t a, std::uint64_t b) { return a == 0 ? b : b == 0 ? a : std::min(a, b); };
    it->recycle_items = smallest(it->recycle_items, o.recycle_items);
    it->recycle_rss_bytes = smallest(it->recycle_rss_bytes, o.recycle_rss_bytes);
  }
  size_groups(plan);
  for (std::size_t k = 0; k < plan.groups.size(); ++k) {
    Group& grp = plan.groups[k];
    const bool grows = grp.scalable || (k + 1 < plan.groups.size() && plan.groups[k + 1].scalable);
    if (grows) fit_boundary(grp.out_geometry, std::uint64_t{grp.slots} * (k + 1 < plan.groups.size() ? plan.groups[k + 1].slots : 1));
    plan.total_replicas += grp.replicas;
    plan.total_slots += grp.slots;
  }
  // Busy processes at once: the replicas started with, or the budget the scheduler may fill.
  if (std::max(plan.total_replicas, plan.scheduled ? plan.cores : 0u) > hardware) plan.spin = 0;
  if (def.options.pinning) {
    plan.pin_cpus = available_cpus();
    if (plan.pin_cpus.size() > plan.cores) plan.pin_cpus.resize(plan.cores);
  }

  plan.stage_group.assign(stages.size(), static_cast<std::uint32_t>(plan.groups.size()));
  for (std::uint32_t k = 0; k < plan.groups.size(); ++k)
    for (std::size_t i = plan.groups[k].first_stage; i < plan.groups[k].end_stage; ++i) plan.stage_group[i] = k;

  if (chunked) {
    // A chunk is at most one batch worth of 8-byte items, and small enough that every replica
    // claims many (dynamic load balance: a slow item or a busy core holds up one chunk, not a
    // static share).
    const auto geometry = geometry_for(def, stages[0]->options());
    // Up to 8192 items (measured: 4096-8192 beat both 512 and 16384 on the trivial pipeline).
    const std::uint64_t per_batch = std::clamp<std::uint64_t>(geometry.payload_bytes / 8, 1, 8192);
    const std::uint64_t for_balance = src->size() / (std::uint64_t{plan.groups.front().slots} * 256);
    // Under restart every chunk ends with its output published (a reduce's partial among it):
    // chunks up to 8x larger keep that to one slot per 64 Ki items (pipeline_bench, restart on/off).
    plan.chunk_items = std::clamp<std::uint64_t>(for_balance, 1, plan.groups.front().restartable ? 8 * per_batch : per_batch);
    if (const std::uint64_t preferred = src->preferred_chunk_units()) plan.chunk_items = preferred;  // e.g. file blocks
    // Rounded up without forming size + chunk_items - 1, which wraps for ranges near 2^64 items
    // (iota<uint64_t>(0, UINT64_MAX) has 2^64 - 1).
    const std::uint64_t size = src->size();
    if (plan.groups.front().restartable) {
      // One owner word per chunk (runtime/redelivery.hpp): larger chunks past max_restart_chunks.
      plan.chunk_items = std::max(plan.chunk_items, size / max_restart_chunks + 1);
      plan.restart_chunks = true;
    }
    plan.chunks = size / plan.chunk_items + (size % plan.chunk_items != 0 ? 1 : 0);
  }
  return plan;
}

ChunkRange chunk_range(const Plan& plan, std::uint64_t chunk, std::uint64_t total) noexcept {
  if (chunk >= plan.chunks || plan.chunk_items == 0) return {total, total};
  // chunk < chunks, so first < total; first + chunk_items may exceed 2^64 for the last chunk of a
  // range near 2^64 items, hence the length is clamped by what is left, not the end by total.
  const std::uint64_t first = chunk * plan.chunk_items;
  if (first >= total) return {total, total};
  return {first, first + std::min(plan.chunk_items, total - first)};
}

}  // namespace procflow::runtime

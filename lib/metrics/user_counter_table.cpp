#include "metrics/user_counter_table.hpp"

#include "runtime/identity.hpp"
#include "runtime/run_state.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace procflow {

namespace {

// Process-wide like the identity (runtime/identity.cpp): a stage's own threads count into their
// replica's table too (one at a time: a table has one writer).
metrics::UserCounterTable* current_table = nullptr;

std::string_view stage_name(const runtime::Identity& id) {
  if (id.def && id.stage < id.def->stages.size()) return id.def->stages[id.stage]->name();
  return "?";
}

}  // namespace

counter::counter(std::string_view name) {
  const runtime::Identity& id = runtime::identity();
  // Thread mode: the table of the stage instance this thread runs now; else this process's.
  const runtime::ThreadIdentity* worn = runtime::worn_thread_identity();
  metrics::UserCounterTable* table = worn ? worn->counters : current_table;
  if (!table || !id.def)
    throw std::logic_error(fmt::format("procflow::counter(\"{}\"): named counters are kept only in the code of a pipeline's stage "
                                       "while it runs (run(), start(), run(pf::in_threads)), not outside a run",
                                       name));
  if (name.empty()) throw std::invalid_argument(fmt::format("procflow::counter: stage '{}': a counter needs a name", stage_name(id)));
  if (name.size() > max_counter_name)
    throw std::invalid_argument(fmt::format("procflow::counter(\"{}\"): stage '{}': a counter's name has at most {} bytes (this one {})",
                                            name, stage_name(id), max_counter_name, name.size()));
  const auto stage = static_cast<std::uint32_t>(id.stage);
  // Relaxed: this process is the table's only writer.
  const std::uint32_t n = table->count.load(std::memory_order_relaxed);
  for (std::uint32_t i = 0; i < n; ++i) {
    metrics::UserCounterSlot& s = table->slots[i];
    if (s.stage == stage && s.name_length == name.size() && std::memcmp(s.name, name.data(), name.size()) == 0) {
      value_ = &s.value;
      return;
    }
  }
  if (n >= max_counters)
    throw std::length_error(fmt::format("procflow::counter(\"{}\"): stage '{}': a replica process keeps at most {} named counters "
                                        "(stages fused into it included), and this would be one more",
                                        name, stage_name(id), max_counters));
  metrics::UserCounterSlot& s = table->slots[n];
  s.value.store(0, std::memory_order_relaxed);
  s.stage = stage;
  s.name_length = static_cast<std::uint32_t>(name.size());
  std::memcpy(s.name, name.data(), name.size());
  s.name[name.size()] = '\0';
  // SYNC POINT (release): the slot above is complete before a reader that acquires `count` sees it.
  table->count.store(n + 1, std::memory_order_release);
  value_ = &s.value;
}

}  // namespace procflow

namespace procflow::metrics {

void use_counter_table(UserCounterTable* table) noexcept { current_table = table; }
UserCounterTable* counter_table() noexcept { return current_table; }

namespace {

// Calls fn(stage, name, value) for every complete slot of `table`, checked (shared memory is
// not trusted: a corrupt count or length is clamped, an unknown stage skipped).
template <class Fn>
void for_each_slot(const UserCounterTable& table, std::size_t stages, Fn&& fn) {
  // SYNC POINT (acquire): pairs with counter::counter's release store of `count`.
  const std::uint32_t n = std::min<std::uint32_t>(table.count.load(std::memory_order_acquire), counter::max_counters);
  for (std::uint32_t i = 0; i < n; ++i) {
    const UserCounterSlot& s = table.slots[i];
    if (s.stage >= stages) continue;
    const std::string_view name(s.name, std::min<std::size_t>(s.name_length, counter::max_counter_name));
    // Relaxed: see UserCounterSlot::value.
    fn(s.stage, name, s.value.load(std::memory_order_relaxed));
  }
}

// Adds (stage, name, value) into `out`, keeping one entry per (stage, name).
void accumulate(std::vector<named_counter>& out, std::map<std::pair<std::uint32_t, std::string>, std::size_t>& index,
                const detail::pipeline_def& def, std::uint32_t stage, std::string_view name, std::uint64_t value) {
  auto [it, fresh] = index.try_emplace({stage, std::string(name)}, out.size());
  if (fresh) out.push_back({def.stages[stage]->name(), std::string(name), 0});
  out[it->second].value += value;
}

// The started replicas' tables and the supervisor's, as (global index, group, replica in group).
template <class Fn>
void for_each_table(const runtime::Plan& plan, const runtime::RunState& state, Fn&& fn) {
  for (std::size_t g = 0; g < plan.groups.size(); ++g)
    for (std::uint32_t k = 0; k < plan.groups[g].slots; ++k) fn(state.user_counters(state.first_replica(g) + k), g, k);
  fn(state.caller_counters(), plan.groups.size(), 0u);
}

}  // namespace

std::vector<named_counter> sum_user_counters(const detail::pipeline_def& def, const runtime::Plan& plan, const runtime::RunState& state) {
  std::vector<named_counter> out;
  std::map<std::pair<std::uint32_t, std::string>, std::size_t> index;
  std::vector<std::tuple<std::uint32_t, std::string, std::uint64_t>> seen;
  for_each_table(plan, state, [&](const UserCounterTable& t, std::size_t, std::uint32_t) {
    for_each_slot(t, def.stages.size(), [&](std::uint32_t stage, std::string_view name, std::uint64_t v) {
      seen.emplace_back(stage, std::string(name), v);
    });
  });
  // Stage order, then the order the names first appeared.
  std::stable_sort(seen.begin(), seen.end(), [](const auto& a, const auto& b) { return std::get<0>(a) < std::get<0>(b); });
  for (const auto& [stage, name, v] : seen) accumulate(out, index, def, stage, name, v);
  return out;
}

void add_stage_counters(run_report& report, const detail::pipeline_def& def, const std::vector<const UserCounterTable*>& tables) {
  // Per stage (by index: names need not be unique), over every table.
  std::vector<std::map<std::pair<std::uint32_t, std::string>, std::size_t>> per_stage(report.stages.size());
  for (const UserCounterTable* t : tables)
    for_each_slot(*t, def.stages.size(), [&](std::uint32_t stage, std::string_view name, std::uint64_t v) {
      if (stage < report.stages.size()) accumulate(report.stages[stage].counters, per_stage[stage], def, stage, name, v);
    });
}

void add_user_counters(run_report& report, const detail::pipeline_def& def, const runtime::Plan& plan, const runtime::RunState& state) {
  std::vector<const UserCounterTable*> tables;
  for_each_table(plan, state, [&](const UserCounterTable& t, std::size_t, std::uint32_t) { tables.push_back(&t); });
  add_stage_counters(report, def, tables);
  for_each_table(plan, state, [&](const UserCounterTable& t, std::size_t g, std::uint32_t k) {
    auto row = std::find_if(report.replica_rows.begin(), report.replica_rows.end(),
                            [&](const replica_report& r) { return r.process_group == g && r.replica == k; });
    if (row == report.replica_rows.end()) return;  // the supervisor's, or a slot never started
    std::map<std::pair<std::uint32_t, std::string>, std::size_t> index;
    for_each_slot(t, def.stages.size(), [&](std::uint32_t stage, std::string_view name, std::uint64_t v) {
      accumulate(row->counters, index, def, stage, name, v);
    });
  });
}

}  // namespace procflow::metrics

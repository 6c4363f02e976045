// UserCounterTable: one replica process's named counters (pf::counter, counter.hpp) in the run's
// shared memory, and what the supervisor makes of all of them.
//
// One writer (the replica: it registers names and bumps values), read by the supervisor at any
// time (samples) and after the replica was reaped (the report). A slot is filled (stage, name)
// before `count` is release-stored past it, so a reader that acquire-loads `count` sees complete
// slots; values are independent relaxed atomics.
#pragma once

#include "runtime/plan.hpp"
#include "shm/segment.hpp"

#include <procflow/counter.hpp>
#include <procflow/report.hpp>

#include <atomic>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace procflow::runtime {
class RunState;
}

namespace procflow::metrics {

struct UserCounterSlot {
  std::atomic<std::uint64_t> value;  // relaxed: see above
  std::uint32_t stage;               // pipeline stage index
  std::uint32_t name_length;         // <= counter::max_counter_name
  char name[counter::max_counter_name + 1];
};
static_assert(sizeof(UserCounterSlot) == 64);

struct alignas(shm::cache_line) UserCounterTable {
  // Slots filled so far. SYNC POINT (release, by the replica after filling a slot; acquire by the
  // supervisor's readers): a reader sees complete slots only.
  std::atomic<std::uint32_t> count;
  UserCounterSlot slots[counter::max_counters];
};
static_assert(std::is_standard_layout_v<UserCounterTable> && std::is_trivially_destructible_v<UserCounterTable>);
static_assert(std::atomic<std::uint64_t>::is_always_lock_free && std::atomic<std::uint32_t>::is_always_lock_free);

// The table pf::counter() uses in this process (null: none, counter() throws). A replica sets its
// own when it starts; the supervisor sets its own (a sink or collect running in the caller) for
// the length of run() and restores the previous one.
void use_counter_table(UserCounterTable* table) noexcept;
UserCounterTable* counter_table() noexcept;

class CounterTableScope {
 public:
  explicit CounterTableScope(UserCounterTable* table) noexcept : saved_(counter_table()) { use_counter_table(table); }
  ~CounterTableScope() { use_counter_table(saved_); }
  CounterTableScope(const CounterTableScope&) = delete;
  CounterTableScope& operator=(const CounterTableScope&) = delete;

 private:
  UserCounterTable* saved_;
};

// Every table's counts, summed by (stage, name), in stage order then first appearance.
std::vector<named_counter> sum_user_counters(const detail::pipeline_def& def, const runtime::Plan& plan, const runtime::RunState& state);
// Adds the counts of `tables` into stage_report::counters, summed by (stage, name).
void add_stage_counters(run_report& report, const detail::pipeline_def& def, const std::vector<const UserCounterTable*>& tables);
// Fills stage_report::counters and replica_report::counters of a finished run (after
// add_replica_rows).
void add_user_counters(run_report& report, const detail::pipeline_def& def, const runtime::Plan& plan, const runtime::RunState& state);

}  // namespace procflow::metrics

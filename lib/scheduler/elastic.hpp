// Elastic: the supervisor's side of the scheduler. It starts the replicas of every process group,
// keeps track of which replica slots run, and — every few hundred milliseconds, from the
// supervisor's drain loop — reads the live counters, asks the Policy for target counts and starts
// or retires replicas to reach them:
//
//   start (slot s of group g):  input lane s joins the channel's membership; s's acknowledgement
//                               of its output channel is reset; fork.
//   retire (slot s of group g): input lane s leaves the membership (producers stop choosing it
//                               and acknowledge), the replica drains its rings, sends any partial
//                               result, closes its own output lanes and exits. A chunk-claiming
//                               replica just stops claiming.
//   a group whose replicas all ended: the output lanes of slots never started are closed, so the
//                               consumers' end of stream counts only lanes that were ever active.
//
// The core budget counts processes alive, not only the active ones: a retiring replica still runs
// while it drains. A start that would take the processes alive past the budget while a retiring
// one is still draining waits for that one's exit (a deferred start, counted as a replica of its
// group meanwhile); so a decision moving replicas from one group to another never has more
// processes running than the budget, even for the milliseconds of a drain.
//
// Single-threaded, like the supervisor. Slots are never reused (a retired replica's closed
// output rings stay closed); a group has Group::slots of them.
#pragma once

#include "runtime/plan.hpp"
#include "runtime/run_state.hpp"
#include "scheduler/policy.hpp"

#include <procflow/pipeline.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

namespace procflow::scheduler {

// Test hook: scripted decisions instead of the policy for the next run() in this process.
// Step k applies once group `watch` has taken at least `at_items` items in.
struct ForcedStep {
  std::size_t watch = 0;
  std::uint64_t at_items = 0;
  std::size_t group = 0;
  std::uint32_t replicas = 1;
};
void force_next_run(std::vector<ForcedStep> steps);

class Elastic {
 public:
  using Clock = std::chrono::steady_clock;
  // Forks replica `slot` of `group` (the supervisor's ChildSet and bookkeeping).
  using Spawn = std::function<void(std::size_t group, std::uint32_t slot)>;

  Elastic(const detail::pipeline_def& def, const runtime::Plan& plan, const runtime::RunState& state, Spawn spawn);

  void start();
  // A replica ended and completed cleanly.
  void on_exit(std::size_t group, std::uint32_t slot);
  // Replicas of scalable groups recorded their completion (RunHeader::scalable_ends moved): a
  // group all of whose started replicas completed has ended, and the lanes of its slots never
  // started are closed now, before its processes are reaped (their exit takes a while).
  void on_completions();
  // A replica died and is replaced in its slot (pf::restart, faults/redelivery.hpp): the slot
  // stays started (and retiring, if it was), a new process runs in it.
  void restart_slot(std::size_t group, std::uint32_t slot) {
    ++processes_;
    spawn_(group, slot);
  }
  // Called often (every ~50 ms) from the supervisor's loop; acts every `interval`.
  void tick();
  bool scheduling() const noexcept { return policy_.has_value() || !forced_.empty(); }

  std::uint32_t final_replicas(std::size_t group) const { return final_.at(group); }
  std::uint32_t peak_replicas(std::size_t group) const { return peak_.at(group); }
  std::uint32_t processes() const noexcept { return processes_; }
  // The most replica processes alive at once (retiring ones until they exit).
  std::uint32_t peak_processes() const noexcept { return peak_live_; }
  std::vector<scheduler_decision> decisions() const { return decisions_; }

 private:
  struct SlotState {
    bool started = false;
    bool retiring = false;
    bool ended = false;
  };
  Snapshot snapshot() const;
  void apply(std::size_t group, std::uint32_t target);
  void start_slot(std::size_t group);
  // A start now would not take the processes alive past the budget while one still drains.
  bool may_start_now() const noexcept { return retiring_live_ == 0 || live_ < plan_.cores; }
  // Starts what waited for a retiring replica's exit, as far as the budget allows now.
  void start_deferred();
  void retire_slot(std::size_t group, std::uint32_t slot);
  // The group ended once every started replica recorded its completion (reaped or not yet):
  // its input is done and the lanes of its slots never started are closed, once.
  void end_if_completed(std::size_t group);
  const channel::Channel* output_of(std::size_t group) const;
  std::uint32_t first_worker(std::size_t group) const;

  const detail::pipeline_def& def_;
  const runtime::Plan& plan_;
  const runtime::RunState& state_;
  Spawn spawn_;
  Clock::time_point t0_;
  Clock::time_point next_tick_;
  std::optional<Policy> policy_;
  std::vector<ForcedStep> forced_;
  std::vector<std::vector<SlotState>> slots_;
  std::vector<std::uint32_t> active_;    // started, not retiring, not ended
  std::vector<std::uint32_t> deferred_;  // starts waiting for a retiring replica's exit (may_start_now)
  std::vector<std::uint32_t> peak_;
  std::vector<std::uint32_t> final_;
  std::vector<std::uint32_t> next_slot_;
  std::vector<std::uint64_t> lanes_;     // active input lanes of a channel-fed group
  std::vector<bool> input_done_;         // a replica ended on its own: the group's input is finished
  std::vector<bool> ended_;              // end_if_completed closed the group's unstarted lanes
  std::vector<scheduler_decision> decisions_;
  std::uint32_t processes_ = 0;
  std::uint32_t live_ = 0;           // replica processes started and not ended (retiring ones included)
  std::uint32_t retiring_live_ = 0;  // of which retiring
  std::uint32_t peak_live_ = 0;
};

}  // namespace procflow::scheduler

// The scheduling policy: how many replicas each process group should run, decided from counter
// snapshots alone (no processes, no clock: the caller passes time in), so that it can be tested on
// synthetic data and on a simulated machine of any size.
//
// DS2-style (Kalavri et al., OSDI 2018). For every group over a measurement window:
//   true rate      = items in per second of BUSY time of one replica (not per wall second)
//   selectivity    = items out / items in
//   demand         = items this group must take per source item (product of the selectivities
//                    of the groups before it)
//   cost           = demand / true rate  = replica-seconds this group spends per source item
// A split r gives the pipeline throughput T(r) = min over groups of r_g / cost_g (source items/s),
// capped by a group that cannot scale (a generator source, a fixed count). The policy picks the
// split that maximises T within the core budget (greedy on the bottleneck: optimal for a
// max-min of independent linear terms), then trims every group to the replicas that T needs, so
// groups that mostly wait give their cores back.
//
// Stability: a new split is only adopted when it predicts at least `min_gain` more throughput, or
// the same throughput (within `min_gain`) with fewer processes; windows shorter than
// `min_window_s` or spanning the last change are not used.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace procflow::scheduler {

// Cumulative counters of one process group, summed over its replicas (as read from shared memory).
struct GroupCounters {
  std::uint64_t items_in = 0;    // items taken by the group's first stage (a fused source: items produced)
  std::uint64_t items_out = 0;   // items leaving its last stage
  std::uint64_t busy_ns = 0;     // in stage code, summed over replicas
  std::uint64_t starved_ns = 0;  // waiting for input
  std::uint64_t blocked_ns = 0;  // waiting for room downstream
};

struct Snapshot {
  double time_s = 0;                  // when it was taken (any monotonic origin)
  std::vector<GroupCounters> groups;  // in pipeline order
  std::vector<std::uint32_t> replicas;  // running replicas per group when taken
  std::vector<double> ring_occupancy;   // fraction of the group's input ring slots in use (0..1), optional
};

struct GroupConstraint {
  std::string stages;            // names of the group's stages ("parse+filter"), for decisions
  bool may_scale = false;        // false: the count stays as it is (explicit replicas(n), generator, keyed, ordered)
  std::uint32_t min = 1;
  std::uint32_t max = 1;         // the most the runtime laid out for
};

struct PolicyConfig {
  std::uint32_t cores = 1;       // the budget: replicas of all groups together
  std::vector<GroupConstraint> groups;
  double min_interval_s = 0.3;   // between two decisions
  double min_window_s = 0.2;     // the shortest window measured
  double min_gain = 0.10;        // relative throughput gain that justifies a change
  std::uint64_t min_items = 64;  // a group that took fewer items in the window is not measured
};

// One change of one group, with the figures that justified it.
struct Decision {
  double time_s = 0;
  std::size_t group = 0;
  std::string stages;
  std::uint32_t from = 0;
  std::uint32_t to = 0;
  double true_rate = 0;      // items in per busy second of one replica
  double required_rate = 0;  // items in per second the group must sustain at the planned throughput
  double observed_rate = 0;  // items in per wall second in the window
};

// What one group measured over a window (derived from two snapshots).
struct GroupRates {
  bool measured = false;     // enough items and busy time to trust the figures
  double true_rate = 0;      // items in per busy second (one replica)
  double selectivity = 1;    // items out per item in
  double observed_rate = 0;  // items in per wall second
  double busy_fraction = 0;  // busy / (replicas * window)
};

std::vector<GroupRates> measure(const Snapshot& before, const Snapshot& after, std::uint64_t min_items);

// The pure core: the best split of `cores` for the measured rates, given the current split.
// Groups that cannot scale keep `current`; an unmeasured group keeps its count too. Returns the
// target counts (equal to `current` when nothing is worth changing).
struct Plan {
  std::vector<std::uint32_t> replicas;
  double throughput = 0;          // predicted source items/s of `replicas`
  double current_throughput = 0;  // predicted source items/s of `current`
  std::vector<double> cost;       // replica-seconds per source item (0: unmeasured)
  std::vector<double> demand;     // items in per source item
};
Plan plan_split(const std::vector<GroupRates>& rates, const std::vector<std::uint32_t>& current, const PolicyConfig& config);

// Predicted throughput (source items/s) of split `replicas` for the given costs (0 cost: no limit).
double predicted_throughput(const std::vector<double>& cost, const std::vector<std::uint32_t>& replicas);

// The stateful wrapper the supervisor calls every few hundred milliseconds: keeps the window's
// first snapshot and the time of the last change.
class Policy {
 public:
  explicit Policy(PolicyConfig config);

  // Returns the target counts when they differ from the snapshot's, and appends what changed to
  // `decisions`; nullopt when nothing changes (or too soon to tell).
  std::optional<std::vector<std::uint32_t>> observe(const Snapshot& now, std::vector<Decision>& decisions);

  const PolicyConfig& config() const noexcept { return config_; }

 private:
  PolicyConfig config_;
  std::optional<Snapshot> window_start_;
  double last_change_s_ = -1e300;
};

}  // namespace procflow::scheduler

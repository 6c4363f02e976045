// run_report::verdict(): the stage that limits throughput, why, and what more replicas of it
// would give (include/procflow/verdict.hpp describes the model).
#include <procflow/report.hpp>
#include <procflow/verdict.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace procflow {

namespace {

// A busy share from which a group counts as saturated by its own work.
constexpr double saturated = 0.5;
// Observed rate at this share of the cores' limit or more: the cores are the limit.
constexpr double cores_bound = 0.85;
// The most replicas a suggestion adds.
constexpr std::uint32_t max_suggested = 16;

constexpr double unlimited = std::numeric_limits<double>::infinity();

// One process group of the run, from its stages' rows (fused stages share the processes).
struct GroupFigures {
  std::uint32_t id = 0;
  std::size_t first = 0, last = 0;  // stage indices, inclusive
  std::uint32_t replicas = 0;
  double items = 0;         // items into the group (out of the source, for the source's group)
  double busy_s = 0;        // over its stages and replicas
  double starved_s = 0;
  double blocked_s = 0;
  double replica_wall_s = 0;  // its replicas' wall time, summed
  double cpu_s = 0;
  std::size_t busiest = 0;  // the stage of the group with the most busy time
  double capacity = unlimited;  // source items per second its replicas can take

  double share(double v) const { return replica_wall_s > 0 ? v / replica_wall_s : 0; }
};

std::vector<GroupFigures> group_figures(const run_report& r) {
  std::vector<GroupFigures> groups;
  for (std::size_t i = 0; i < r.stages.size(); ++i) {
    const stage_report& s = r.stages[i];
    if (s.replicas == 0 && s.peak_replicas == 0) continue;  // runs in the caller's process
    if (groups.empty() || groups.back().id != s.process_group) {
      GroupFigures g;
      g.id = s.process_group;
      g.first = g.busiest = i;
      g.replicas = std::max(s.replicas, 1u);
      g.items = static_cast<double>(i == 0 ? s.items_out : s.items_in);
      g.starved_s = s.starved_s;  // kept on the group's first stage
      g.cpu_s = s.cpu_s;          // the group's, on each of its stages
      groups.push_back(g);
    }
    GroupFigures& g = groups.back();
    g.last = i;
    g.busy_s += s.busy_s;
    g.blocked_s = s.blocked_s;  // kept on the group's last stage
    if (s.busy_s > r.stages[g.busiest].busy_s) g.busiest = i;
  }
  for (GroupFigures& g : groups) {
    for (const replica_report& row : r.replica_rows)
      if (row.process_group == g.id) g.replica_wall_s += row.wall_s;
    if (g.replica_wall_s <= 0) g.replica_wall_s = r.wall_s * g.replicas;
  }
  return groups;
}

std::string percent(double share) { return fmt::format("{:.0f}%", 100 * share); }

}  // namespace

const char* to_string(bottleneck_verdict::cause c) noexcept {
  switch (c) {
    case bottleneck_verdict::cause::none: return "none";
    case bottleneck_verdict::cause::busy: return "busy";
    case bottleneck_verdict::cause::starved: return "starved";
    case bottleneck_verdict::cause::blocked: return "blocked";
    case bottleneck_verdict::cause::cores: return "cores";
    case bottleneck_verdict::cause::runtime: return "runtime";
  }
  return "none";
}

bottleneck_verdict run_report::verdict() const {
  bottleneck_verdict v;
  std::vector<GroupFigures> groups = group_figures(*this);
  if (groups.empty() || stages.empty()) return v;
  const double source_items = static_cast<double>(stages.front().items_out);
  v.items_per_s = wall_s > 0 ? source_items / wall_s : 0;

  // Capacities: n replicas take n true rates; in source items, n * source_items / busy_s.
  for (GroupFigures& g : groups)
    if (g.busy_s > 0 && source_items > 0) g.capacity = g.replicas * source_items / g.busy_s;
  // The cores: every source item costs the CPU time of all the groups' work for it.
  double cpu_per_item = 0;
  for (const GroupFigures& g : groups) cpu_per_item += g.cpu_s;
  cpu_per_item = source_items > 0 ? cpu_per_item / source_items : 0;
  const double cores_limit = (cores > 0 && cpu_per_item > 0) ? cores / cpu_per_item : unlimited;

  // The limiting group: the lowest capacity (the busiest per replica).
  std::size_t b = 0;
  for (std::size_t k = 1; k < groups.size(); ++k)
    if (groups[k].capacity < groups[b].capacity) b = k;
  const GroupFigures& hot = groups[b];
  v.stage = stages[hot.busiest].name;
  for (std::size_t i = hot.first; i <= hot.last; ++i) v.process += (i == hot.first ? "" : "+") + stages[i].name;
  v.replicas = hot.replicas;
  v.busy_share = hot.share(hot.busy_s);
  v.starved_share = hot.share(hot.starved_s);
  v.blocked_share = hot.share(hot.blocked_s);
  v.true_rate = hot.busy_s > 0 ? hot.items / hot.busy_s : 0;

  // What the neighbours show: a producer blocked on the stage's full input, consumers starved.
  std::vector<std::string> evidence;
  if (b > 0) {
    const GroupFigures& up = groups[b - 1];
    evidence.push_back(fmt::format("'{}' blocked {} (waiting for room in its input)", stages[up.last].name, percent(up.share(up.blocked_s))));
  }
  if (b + 1 < groups.size()) {
    const GroupFigures& down = groups[b + 1];
    evidence.push_back(fmt::format("'{}' starved {}", stages[down.first].name, percent(down.share(down.starved_s))));
  } else if (hot.last + 1 < stages.size()) {
    evidence.push_back(fmt::format("'{}' runs in the caller's process", stages[hot.last + 1].name));
  }
  for (const std::string& e : evidence) v.evidence += (v.evidence.empty() ? "" : "; ") + e;

  if (v.busy_share >= saturated) {
    v.why = bottleneck_verdict::cause::busy;
  } else if (v.items_per_s >= cores_bound * cores_limit) {
    v.why = bottleneck_verdict::cause::cores;
  } else if (1 - v.busy_share - v.starved_share - v.blocked_share > std::max(v.starved_share, v.blocked_share)) {
    v.why = bottleneck_verdict::cause::runtime;
  } else if (v.blocked_share > v.starved_share) {
    // Waiting for room downstream: the first group after it that is not itself mostly blocked,
    // or the caller's process (a collect or sink there is not measured).
    v.why = bottleneck_verdict::cause::blocked;
    std::size_t d = b + 1;
    while (d < groups.size() && groups[d].share(groups[d].blocked_s) > groups[d].share(groups[d].busy_s)) ++d;
    v.cause_stage = d < groups.size() ? stages[groups[d].busiest].name : stages.back().name;
  } else {
    v.why = bottleneck_verdict::cause::starved;
    std::size_t u = b;
    while (u > 0 && groups[u].share(groups[u].starved_s) > groups[u].share(groups[u].busy_s)) --u;
    v.cause_stage = stages[groups[u].busiest].name;
    if (u == b) v.cause_stage = stages.front().name;
  }

  if (v.why == bottleneck_verdict::cause::busy && std::isfinite(hot.capacity)) {
    // The next limit: the slowest other group, or the cores.
    double other = cores_limit;
    v.next_limit = std::isfinite(cores_limit) ? "cores" : "";
    for (std::size_t k = 0; k < groups.size(); ++k)
      if (k != b && groups[k].capacity < other) {
        other = groups[k].capacity;
        v.next_limit = stages[groups[k].busiest].name;
      }
    const double now = std::min(hot.capacity, other);
    const double per_replica = hot.capacity / hot.replicas;
    // Enough replicas to reach the next limit (at least one more, at most max_suggested).
    double want = std::isfinite(other) ? std::ceil(other / per_replica - 1e-9) - hot.replicas : 1;
    v.add_replicas = static_cast<std::uint32_t>(std::clamp(want, 1.0, static_cast<double>(max_suggested)));
    const double then = std::min(per_replica * (hot.replicas + v.add_replicas), other);
    v.predicted_speedup = now > 0 ? then / now : 0;
    v.predicted_items_per_s = v.items_per_s * v.predicted_speedup;
    if (std::isfinite(other) && then >= other) {
      v.next_limit_items_per_s = v.items_per_s * other / now;
    } else {
      v.next_limit.clear();  // the suggestion stops short of the next limit
    }
  }
  return v;
}

std::string bottleneck_verdict::to_string() const {
  if (why == cause::none) return "no stage ran in a replica process";
  std::string out = fmt::format("{}: {} busy ({} starved, {} blocked)", stage, percent(busy_share), percent(starved_share),
                                percent(blocked_share));
  if (process != stage) out += fmt::format(" in process '{}'", process);
  switch (why) {
    case cause::busy: out += ": its own work limits throughput"; break;
    case cause::cores: out += ": every core is working; more replicas would share the same cores"; break;
    case cause::starved: out += fmt::format(": no stage is saturated; it waits for input from upstream ('{}')", cause_stage); break;
    case cause::blocked: out += fmt::format(": no stage is saturated; it waits for room downstream ('{}')", cause_stage); break;
    case cause::runtime:
      out += ": most of its time is the runtime's own (starting processes, moving batches, finishing); the run is too short or "
             "its items too cheap for a stage's work to be the limit";
      break;
    case cause::none: break;
  }
  out += ".";
  if (!evidence.empty()) out += " " + evidence + ".";
  if (add_replicas > 0) {
    out += fmt::format(" {} more replica{} of {} ({} in all): ~{:.2g}x, ~{:.3g} items/s", add_replicas, add_replicas == 1 ? "" : "s", stage,
                       replicas + add_replicas, predicted_speedup, predicted_items_per_s);
    if (!next_limit.empty())
      out += next_limit == "cores" ? fmt::format(", until the cores limit at {:.3g} items/s", next_limit_items_per_s)
                                   : fmt::format(", until '{}' limits at {:.3g} items/s", next_limit, next_limit_items_per_s);
    out += fmt::format(" (true rate {:.3g} items per busy second per replica).", true_rate);
  }
  return out;
}

}  // namespace procflow

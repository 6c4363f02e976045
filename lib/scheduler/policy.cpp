#include "scheduler/policy.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <stdexcept>

namespace procflow::scheduler {

std::vector<GroupRates> measure(const Snapshot& before, const Snapshot& after, std::uint64_t min_items) {
  if (before.groups.size() != after.groups.size()) throw std::invalid_argument("scheduler: snapshots of different pipelines");
  const double window = after.time_s - before.time_s;
  std::vector<GroupRates> rates(after.groups.size());
  for (std::size_t g = 0; g < rates.size(); ++g) {
    const GroupCounters& a = before.groups[g];
    const GroupCounters& b = after.groups[g];
    // Counters only grow; a smaller value would be a replica slot reused or a bad read: ignore it.
    auto delta = [](std::uint64_t x, std::uint64_t y) { return y >= x ? y - x : 0; };
    const double in = static_cast<double>(delta(a.items_in, b.items_in));
    const double out = static_cast<double>(delta(a.items_out, b.items_out));
    const double busy_s = static_cast<double>(delta(a.busy_ns, b.busy_ns)) / 1e9;
    GroupRates& r = rates[g];
    const std::uint32_t replicas = g < after.replicas.size() ? std::max<std::uint32_t>(after.replicas[g], 1) : 1;
    r.observed_rate = window > 0 ? in / window : 0;
    r.busy_fraction = window > 0 ? busy_s / (replicas * window) : 0;
    r.measured = in >= static_cast<double>(min_items) && busy_s > 0 && window > 0;
    if (r.measured) {
      r.true_rate = in / busy_s;
      r.selectivity = out / in;
    }
  }
  return rates;
}

double predicted_throughput(const std::vector<double>& cost, const std::vector<std::uint32_t>& replicas) {
  double t = std::numeric_limits<double>::infinity();
  for (std::size_t g = 0; g < cost.size(); ++g)
    if (cost[g] > 0) t = std::min(t, static_cast<double>(replicas[g]) / cost[g]);
  return t;
}

Plan plan_split(const std::vector<GroupRates>& rates, const std::vector<std::uint32_t>& current, const PolicyConfig& config) {
  const std::size_t n = rates.size();
  if (current.size() != n || config.groups.size() != n) throw std::invalid_argument("scheduler: rates, counts and constraints disagree");
  Plan plan;
  plan.cost.assign(n, 0);
  plan.demand.assign(n, 1);
  double demand = 1;  // items this group takes per source item
  for (std::size_t g = 0; g < n; ++g) {
    plan.demand[g] = demand;
    if (rates[g].measured && rates[g].true_rate > 0) {
      plan.cost[g] = demand / rates[g].true_rate;
      demand *= rates[g].selectivity;
    }
  }

  // Start every scalable, measured group at its minimum; everything else keeps its count.
  std::vector<std::uint32_t> r(n);
  std::vector<bool> free(n);
  std::int64_t left = config.cores;
  for (std::size_t g = 0; g < n; ++g) {
    const GroupConstraint& c = config.groups[g];
    free[g] = c.may_scale && plan.cost[g] > 0;
    r[g] = free[g] ? std::max<std::uint32_t>(c.min, 1) : std::clamp(current[g], c.may_scale ? c.min : current[g], c.may_scale ? c.max : current[g]);
    left -= r[g];
  }
  // Give cores one at a time to the bottleneck while that helps: optimal for maximising
  // min_g r_g / cost_g, because only the bottleneck's count bounds the minimum.
  while (left > 0) {
    std::size_t bottleneck = n;
    double worst = std::numeric_limits<double>::infinity();
    for (std::size_t g = 0; g < n; ++g) {
      if (plan.cost[g] <= 0) continue;
      const double t = r[g] / plan.cost[g];
      // Ties: a group that can still grow, so that equal bottlenecks are raised together.
      if (t < worst || (t == worst && bottleneck < n && !free[bottleneck] && free[g])) {
        worst = t;
        bottleneck = g;
      }
    }
    if (bottleneck == n || !free[bottleneck] || r[bottleneck] >= config.groups[bottleneck].max) break;
    ++r[bottleneck];
    --left;
  }
  // Trim: a group needs only the replicas the pipeline's throughput asks of it.
  const double t = predicted_throughput(plan.cost, r);
  if (std::isfinite(t)) {
    for (std::size_t g = 0; g < n; ++g) {
      if (!free[g]) continue;
      const auto need = static_cast<std::uint32_t>(std::ceil(t * plan.cost[g] * (1 - 1e-9)));
      r[g] = std::clamp(need, std::max<std::uint32_t>(config.groups[g].min, 1), r[g]);
    }
  }
  plan.throughput = predicted_throughput(plan.cost, r);
  plan.current_throughput = predicted_throughput(plan.cost, current);

  // Adopt only a clear gain, or the same throughput with fewer processes (or back within budget).
  const auto total = [](const std::vector<std::uint32_t>& v) { return std::accumulate(v.begin(), v.end(), std::uint64_t{0}); };
  const bool faster = plan.throughput >= plan.current_throughput * (1 + config.min_gain);
  const bool leaner = total(r) < total(current) && plan.throughput >= plan.current_throughput * (1 - config.min_gain);
  const bool over_budget = total(current) > config.cores && total(r) < total(current);
  plan.replicas = (faster || leaner || over_budget) ? r : current;
  return plan;
}

Policy::Policy(PolicyConfig config) : config_(std::move(config)) {}

std::optional<std::vector<std::uint32_t>> Policy::observe(const Snapshot& now, std::vector<Decision>& decisions) {
  if (now.groups.size() != config_.groups.size() || now.replicas.size() != config_.groups.size())
    throw std::invalid_argument("scheduler: snapshot does not match the pipeline");
  // A window must see one configuration only: restart it after any change of counts.
  if (!window_start_ || window_start_->replicas != now.replicas) {
    window_start_ = now;
    return std::nullopt;
  }
  if (now.time_s - window_start_->time_s < config_.min_window_s) return std::nullopt;
  if (now.time_s - last_change_s_ < config_.min_interval_s) return std::nullopt;

  const std::vector<GroupRates> rates = measure(*window_start_, now, config_.min_items);
  window_start_ = now;  // the next decision is made on a fresh window
  const Plan plan = plan_split(rates, now.replicas, config_);
  if (plan.replicas == now.replicas) return std::nullopt;

  for (std::size_t g = 0; g < plan.replicas.size(); ++g) {
    if (plan.replicas[g] == now.replicas[g]) continue;
    Decision d;
    d.time_s = now.time_s;
    d.group = g;
    d.stages = config_.groups[g].stages;
    d.from = now.replicas[g];
    d.to = plan.replicas[g];
    d.true_rate = rates[g].true_rate;
    d.required_rate = std::isfinite(plan.throughput) ? plan.throughput * plan.demand[g] : 0;
    d.observed_rate = rates[g].observed_rate;
    decisions.push_back(std::move(d));
  }
  last_change_s_ = now.time_s;
  return plan.replicas;
}

}  // namespace procflow::scheduler

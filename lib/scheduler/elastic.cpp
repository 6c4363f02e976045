#include "scheduler/elastic.hpp"

#include "channel/event.hpp"
#include "channel/membership.hpp"
#include "channel/ring.hpp"

#include <algorithm>
#include <stdexcept>

namespace procflow::scheduler {

namespace {

using runtime::GroupInput;
using runtime::GroupOutput;

constexpr auto tick_interval = std::chrono::milliseconds(250);

std::vector<ForcedStep>& pending_forced() {
  static std::vector<ForcedStep> steps;
  return steps;
}

}  // namespace

void force_next_run(std::vector<ForcedStep> steps) { pending_forced() = std::move(steps); }

Elastic::Elastic(const detail::pipeline_def& def, const runtime::Plan& plan, const runtime::RunState& state, Spawn spawn)
    : def_(def), plan_(plan), state_(state), spawn_(std::move(spawn)) {
  const std::size_t n = plan.groups.size();
  slots_.resize(n);
  for (std::size_t g = 0; g < n; ++g) slots_[g].resize(plan.groups[g].slots);
  active_.assign(n, 0);
  deferred_.assign(n, 0);
  peak_.assign(n, 0);
  final_.assign(n, 0);
  next_slot_.assign(n, 0);
  lanes_.assign(n, 0);
  input_done_.assign(n, false);
  ended_.assign(n, false);
  // The hook applies to the next run only, scheduled or not.
  std::vector<ForcedStep> forced = std::move(pending_forced());
  pending_forced().clear();
  // Steps naming groups this plan does not have are dropped (tests script them blind).
  std::erase_if(forced, [n](const ForcedStep& f) { return f.group >= n || f.watch >= n; });
  if (plan.scheduled) {
    forced_ = std::move(forced);
    if (forced_.empty()) {
      PolicyConfig c;
      c.cores = plan.cores;
      for (const auto& g : plan.groups) {
        GroupConstraint k;
        for (std::size_t i = g.first_stage; i < g.end_stage; ++i) k.stages += (k.stages.empty() ? "" : "+") + def.stages[i]->name();
        k.may_scale = g.scalable;
        k.min = 1;
        k.max = g.scalable ? g.slots : g.replicas;
        c.groups.push_back(std::move(k));
      }
      policy_.emplace(std::move(c));
    }
  }
}

void Elastic::start() {
  t0_ = Clock::now();
  next_tick_ = t0_ + tick_interval;
  for (std::size_t g = 0; g < plan_.groups.size(); ++g) {
    // The initial lanes are in the membership already (RunState: set_initial_membership).
    lanes_[g] = channel::lane_mask(std::min(plan_.groups[g].replicas, channel::max_masked_lanes));
    for (std::uint32_t r = 0; r < plan_.groups[g].replicas; ++r) start_slot(g);
  }
  std::vector<Decision> none;
  if (policy_) policy_->observe(snapshot(), none);  // opens the first window
}

const channel::Channel* Elastic::output_of(std::size_t group) const {
  const runtime::Group& g = plan_.groups[group];
  if (g.output == GroupOutput::results) return &state_.results();
  if (g.output == GroupOutput::channel) return &state_.input_of(group + 1);
  return nullptr;
}

std::uint32_t Elastic::first_worker(std::size_t group) const {
  const runtime::Group& g = plan_.groups[group];
  return static_cast<std::uint32_t>(g.input == GroupInput::chunks ? g.first_stage + 1 : g.first_stage);
}

void Elastic::start_slot(std::size_t group) {
  const runtime::Group& g = plan_.groups[group];
  const std::uint32_t slot = next_slot_[group];
  if (slot >= g.slots) return;  // out of slots: stays as it is
  if (g.input == GroupInput::channel && slot >= plan_.groups[group].replicas && slot < channel::max_masked_lanes) {
    lanes_[group] |= std::uint64_t{1} << slot;
    channel::publish_membership(state_.input_of(group).membership(), lanes_[group]);
  }
  if (const channel::Channel* out = output_of(group); out && slot >= g.replicas) {
    // Relaxed: fork() orders it before anything the child does; consumers only compare it.
    out->ack(slot).epoch.store(0, std::memory_order_relaxed);
  }
  slots_[group][slot].started = true;
  ++next_slot_[group];
  ++active_[group];
  ++processes_;
  ++live_;
  peak_live_ = std::max(peak_live_, live_);
  peak_[group] = std::max(peak_[group], active_[group]);
  final_[group] = active_[group];
  spawn_(group, slot);
}

void Elastic::retire_slot(std::size_t group, std::uint32_t slot) {
  const runtime::Group& g = plan_.groups[group];
  std::uint64_t flag = 1;
  if (g.input == GroupInput::channel) {
    if (slot >= channel::max_masked_lanes) return;
    lanes_[group] &= ~(std::uint64_t{1} << slot);
    flag = channel::publish_membership(state_.input_of(group).membership(), lanes_[group]);
  }
  runtime::ReplicaRecord& record = state_.record(state_.first_replica(group) + slot);
  // SYNC POINT (release): pairs with the replica's acquire load of `retire`.
  record.retire.store(flag, std::memory_order_release);
  if (g.input == GroupInput::channel) channel::notify(state_.input_of(group).data_event(slot));
  slots_[group][slot].retiring = true;
  ++retiring_live_;
  --active_[group];
  final_[group] = active_[group];
}

void Elastic::apply(std::size_t group, std::uint32_t target) {
  if (input_done_[group] || !plan_.groups[group].scalable) return;  // ended, or not safe to change (see README)
  target = std::max<std::uint32_t>(target, 1);
  // Fewer: starts still waiting go first, then the newest replicas retire.
  while (deferred_[group] > 0 && active_[group] + deferred_[group] > target) --deferred_[group];
  for (std::uint32_t slot = next_slot_[group]; slot-- > 0 && active_[group] > target;) {
    const SlotState& s = slots_[group][slot];
    if (s.started && !s.retiring && !s.ended) retire_slot(group, slot);
  }
  // More: started now, or once a retiring replica has exited (may_start_now).
  while (active_[group] + deferred_[group] < target && next_slot_[group] + deferred_[group] < plan_.groups[group].slots) {
    if (deferred_[group] == 0 && may_start_now()) {
      start_slot(group);
    } else {
      ++deferred_[group];
    }
  }
}

void Elastic::start_deferred() {
  for (std::size_t g = 0; g < plan_.groups.size(); ++g) {
    if (input_done_[g]) deferred_[g] = 0;  // its input is finished: nothing to start for
    while (deferred_[g] > 0 && may_start_now()) {
      --deferred_[g];
      start_slot(g);
    }
  }
}

void Elastic::on_exit(std::size_t group, std::uint32_t slot) {
  SlotState& s = slots_.at(group).at(slot);
  s.ended = true;
  --live_;
  if (s.retiring) {
    --retiring_live_;
  } else {
    --active_[group];
    input_done_[group] = true;
  }
  end_if_completed(group);
  start_deferred();
}

void Elastic::on_completions() {
  for (std::size_t g = 0; g < plan_.groups.size(); ++g) {
    if (plan_.groups[g].scalable) end_if_completed(g);
  }
}

void Elastic::end_if_completed(std::size_t group) {
  if (ended_[group] || next_slot_[group] == 0) return;
  for (std::uint32_t slot = 0; slot < next_slot_[group]; ++slot) {
    const runtime::ReplicaRecord& record = state_.record(state_.first_replica(group) + slot);
    // SYNC POINT (acquire): pairs with the replica's release store of its status, made after it
    // closed its own lanes. A slot reaped by on_exit passed check(), which requires this status.
    if (record.status.load(std::memory_order_acquire) != static_cast<std::uint32_t>(runtime::ReplicaStatus::completed))
      return;  // running, retiring, or dead and being restarted in its slot
  }
  // Every started replica completed, so some ended on its input (retiring ones alone cannot all
  // complete: at least one active replica never retires). No slot starts any more, and the lanes
  // of the slots never started are closed, once: the consumers' end of stream counts them.
  input_done_[group] = true;
  ended_[group] = true;
  const channel::Channel* out = output_of(group);
  if (!out) return;
  bool any = false;
  for (std::uint32_t p = next_slot_[group]; p < out->producers(); ++p) {
    for (std::uint32_t q = 0; q < out->consumers(); ++q) channel::RingWriter(out->ring(p, q)).close();
    any = true;
  }
  if (!any) return;
  for (std::uint32_t q = 0; q < out->consumers(); ++q) channel::notify(out->data_event(q));
}

Snapshot Elastic::snapshot() const {
  Snapshot s;
  s.time_s = std::chrono::duration<double>(Clock::now() - t0_).count();
  for (std::size_t k = 0; k < plan_.groups.size(); ++k) {
    const runtime::Group& g = plan_.groups[k];
    GroupCounters c;
    const std::uint32_t first = first_worker(k);
    for (std::uint32_t r = 0; r < next_slot_[k]; ++r) {
      // Relaxed: each counter has one writer and is only read for statistics.
      if (g.input == GroupInput::generator) {
        c.items_in += state_.counters(0, r).items_out.load(std::memory_order_relaxed);
      } else {
        c.items_in += state_.counters(first, r).items_in.load(std::memory_order_relaxed);
      }
      c.items_out += state_.counters(g.end_stage - 1, r).items_out.load(std::memory_order_relaxed);
      for (std::size_t i = g.first_stage; i < g.end_stage; ++i) c.busy_ns += state_.counters(i, r).busy_ns.load(std::memory_order_relaxed);
      c.starved_ns += state_.counters(g.first_stage, r).starved_ns.load(std::memory_order_relaxed);
      c.blocked_ns += state_.counters(g.end_stage - 1, r).blocked_ns.load(std::memory_order_relaxed);
    }
    s.groups.push_back(c);
    s.replicas.push_back(active_[k] + deferred_[k]);
  }
  return s;
}

void Elastic::tick() {
  if (!scheduling()) return;
  const auto now = Clock::now();
  if (now < next_tick_ && forced_.empty()) return;  // scripted steps are checked at every tick
  next_tick_ = now + tick_interval;
  const Snapshot snap = snapshot();
  if (!forced_.empty()) {
    while (!forced_.empty() && snap.groups.at(forced_.front().watch).items_in >= forced_.front().at_items) {
      const ForcedStep step = forced_.front();
      forced_.erase(forced_.begin());
      scheduler_decision d;
      d.time_s = snap.time_s;
      d.process_group = static_cast<std::uint32_t>(step.group);
      d.stages = def_.stages[plan_.groups.at(step.group).first_stage]->name();
      d.from = active_[step.group];
      apply(step.group, step.replicas);
      d.to = active_[step.group] + deferred_[step.group];
      d.forced = true;
      decisions_.push_back(std::move(d));
    }
    return;
  }
  for (std::size_t k = 0; k < plan_.groups.size(); ++k)
    if (input_done_[k]) return;  // draining at the end: no decisions on a falling rate
  std::vector<Decision> made;
  const auto target = policy_->observe(snap, made);
  if (!target) return;
  // Retire before starting, so the budget is not exceeded in between.
  std::stable_sort(made.begin(), made.end(), [](const Decision& a, const Decision& b) { return (a.to < a.from) > (b.to < b.from); });
  for (const Decision& m : made) {
    scheduler_decision d;
    d.time_s = m.time_s;
    d.process_group = static_cast<std::uint32_t>(m.group);
    d.stages = m.stages;
    d.from = m.from;
    apply(m.group, m.to);
    d.to = active_[m.group] + deferred_[m.group];
    d.true_rate = m.true_rate;
    d.required_rate = m.required_rate;
    d.observed_rate = m.observed_rate;
    if (d.to != d.from) decisions_.push_back(std::move(d));  // out of slots: nothing happened
  }
}

}  // namespace procflow::scheduler

#include "runtime/run_state.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <new>

namespace procflow::runtime {

namespace {

// Builds the layout first (the segment's size must be known before it is mapped).
shm::SegmentLayout& plan_layout(shm::SegmentLayout& layout, std::uint64_t& header, std::uint64_t& counters,
                                std::uint64_t& records, std::size_t stages, std::uint32_t max_replicas,
                                std::uint32_t total_replicas) {
  header = layout.add(sizeof(RunHeader), alignof(RunHeader));
  counters = layout.add(sizeof(StageCounters) * stages * max_replicas, alignof(StageCounters));
  records = layout.add(sizeof(ReplicaRecord) * total_replicas, alignof(ReplicaRecord));
  return layout;
}

}  // namespace

RunState::RunState(const detail::pipeline_def& def, const Plan& plan)
    : stages_(def.stages.size()), total_replicas_(plan.total_slots) {
  for (const auto& g : plan.groups) max_replicas_ = std::max(max_replicas_, g.slots);
  plan_layout(layout_, header_offset_, counters_offset_, records_offset_, stages_, max_replicas_, total_replicas_);
  stats_offset_ = layout_.add(sizeof(metrics::ReplicaStats) * total_replicas_, alignof(metrics::ReplicaStats));
  user_counters_offset_ = layout_.add(sizeof(metrics::UserCounterTable) * (total_replicas_ + 1), alignof(metrics::UserCounterTable));
  if (!def.options.profile.trace_path.empty())
    spans_offset_ = layout_.add(sizeof(metrics::SpanRing) * total_replicas_, alignof(metrics::SpanRing));
  // Written only when an item is skipped: fresh shared memory is zero and costs nothing untouched.
  bool may_skip = def.options.defaults.on_error && def.options.defaults.on_error->then_skip;
  for (const auto& stage : def.stages)
    may_skip = may_skip || (stage->options().on_error && stage->options().on_error->then_skip);
  if (may_skip)
    dead_items_offset_ =
        layout_.add(std::size_t{total_replicas_} * dead_letters_per_replica * dead_letter_item_bytes, shm::cache_line);
  if (plan.restart_chunks) {
    owners_ = plan.chunks;
    owners_offset_ = layout_.add(sizeof(std::atomic<std::uint16_t>) * owners_, shm::cache_line);
  }
  std::uint32_t base = 0;
  for (std::size_t k = 0; k < plan.groups.size(); ++k) {
    replica_base_.push_back(base);
    base += plan.groups[k].slots;
    if (k + 1 < plan.groups.size())
      channels_.emplace_back(layout_, plan.groups[k].slots, plan.groups[k + 1].slots, plan.groups[k].out_geometry);
  }
  if (plan.has_results) results_ = channel::Channel(layout_, plan.groups.back().slots, 1, plan.groups.back().out_geometry);

  segment_ = shm::Segment(layout_);
  segment_.validate();
  auto* h = new (segment_.at<RunHeader>(header_offset_)) RunHeader{};
  h->magic = run_magic;
  h->stages = static_cast<std::uint32_t>(stages_);
  h->replicas = total_replicas_;
  h->next_chunk.store(0, std::memory_order_relaxed);
  h->scalable_ends.store(0, std::memory_order_relaxed);
  auto* c = segment_.at<StageCounters>(counters_offset_, stages_ * max_replicas_);
  for (std::size_t i = 0; i < stages_ * max_replicas_; ++i) new (c + i) StageCounters{};
  auto* r = segment_.at<ReplicaRecord>(records_offset_, total_replicas_);
  for (std::uint32_t i = 0; i < total_replicas_; ++i) new (r + i) ReplicaRecord{};
  auto* st = segment_.at<metrics::ReplicaStats>(stats_offset_, total_replicas_);
  for (std::uint32_t i = 0; i < total_replicas_; ++i) new (st + i) metrics::ReplicaStats{};
  auto* uc = segment_.at<metrics::UserCounterTable>(user_counters_offset_, total_replicas_ + 1);
  for (std::uint32_t i = 0; i <= total_replicas_; ++i) new (uc + i) metrics::UserCounterTable{};
  if (spans_offset_ != 0) {
    auto* sp = segment_.at<metrics::SpanRing>(spans_offset_, total_replicas_);
    for (std::uint32_t i = 0; i < total_replicas_; ++i) {
      sp[i].count.store(0, std::memory_order_relaxed);  // the events need no initialisation
      sp[i].dropped.store(0, std::memory_order_relaxed);
    }
  }
  if (owners_offset_ != 0) {
    auto* o = segment_.at<std::atomic<std::uint16_t>>(owners_offset_, owners_);
    for (std::uint64_t i = 0; i < owners_; ++i) new (o + i) std::atomic<std::uint16_t>(0);
  }
  for (std::size_t k = 0; k < channels_.size(); ++k) {
    channels_[k].create(segment_);
    // Lanes to consumer replicas that exist from the start; producer slots not yet started
    // need not acknowledge membership changes (see channel/membership.hpp).
    channels_[k].set_initial_membership(plan.groups[k + 1].replicas, plan.groups[k].replicas);
  }
  if (plan.has_results) {
    results_.create(segment_);
    results_.set_initial_membership(1, plan.groups.back().replicas);
  }
}

StageCounters& RunState::counters(std::size_t stage, std::uint32_t replica) const {
  if (stage >= stages_ || replica >= max_replicas_)
    throw shm_error(fmt::format("no counters for stage {} replica {}", stage, replica));
  return segment_.at<StageCounters>(counters_offset_, stages_ * max_replicas_)[stage * max_replicas_ + replica];
}

ReplicaRecord& RunState::record(std::uint32_t global_replica) const {
  if (global_replica >= total_replicas_) throw shm_error(fmt::format("no record for replica {}", global_replica));
  return segment_.at<ReplicaRecord>(records_offset_, total_replicas_)[global_replica];
}

std::span<std::byte> RunState::dead_letter_item(std::uint32_t global_replica, std::uint32_t index) const {
  if (dead_items_offset_ == 0) return {};
  if (global_replica >= total_replicas_ || index >= dead_letters_per_replica)
    throw shm_error(fmt::format("no dead letter item {} for replica {}", index, global_replica));
  const std::size_t per_replica = std::size_t{dead_letters_per_replica} * dead_letter_item_bytes;
  std::byte* all = segment_.at<std::byte>(dead_items_offset_, total_replicas_ * per_replica);
  return {all + global_replica * per_replica + index * dead_letter_item_bytes, dead_letter_item_bytes};
}

metrics::ReplicaStats& RunState::stats(std::uint32_t global_replica) const {
  if (global_replica >= total_replicas_) throw shm_error(fmt::format("no stats for replica {}", global_replica));
  return segment_.at<metrics::ReplicaStats>(stats_offset_, total_replicas_)[global_replica];
}

metrics::UserCounterTable& RunState::user_counters(std::uint32_t index) const {
  if (index > total_replicas_) throw shm_error(fmt::format("no counter table {}", index));
  return segment_.at<metrics::UserCounterTable>(user_counters_offset_, total_replicas_ + 1)[index];
}

std::span<std::atomic<std::uint16_t>> RunState::chunk_owners() const {
  if (owners_offset_ == 0) return {};
  return {segment_.at<std::atomic<std::uint16_t>>(owners_offset_, owners_), owners_};
}

metrics::SpanRing* RunState::spans(std::uint32_t global_replica) const {
  if (spans_offset_ == 0) return nullptr;
  if (global_replica >= total_replicas_) throw shm_error(fmt::format("no span ring for replica {}", global_replica));
  return &segment_.at<metrics::SpanRing>(spans_offset_, total_replicas_)[global_replica];
}

}  // namespace procflow::runtime

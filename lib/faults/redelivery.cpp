#include "faults/redelivery.hpp"

#include "channel/ring.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

namespace procflow::faults {

namespace {

using runtime::GroupInput;
using runtime::GroupOutput;

const channel::Channel* output_of(const runtime::Plan& plan, const runtime::RunState& state, std::size_t group) {
  const runtime::Group& g = plan.groups[group];
  if (g.output == GroupOutput::results) return &state.results();
  if (g.output == GroupOutput::channel) return &state.input_of(group + 1);
  return nullptr;
}

}  // namespace

std::vector<std::uint64_t> reclaim_chunks(std::span<std::atomic<std::uint16_t>> owners, std::uint64_t claimed_below,
                                          std::uint32_t slot) {
  std::vector<std::uint64_t> mine;
  const std::uint64_t n = std::min<std::uint64_t>(claimed_below, owners.size());
  for (std::uint64_t c = 0; c < n; ++c) {
    // Acquire: pairs with finish_chunk's release (a done chunk is left alone).
    const std::uint16_t owner = owners[c].load(std::memory_order_acquire);
    if (owner == slot + 1 || (owner == chunk_free && claim_chunk(owners, c, slot))) mine.push_back(c);
  }
  return mine;
}

Redelivery find_redelivery(const runtime::Plan& plan, const runtime::RunState& state, std::size_t group, std::uint32_t slot) {
  const runtime::Group& g = plan.groups[group];
  const runtime::ReplicaRecord& rec = state.record(state.first_replica(group) + slot);
  Redelivery r;
  // Relaxed: the replica was reaped (the wait orders its stores before this).
  const std::uint32_t noted_lane = rec.batch_origin_lane.load(std::memory_order_relaxed);
  r.origin = rec.batch_origin.load(std::memory_order_relaxed);
  const auto phase = static_cast<runtime::ReplicaPhase>(rec.phase.load(std::memory_order_relaxed));
  // A replica that died before it began any batch had none in hand, whatever its rings hold: a
  // channel's ring 0 may have a later batch at its head, which an ordered replacement would take
  // for its predecessor's and start there (past its own first batches); a chunk it claimed
  // without beginning it has no output out and goes to the replacement by its owner word.
  const bool noted = rec.origin_noted.load(std::memory_order_relaxed) != 0;
  if (g.input != GroupInput::generator && !noted) {
    r.origin_lane = g.input == GroupInput::chunks ? channel::no_origin_lane : 0;
    return r;
  }
  if (g.input == GroupInput::chunks) {
    r.origin_lane = channel::no_origin_lane;
    const auto owners = state.chunk_owners();
    r.batch = r.origin < owners.size() && owners[r.origin].load(std::memory_order_acquire) == slot + 1;
  } else if (g.input == GroupInput::channel) {
    r.origin_lane = noted_lane & ~lost_origin_bit;
    const channel::Channel& in = state.input_of(group);
    if (r.origin_lane < in.producers()) {
      const channel::RingView ring = in.ring(r.origin_lane, slot);
      // Acquire: the consumer's release of head (it was reaped, this is for form); the batch is
      // still unreleased when head is at it and it was published.
      const std::uint64_t head = ring.shared->head.load(std::memory_order_acquire);
      const std::uint64_t tail = ring.shared->tail.load(std::memory_order_acquire);
      r.batch = head == r.origin && tail - head > 0 && tail - head <= ring.geometry.slot_count;
    }
    r.lost = (noted_lane & lost_origin_bit) != 0 && phase == runtime::ReplicaPhase::in_batch;
  } else {
    // A generator: its whole stream is one batch, run again from its start (it was forked from
    // the supervisor's untouched copy); the slots already published are dropped.
    r.origin_lane = channel::no_origin_lane;
    r.batch = true;
  }
  if (!r.batch && !r.lost) return r;
  const std::uint64_t first = rec.batch_first.load(std::memory_order_relaxed);
  const std::uint64_t items = rec.batch_items.load(std::memory_order_relaxed);
  r.what = fmt::format("batch {}: {} items [{}, {})", rec.batch_seq.load(std::memory_order_relaxed),
                       rec.batch_dense.load(std::memory_order_relaxed) ? "source" : "input", first, first + items);
  r.item_known = rec.item_known.load(std::memory_order_relaxed) != 0;
  r.item_stage = rec.item_stage.load(std::memory_order_relaxed);
  r.item_seq = rec.item_seq_now.load(std::memory_order_relaxed);
  if (const channel::Channel* out = output_of(plan, state, group)) {
    for (std::uint32_t q = 0; q < out->consumers(); ++q) {
      const channel::RingWriter writer(out->ring(slot, q));
      channel::SlotHeader h;
      std::memcpy(&h, writer.last_published(), sizeof h);  // a snapshot: the consumer may read it, nobody writes it
      if (h.origin_slot != 0 && h.origin_lane == r.origin_lane && h.origin == r.origin && h.origin_slot > r.sent_slots) {
        r.sent_slots = h.origin_slot;
        // A generator's slots are dense source slots: first_item is the position of their first
        // item (of a fragment's item), and the last fragment of an item counts it.
        const bool in_item = (h.flags & channel::slot_fragment) && !(h.flags & channel::slot_fragment_last);
        r.source.items = h.first_item + (in_item ? 0 : h.items);
        r.source.fragments = in_item ? h.origin_fragment : 0;
        r.source.lane = q;
        r.source.next_seq = h.seq + 1;
        r.source.slots = h.origin_slot;
      }
    }
  }
  if (g.input == GroupInput::generator)
    r.what = r.source.fragments == 0
                 ? fmt::format("the generator's stream, run again from its start: source items [0, {}) were sent and are not sent twice",
                               r.source.items)
                 : fmt::format("the generator's stream, run again from its start: source items [0, {}) and {} fragment{} of item {} "
                               "were sent and are not sent twice",
                               r.source.items, r.source.fragments, r.source.fragments == 1 ? "" : "s", r.source.items);
  return r;
}

void prepare_replacement(const runtime::Plan& plan, const runtime::RunState& state, std::size_t group, std::uint32_t slot,
                         const Redelivery& r) {
  const runtime::Group& g = plan.groups[group];
  runtime::ReplicaRecord& rec = state.record(state.first_replica(group) + slot);
  // Relaxed: nobody runs in this slot; fork() publishes these to the replacement.
  rec.status.store(static_cast<std::uint32_t>(runtime::ReplicaStatus::running), std::memory_order_relaxed);
  rec.phase.store(static_cast<std::uint32_t>(runtime::ReplicaPhase::starting), std::memory_order_relaxed);
  rec.item_known.store(0, std::memory_order_relaxed);
  rec.has_item = 0;
  rec.replay = r.batch ? 1 : 0;
  rec.replay_lane = r.origin_lane;
  rec.replay_origin = r.origin;
  rec.replay_sent_slots = r.sent_slots;
  rec.replay_source = r.source;
  ++rec.incarnation;
  // The dead replica may have been asleep on its events: it was their only waiter.
  if (g.input == GroupInput::channel) state.input_of(group).data_event(slot).waiters.store(0, std::memory_order_relaxed);
  if (const channel::Channel* out = output_of(plan, state, group)) out->space_event(slot).waiters.store(0, std::memory_order_relaxed);
}

}  // namespace procflow::faults

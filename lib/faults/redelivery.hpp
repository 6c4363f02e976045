// Redelivery: how pf::restart (policy.hpp) replaces a replica that died without losing or
// duplicating an item. The replacement runs in the dead replica's slot: the same input rings,
// output rings and replica record.
//
//   input     A channel-fed replica under restart releases an input slot only after the batch's
//             output was published (a split item's slots too, when its ring holds them all), so
//             the batch it died on is still at the head of its ring: the replacement reads it
//             again. A chunk-claiming replica owns its chunk through an owner word (claim:
//             fetch_add the counter, then CAS the word 0 -> slot + 1; done: chunk_done), so the
//             replacement finds the dead replica's chunk (owner == its slot) and any chunk below
//             the counter that nobody owns (a death between the fetch_add and the CAS; a live
//             replica that loses that CAS to the replacement claims on). A replica that died
//             before it began any batch (ReplicaRecord::origin_noted) had none in hand.
//   output    Every output slot carries its input batch (SlotHeader::origin*) and its number in
//             that batch's output; a batch ends with its output published (no latency flusher:
//             slot boundaries depend on the items only). The last slot of each output ring tells
//             how many slots of the dead replica's batch were published: the replacement runs
//             the batch again and publishes only the slots after those (Outbox::begin_origin).
//   generator Its whole stream is one batch, and its slots are cut by the latency flusher too
//             (by time), so a replay drops by count of items instead: the last slot of each
//             output ring tells how many items were sent (its source position and item count)
//             and, for an item larger than a slot, how many of its fragments (origin_fragment)
//             and where; the replacement runs the generator from its start, drops that many,
//             and checks the dropped bytes against its predecessor's digest
//             (Outbox::begin_source_replay).
//   capacity  A claimed, unpublished output slot is claimed again by the replacement (the ring's
//             tail is the truth); a dead replica's registration as a sleeper on its two events
//             (its inbox's data event, its outbox's space event: nobody else waits on them) is
//             cleared before the replacement starts.
//
//   ordered   A pf::ordered consumer stores in its record, just before it gives an input slot
//             back, the batch it expects next and the ring that batch began on (a batch's slots
//             all come from one ring); the replacement's inbox starts there
//             (Replica::resume_ordered), unless its predecessor died holding a slot: that slot's
//             batch is read first (the replay lane).
//
// A reduce at the end of a restartable group sends a partial per batch (per input slot), since a
// dead replica's accumulator is lost with it; ordered, the partials go out in input order.
#pragma once

#include "runtime/plan.hpp"
#include "runtime/run_state.hpp"

#include <atomic>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace procflow::faults {

inline constexpr std::uint16_t chunk_free = 0;
// In ReplicaRecord::batch_origin_lane: the batch in hand is an item whose slots were given back
// as it was copied (larger than its ring), so it cannot be read again.
inline constexpr std::uint32_t lost_origin_bit = 0x80000000u;
inline constexpr std::uint16_t chunk_done = 0xffff;

// Claims chunk `chunk` for replica `slot` of the chunk-claiming group: false when a replacement
// took it first (see above).
inline bool claim_chunk(std::span<std::atomic<std::uint16_t>> owners, std::uint64_t chunk, std::uint32_t slot) noexcept {
  std::uint16_t expected = chunk_free;
  // acq_rel: a claim is a hand-over of the chunk between processes; nothing else rides on it.
  return owners[chunk].compare_exchange_strong(expected, static_cast<std::uint16_t>(slot + 1), std::memory_order_acq_rel);
}

// After the chunk's output was published (release: the replacement that reads `done` needs
// nothing from it, but a reader of the owner word sees it after the slots).
inline void finish_chunk(std::span<std::atomic<std::uint16_t>> owners, std::uint64_t chunk) noexcept {
  owners[chunk].store(chunk_done, std::memory_order_release);
}

// A replacement's first chunks: the ones its dead predecessor owned and did not finish, and any
// chunk below the counter that nobody owns (claimed for `slot` here), in chunk order.
std::vector<std::uint64_t> reclaim_chunks(std::span<std::atomic<std::uint16_t>> owners, std::uint64_t claimed_below,
                                          std::uint32_t slot);

// What the dead replica in slot `slot` of `group` had in hand, read after it was reaped.
struct Redelivery {
  bool batch = false;             // a batch goes to the replacement again
  bool lost = false;              // it had a batch that cannot be read again (an item larger than its ring)
  std::uint32_t origin_lane = 0;  // as stamped on output slots
  std::uint64_t origin = 0;
  std::uint64_t sent_slots = 0;   // of that batch's output slots, already published
  // A generator's (dropped by count of items, not slots: its slots may be cut by time).
  channel::SourceReplay source;
  std::string what;               // "batch 12: source items [992, 1024)"
  bool item_known = false;        // it was running a redelivered batch item by item
  std::uint32_t item_stage = 0;
  std::uint64_t item_seq = 0;
};
Redelivery find_redelivery(const runtime::Plan& plan, const runtime::RunState& state, std::size_t group, std::uint32_t slot);

// Resets slot `slot`'s record for a replacement that runs `r`'s batch again, and clears the dead
// replica's sleeper registrations. Call after it was reaped, before the replacement is forked.
void prepare_replacement(const runtime::Plan& plan, const runtime::RunState& state, std::size_t group, std::uint32_t slot,
                         const Redelivery& r);

}  // namespace procflow::faults

#include "channel/outbox.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <stdexcept>

namespace procflow::channel {

Outbox::Outbox(const Channel& channel, std::uint32_t producer, const OutboxOptions& options)
    : space_event_(&channel.space_event(producer)), options_(options) {
  const std::uint32_t consumers = channel.consumers();
  lanes_.resize(consumers);
  cursor_storage_.resize(consumers);
  for (std::uint32_t q = 0; q < consumers; ++q) {
    lanes_[q].ring = RingWriter(channel.ring(producer, q));
    lanes_[q].data_event = &channel.data_event(q);
  }
  cursors_ = cursor_storage_.data();
  current_ = &no_slot_;
  lane_count_ = consumers;
  max_item_bytes_ = channel.geometry().payload_bytes;
  rotation_ = producer % consumers;  // spread producers' first choices
  gate_ = &gate_storage_;
  publish_each_item_ = options.publish_each_item;
  if (consumers <= max_masked_lanes) {
    membership_ = &channel.membership();
    ack_ = &channel.ack(producer);
    refresh_membership();
  }
}

bool Outbox::has_pending() const noexcept {
  for (std::size_t lane = 0; lane < lanes_.size(); ++lane)
    if (lanes_[lane].open && cursors_[lane].items > 0) return true;
  return false;
}

std::uint64_t Outbox::min_queued_slots() const noexcept {
  std::uint64_t fewest = UINT64_MAX;
  for (std::size_t lane = 0; lane < lanes_.size(); ++lane)
    if (lane >= max_masked_lanes || (active_ >> lane & 1) != 0) fewest = std::min(fewest, lanes_[lane].ring.size_approx());
  return fewest;
}

void Outbox::refresh_membership() {
  if (!membership_) return;
  // SYNC POINT (acquire): pairs with the release in publish_membership(); `active` is then at
  // least as new as this epoch.
  const std::uint64_t epoch = membership_->epoch.load(std::memory_order_acquire);
  if (epoch == seen_epoch_) return;
  std::uint64_t active = membership_->active.load(std::memory_order_relaxed) & lane_mask(static_cast<std::uint32_t>(lanes_.size()));
  if (active == 0) active = lane_mask(static_cast<std::uint32_t>(lanes_.size()));  // never dispatch to nobody
  for (std::size_t lane = 0; lane < lanes_.size(); ++lane)
    if (!(active >> lane & 1) && lanes_[lane].open && cursors_[lane].items > 0) publish(lane);
  active_ = active;
  seen_epoch_ = epoch;
  // SYNC POINT (release): every slot this producer sends to a lane that left is published
  // above or earlier; pairs with the acquire in Inbox::try_retire().
  ack_->epoch.store(epoch, std::memory_order_release);
}

std::size_t Outbox::pick_lane() {
  const std::size_t n = lanes_.size();
  // Membership only changes lanes under load / turn dispatch (the scheduler does not scale the
  // consumers of ordered or keyed channels); one acquire load per slot.
  auto active = [&](std::size_t lane) { return lane >= max_masked_lanes || (active_ >> lane & 1) != 0; };
  switch (options_.dispatch) {
    case Dispatch::round_robin:
      refresh_membership();
      do rotation_ = (rotation_ + 1) % n;
      while (!active(rotation_));
      return rotation_;
    case Dispatch::least_loaded: {
      refresh_membership();
      // One relaxed head load per lane, once per slot: cheap next to a slot's worth of items.
      do rotation_ = (rotation_ + 1) % n;
      while (!active(rotation_));
      std::size_t best = rotation_;
      std::uint64_t best_size = lanes_[best].ring.size_approx();
      for (std::size_t k = 1; k < n && best_size > 0; ++k) {
        const std::size_t lane = (rotation_ + k) % n;
        if (!active(lane)) continue;
        const std::uint64_t size = lanes_[lane].ring.size_approx();
        if (size < best_size) {
          best = lane;
          best_size = size;
        }
      }
      return best;
    }
    case Dispatch::by_sequence:
      // Source mode numbers slots as it opens them: the next one gets source_seq_.
      return static_cast<std::size_t>((options_.source ? source_seq_ : batch_.seq) % n);
    case Dispatch::by_key:
      break;
  }
  throw std::logic_error("Outbox: by_key dispatch needs an explicit lane");
}


// Ordered sources start small: with by_sequence dispatch a whole slot goes to one replica, so a
// fast generator of a few expensive items would otherwise hand all of them to replica 0. The
// first slots hold one item, then 2x, 4x, ... that size, each size once per lane, until slots
// are full size (a fine-grained stream gets there within a few dozen slots).
std::size_t Outbox::slot_room(std::size_t n) {
  const std::size_t full = lanes_.front().ring.payload_bytes();
  if (n >= full) return full;
  if (options_.slot_work.cost_ns && !options_.stamp_origin &&
      (options_.dispatch == Dispatch::least_loaded || options_.dispatch == Dispatch::round_robin))
    return balanced_room(n, full);
  if (done_slow_start_ || !options_.source || options_.dispatch != Dispatch::by_sequence) return full;
  if (slow_start_bytes_ == 0) slow_start_bytes_ = std::max<std::size_t>(n, 1);
  if (slow_start_bytes_ >= full) {
    done_slow_start_ = true;
    return full;
  }
  return std::max(n, slow_start_bytes_);
}

// SlotWork: room for about target_ns of the consumers' work, in bytes of this producer's items
// so far (the fast path counts bytes, not items). Until the consumers' cost is known, a slow
// start: one item per slot, doubled after each round of lanes.
std::size_t Outbox::balanced_room(std::size_t n, std::size_t full) {
  const SlotWork& w = options_.slot_work;
  const auto now = Clock::now();
  if (balance_cost_ns_ <= 0 || now - balance_read_ >= std::chrono::nanoseconds(w.target_ns)) {
    balance_read_ = now;
    if (const double cost = w.cost_ns(w.context); cost > 0) {
      balance_cost_ns_ = cost;
      balance_items_ = static_cast<std::uint64_t>(std::max(1.0, static_cast<double>(w.target_ns) / cost));
    }
  }
  const std::size_t lanes = membership_ ? static_cast<std::size_t>(std::popcount(active_)) : lanes_.size();
  if (balance_cost_ns_ <= 0 && ++balance_slots_ > lanes) {
    balance_slots_ = 1;
    balance_items_ = std::min<std::uint64_t>(balance_items_ * 2, full);
  }
  const double bytes_per_item = stats_.items > 0 ? static_cast<double>(stats_.bytes) / static_cast<double>(stats_.items) : static_cast<double>(n);
  const double room = static_cast<double>(balance_items_) * std::max(bytes_per_item, 1.0);
  return room >= static_cast<double>(full) ? full : std::max(n, static_cast<std::size_t>(room));
}

void Outbox::open(std::size_t lane, std::size_t n) {
  Lane& l = lanes_[lane];
  if (!l.open) {
    SlotHeader* slot = l.ring.try_claim();
    if (!slot) {
      const auto t0 = Clock::now();
      // Relaxed load of `abandon`: the thread that sets it notifies the space event afterwards,
      // and the event's own fences order that wake-up after the store.
      const auto ready = [&] {
        return (slot = l.ring.try_claim()) != nullptr || (options_.abandon && options_.abandon->load(std::memory_order_relaxed));
      };
      // A large item's later fragments always wait: giving up would leave half an item.
      wait(*space_event_, ready, in_fragments_ ? Clock::time_point::max() : wait_deadline_, options_.spin);
      stats_.blocked_ns += static_cast<std::uint64_t>(
          std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count());
      if (!slot) throw would_block("Outbox: no free slot");
    }
    l.open = slot;
    std::byte* payload = l.ring.payload(slot);
    cursors_[lane] = {payload, payload + slot_room(n), 0};
  } else if (cursors_[lane].items > 0) {
    return;  // keeps filling the slot it has
  } else {
    // Claimed earlier but still empty: its room is decided now, for this item.
    std::byte* payload = l.ring.payload(l.open);
    cursors_[lane] = {payload, payload + slot_room(n), 0};
  }
  // A fresh (or still empty) slot takes the meta of what will go into it.
  if (options_.source) {
    if (!in_fragments_) l.meta = {source_seq_++, source_items_, true};
  } else {
    l.meta = {batch_.seq, 0, false};
  }
}

void Outbox::begin_origin(std::uint32_t lane, std::uint64_t origin, std::uint64_t already_sent) noexcept {
  origin_lane_ = lane;
  origin_ = origin;
  origin_slots_ = 0;
  skip_slots_ = already_sent;
}

void Outbox::begin_source_replay(const SourceReplay& r) noexcept {
  if (r.items == 0 && r.fragments == 0) return;
  source_replay_ = true;
  replay_ = r;
  publish_each_item_ = true;  // the generator flushes after each item: no slot straddles the end of the drop
  expect_items_ = 0;
  if (options_.digest) {
    // The dead predecessor's digest: the entry covering the most items, if one was complete.
    // Acquire: pairs with the release store of `items` after its `hash` (publish).
    for (const ReplayDigest::Entry& e : options_.digest->entries) {
      const std::uint64_t items = e.items.load(std::memory_order_acquire);
      if (items == ReplayDigest::writing || items <= expect_items_ || items > r.items) continue;
      expect_items_ = items;
      expect_hash_ = e.hash.load(std::memory_order_relaxed);
    }
  }
}

// Folds published (or dropped) bytes into the digest as one stream of little-endian 8-byte words
// (a multiply-xor: a change is found, not an adversary); a partial last word is carried to the
// next call, so the value does not depend on where the slots were cut.
void Outbox::fold_digest(const std::byte* payload, std::size_t bytes) noexcept {
  std::uint64_t h = digest_hash_;
  std::uint64_t carry = digest_carry_;
  std::size_t have = static_cast<std::size_t>(digest_bytes_ % 8);
  digest_bytes_ += bytes;
  const auto mix = [&h](std::uint64_t w) {
    h = (h ^ w) * 0xff51afd7ed558ccdULL;
    h ^= h >> 29;
  };
  std::size_t k = 0;
  if (have != 0) {
    const std::size_t take = std::min(8 - have, bytes);
    std::uint64_t w = 0;
    std::memcpy(&w, payload, take);
    carry |= w << (8 * have);
    k = take;
    have += take;
    if (have == 8) {
      mix(carry);
      carry = 0;
    }
  }
  for (; k + 8 <= bytes; k += 8) {
    std::uint64_t w;
    std::memcpy(&w, payload + k, 8);
    mix(w);
  }
  if (k < bytes) {
    carry = 0;
    std::memcpy(&carry, payload + k, bytes - k);
  }
  digest_hash_ = h;
  digest_carry_ = carry;
}

std::uint64_t Outbox::digest_value() const noexcept {
  std::uint64_t h = (digest_hash_ ^ (digest_bytes_ * 0x9e3779b97f4a7c15ULL) ^ digest_carry_) * 0xc4ceb9fe1a85ec53ULL;
  return h ^ (h >> 31);
}

void Outbox::throw_replay_differs() const {
  throw std::runtime_error(fmt::format(
      "procflow: run again after its process died (pf::restart), this generator's first {} items differ from those it "
      "had sent: a restarted generator must yield the same items from its start (one reading a socket, the clock or a "
      "shared file offset cannot be restarted)",
      source_items_));
}

// begin_source_replay: this slot holds an item (or a fragment of one) that the dead predecessor
// had sent. It is dropped, not published: the slot stays claimed and is filled again from its
// start (open() reuses a claimed empty slot).
void Outbox::drop_replayed(Lane& l, detail::write_cursor& c, std::uint32_t flags) {
  const bool fragment = (flags & slot_fragment) != 0;
  const bool ends_item = !fragment || (flags & slot_fragment_last) != 0;
  bool differs = false;
  if (fragment && replay_.items == 0) {
    // The item that was being sent when the predecessor died: its fragments already out.
    differs = ends_item || replay_.fragments == 0;
    if (!differs) --replay_.fragments;
  } else if (c.items > replay_.items) {
    differs = true;  // (every item is a slot of its own until the drop ends)
  } else {
    replay_.items -= c.items;
  }
  ++stats_.replayed_slots;
  stats_.replayed_items += c.items;
  source_items_ += c.items;  // numbering goes on past them
  if (options_.digest) {
    fold_digest(l.ring.payload(l.open), static_cast<std::size_t>(c.pos - l.ring.payload(l.open)));
    differs = differs || (ends_item && source_items_ == expect_items_ && digest_value() != expect_hash_);
  }
  if (differs) throw_replay_differs();
  c = {};
  if (current_ == &c) current_ = &no_slot_;
  if (replay_.items == 0 && replay_.fragments == 0) {
    // All dropped: the stream goes on where the predecessor's stopped, in slots cut as they come.
    source_replay_ = false;
    publish_each_item_ = options_.publish_each_item;
    source_seq_ = replay_.next_seq;
    origin_slots_ = replay_.slots;
    if (in_fragments_) l.meta.seq = replay_.next_seq - 1;  // the rest of the item in flight keeps its number
    wake_next_ = true;  // its consumer may sleep waiting for this stream (mid-item too)
  }
}

void Outbox::publish(std::size_t lane, std::uint32_t extra_flags, std::uint64_t large_total, bool wake) {
  Lane& l = lanes_[lane];
  detail::write_cursor& c = cursors_[lane];
  SlotHeader* slot = l.open;
  if (source_replay_) {
    drop_replayed(l, c, extra_flags);
    return;
  }
  if (skip_slots_ > 0) {
    // A replay: this slot was published by the replica that died (begin_origin). The slot stays
    // claimed and is filled again from its start (open() reuses a claimed empty slot).
    --skip_slots_;
    ++origin_slots_;
    ++stats_.replayed_slots;
    stats_.replayed_items += c.items;
    c = {};
    if (current_ == &c) current_ = &no_slot_;
    return;
  }
  const auto bytes = static_cast<std::uint32_t>(c.pos - l.ring.payload(slot));
  slot->bytes = bytes;
  slot->items = c.items;
  slot->seq = l.meta.seq;
  slot->first_item = l.meta.first_item;
  slot->large_total = large_total;
  std::uint32_t flags = extra_flags;
  if (l.meta.dense) flags |= slot_dense;
  // Every source slot is a batch of its own (a fragmented item: its last slot ends the batch).
  if (options_.source && (!(flags & slot_fragment) || (flags & slot_fragment_last))) flags |= slot_batch_end;
  slot->flags = flags;
  slot->origin_lane = origin_lane_;
  slot->origin = origin_;
  slot->origin_slot = options_.stamp_origin ? ++origin_slots_ : 0;
  slot->origin_fragment = options_.stamp_origin && (flags & slot_fragment) ? fragment_ : 0;
  if (options_.digest) fold_digest(l.ring.payload(slot), bytes);
  l.ring.publish();  // release: the header and payload written above become visible
  if (options_.digest && (!(flags & slot_fragment) || (flags & slot_fragment_last))) {
    // After the slot is out (a death in between leaves the previous entry as the truth), and
    // only where an item ends (a replay compares there).
    ReplayDigest::Entry& e = options_.digest->entries[digest_writes_++ % 2];
    e.items.store(ReplayDigest::writing, std::memory_order_relaxed);
    e.hash.store(digest_value(), std::memory_order_release);  // after `writing`
    e.items.store(source_items_ + c.items, std::memory_order_release);  // SYNC POINT: pairs with begin_source_replay's acquire
  }
  if (wake || wake_next_) notify(*l.data_event);
  wake_next_ = false;
  stats_.slots += 1;
  gate_storage_.published.store(stats_.slots, std::memory_order_relaxed);
  stats_.items += c.items;
  stats_.bytes += bytes;
  if (options_.source) source_items_ += c.items;
  step_slow_start();
  l.open = nullptr;
  c = {};
  if (current_ == &c) current_ = &no_slot_;
  if (options_.on_publish) options_.on_publish(options_.publish_context);
}

// After each slot of an ordered source's slow start (slot_room): the size doubles once every
// lane had a slot of it.
void Outbox::step_slow_start() noexcept {
  if (slow_start_bytes_ != 0 && !done_slow_start_ && ++slow_start_slots_ == lanes_.size()) {
    slow_start_slots_ = 0;
    slow_start_bytes_ *= 2;
  }
}

void Outbox::publish_current_if_used() {
  if (lanes_[current_lane_].open && cursors_[current_lane_].items > 0) publish(current_lane_);
}

std::byte* Outbox::reserve_slow(std::size_t lane, std::size_t n) {
  if (closed_) throw std::logic_error("Outbox: write after close()");
  if (n > max_item_bytes_)
    throw std::logic_error(fmt::format("Outbox: item of {} bytes exceeds the {}-byte slot; use write_large", n, max_item_bytes_));
  if (lane == any_lane) {
    // The current slot lacks room: publish it, then let dispatch choose where the next goes.
    publish_current_if_used();
    current_lane_ = pick_lane();
    open(current_lane_, n);
    current_ = &cursors_[current_lane_];
    return current_->pos;
  }
  if (lane >= lanes_.size()) throw std::out_of_range(fmt::format("Outbox: no lane {} (have {})", lane, lanes_.size()));
  if (lanes_[lane].open && cursors_[lane].items > 0) publish(lane);
  open(lane, n);
  return cursors_[lane].pos;
}

void Outbox::write_large_parts(std::size_t lane, std::span<const std::span<const std::byte>> parts) {
  if (closed_) throw std::logic_error("Outbox: write after close()");
  std::size_t total = 0;
  for (const auto& part : parts) total += part.size();
  if (lane == any_lane) {
    publish_current_if_used();  // items written before this one go first
    // A replay's item in flight when its predecessor died goes on in the ring it was going to.
    lane = source_replay_ && replay_.items == 0 ? replay_.lane : pick_lane();
  } else if (lanes_[lane].open && cursors_[lane].items > 0) {
    publish(lane);
  }
  std::size_t done = 0;
  std::size_t part = 0;         // part being copied
  std::size_t part_done = 0;    // bytes of it already copied
  // A consumer that reads the item while it is written catches up with this producer and sleeps
  // until the next fragment; waking it for every fragment costs a futex wake-up and two context
  // switches per slot. It is woken by the first fragment, then by every `wake_every`-th and by
  // the last, so it copies half a ring per wake-up. No wake-up is lost: every run of `wake_every`
  // consecutive fragments holds one that wakes, and a ring holds at least that many, so this
  // producer cannot fill the ring (and sleep) with the consumer asleep and not woken. Between
  // fragments only this copy runs (never user code), so the delay is one half ring's copy.
  const std::size_t wake_every = std::max<std::size_t>(1, lanes_[lane].ring.slot_count() / 2);
  std::size_t fragment = 0;
  do {
    open(lane, max_item_bytes_);  // fragments fill whole slots
    in_fragments_ = true;
    detail::write_cursor& c = cursors_[lane];
    const bool first = done == 0;
    // Fill this slot from as many parts as fit (the head of an item and the start of its body
    // share the first slot).
    while (c.pos != c.end && done < total) {
      while (part_done == parts[part].size()) {
        ++part;
        part_done = 0;
      }
      const std::size_t chunk = std::min(parts[part].size() - part_done, static_cast<std::size_t>(c.end - c.pos));
      std::memcpy(c.pos, parts[part].data() + part_done, chunk);
      c.pos += chunk;
      part_done += chunk;
      done += chunk;
    }
    const bool last = done == total;
    c.items = last ? 1 : 0;
    fragment_ = fragment + 1;
    publish(lane, slot_fragment | (last ? slot_fragment_last : 0u), first ? total : 0, last || fragment % wake_every == 0);
    ++fragment;
  } while (done < total);
  fragment_ = 0;
  in_fragments_ = false;
}

void Outbox::begin_batch(const detail::batch_meta& meta) { batch_ = meta; }

void Outbox::end_batch() {
  if (options_.dispatch != Dispatch::by_sequence || options_.source) return;
  const std::size_t lane = pick_lane();
  open(lane);  // an empty slot still carries the batch_end mark: no gap in sequence numbers
  publish(lane, slot_batch_end);
}

void Outbox::flush() {
  for (std::size_t lane = 0; lane < lanes_.size(); ++lane)
    if (lanes_[lane].open && cursors_[lane].items > 0) publish(lane);
  // Nothing is open with items now: a producer about to wait acknowledges a change at once, so a
  // retiring consumer does not wait for this producer's next slot.
  if (options_.dispatch == Dispatch::round_robin || options_.dispatch == Dispatch::least_loaded) refresh_membership();
}

void Outbox::close() {
  if (closed_) return;
  flush();
  // A replay that ended before it dropped all its predecessor had sent: the stream was shorter.
  if (source_replay_) throw_replay_differs();
  closed_ = true;
  current_ = &no_slot_;
  for (auto& l : lanes_) {
    l.open = nullptr;  // a claimed but empty slot is simply never published
    l.ring.close();
    notify(*l.data_event);
  }
}

}  // namespace procflow::channel

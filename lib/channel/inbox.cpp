#include "channel/inbox.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>

namespace procflow::channel {

Inbox::Inbox(const Channel& channel, std::uint32_t consumer, const InboxOptions& options)
    : data_event_(&channel.data_event(consumer)), options_(options), expected_seq_(options.first_seq) {
  if (options.seq_stride == 0) throw std::invalid_argument("Inbox: seq_stride must be >= 1");
  for (std::uint32_t p = 0; p < channel.producers(); ++p)
    sources_.push_back({RingReader(channel.ring(p, consumer)), &channel.space_event(p), &channel.ack(p), false});
  if (options.continue_ring) {
    if (!options.ordered || *options.continue_ring >= sources_.size())
      throw std::invalid_argument(fmt::format("Inbox: cannot continue a batch on ring {} of {}", *options.continue_ring, sources_.size()));
    ordered_ring_ = *options.continue_ring;
  }
  if (options.resume_at_head) {
    // The slot a dead predecessor held: unreleased, so its header is final. Any of its batch's
    // slots names the batch, and the batch goes on from this ring.
    const std::uint32_t r = *options.resume_at_head;
    const SlotHeader* slot = options.ordered && r < sources_.size() ? sources_[r].ring.try_peek() : nullptr;
    if (!slot) throw shm_error(fmt::format("Inbox: no held slot at the head of ring {} to resume at", r));
    const std::uint64_t seq = slot->seq;
    if (seq < options.first_seq || (seq - options.first_seq) % options.seq_stride != 0)
      throw shm_error(fmt::format("ordered channel: a held slot of batch {} is not this consumer's", seq));
    expected_seq_ = seq;
    ordered_ring_ = none;
  }
}

Inbox::position Inbox::position_after_release() const noexcept {
  if (held_batch_end_) return {expected_seq_ + options_.seq_stride, std::nullopt};
  if (ordered_ring_ == none) return {expected_seq_, std::nullopt};
  return {expected_seq_, static_cast<std::uint32_t>(ordered_ring_)};
}

bool Inbox::update_end() {
  bool all = true;
  for (auto& s : sources_) {
    if (!s.drained) s.drained = s.ring.drained();
    all = all && s.drained;
  }
  return all;
}

bool Inbox::try_retire(std::uint64_t epoch) {
  if (held_ != none || held_large_ || partial_.ring != none) return false;
  for (auto& s : sources_) {
    if (s.drained) continue;
    // SYNC POINT (acquire): pairs with the producer's release of its ack in
    // Outbox::refresh_membership(): every slot it sent here is visible to the peek below.
    const bool quiet = s.ack->epoch.load(std::memory_order_acquire) >= epoch || s.ring.closed();
    if (!quiet || s.ring.try_peek()) return false;
  }
  return true;
}

bool Inbox::try_receive(detail::batch_view& out) {
  deadline_ = Clock::now();  // a split item whose next fragment is not there yet: no waiting
  return poll(out);
}

bool Inbox::poll(detail::batch_view& out) {
  if (held_ != none || held_large_) throw std::logic_error("Inbox: receive before release() of the previous batch");
  if (end_) return false;
  if (partial_.ring != none) return reassemble(partial_.ring, nullptr, out);
  return options_.ordered ? try_receive_ordered(out) : try_receive_unordered(out);
}

bool Inbox::try_receive_unordered(detail::batch_view& out) {
  const std::size_t n = sources_.size();
  for (std::size_t k = 0; k < n; ++k) {
    const std::size_t i = (next_ + k) % n;
    if (sources_[i].drained) continue;
    if (const SlotHeader* slot = sources_[i].ring.try_peek()) {
      next_ = (i + 1) % n;  // fairness: the next call starts after this ring
      return deliver(i, slot, out);
    }
  }
  end_ = update_end();
  return false;
}

bool Inbox::try_receive_ordered(detail::batch_view& out) {
  if (ordered_ring_ != none) {
    // The batch in progress continues on the ring it started on.
    Source& s = sources_[ordered_ring_];
    if (const SlotHeader* slot = s.ring.try_peek()) {
      if (slot->seq != expected_seq_)
        throw shm_error(fmt::format("ordered channel: batch {} continues with a slot of batch {}", expected_seq_, slot->seq));
      return deliver(ordered_ring_, slot, out);
    }
    if (s.ring.drained()) throw shm_error(fmt::format("ordered channel: stream ended inside batch {}", expected_seq_));
    return false;
  }
  bool any_pending = false;
  // Every ring not yet drained is closed and holds a later batch at its head: only heads are ever
  // delivered, so the expected batch can no longer arrive (a gap), and waiting would hang.
  bool all_stuck = true;
  for (std::size_t i = 0; i < sources_.size(); ++i) {
    if (sources_[i].drained) continue;
    if (const SlotHeader* slot = sources_[i].ring.try_peek()) {
      if (slot->seq == expected_seq_) {
        ordered_ring_ = i;
        return deliver(i, slot, out);
      }
      if (slot->seq < expected_seq_ || (slot->seq - expected_seq_) % options_.seq_stride != 0)
        throw shm_error(fmt::format("ordered channel: unexpected batch {} while waiting for {}", slot->seq, expected_seq_));
      any_pending = true;
      // Read after the peek: once closed is seen, the slot peeked is final at the head.
      if (!sources_[i].ring.closed()) all_stuck = false;
    } else {
      all_stuck = false;  // empty: more may come (or it is drained, checked below)
    }
  }
  end_ = update_end();
  if (any_pending && (end_ || all_stuck))
    throw shm_error(fmt::format("ordered channel: batch {} never arrived", expected_seq_));
  return false;
}

// A snapshot of a slot header, checked once: the peer may keep writing shared memory, so nothing
// is read from the header again after it was validated.
SlotHeader Inbox::checked_header(std::size_t ring, const SlotHeader* slot) const {
  SlotHeader h;
  std::memcpy(&h, slot, sizeof h);
  if (h.bytes > sources_[ring].ring.payload_bytes())
    throw shm_error(fmt::format("channel: slot claims {} payload bytes, slots hold {}", h.bytes, sources_[ring].ring.payload_bytes()));
  // Every item takes at least one unit of a slot's room (a zero-byte item too, see write_cursor in
  // detail/port.hpp), so a slot holds at most payload_bytes items: a larger count is corrupt and
  // must not size anything. A fragment slot carries at most its item's one count.
  const std::uint32_t max_items = (h.flags & slot_fragment) ? 1u : sources_[ring].ring.payload_bytes();
  if (h.items > max_items)
    throw shm_error(fmt::format("channel: slot claims {} items in {} bytes (a slot holds at most {})", h.items, h.bytes, max_items));
  return h;
}

bool Inbox::deliver(std::size_t ring, const SlotHeader* slot, detail::batch_view& out) {
  const SlotHeader h = checked_header(ring, slot);
  if (h.flags & slot_fragment) return options_.stream_large_items ? start_stream(ring, slot, out) : reassemble(ring, slot, out);
  out.bytes = {sources_[ring].ring.payload(slot), h.bytes};
  out.large = nullptr;
  out.large_bytes = 0;
  out.items = h.items;
  out.meta = {h.seq, h.first_item, (h.flags & slot_dense) != 0};
  out.batch_end = (h.flags & slot_batch_end) != 0;
  held_origin_ring_ = ring;
  held_origin_index_ = sources_[ring].ring.head_index();
  held_redeliverable_ = true;
  held_ = ring;
  held_batch_end_ = out.batch_end;
  stats_.slots += 1;
  stats_.items += h.items;
  stats_.bytes += h.bytes;
  return true;
}

// Copies the fragments of one split item into large_. `first` is its first slot, or null to
// resume an item whose next fragment had not arrived by the deadline last time: waiting for a
// fragment is bounded by deadline_, so a producer that died mid-item cannot hold the caller
// forever (the supervisor must get back to checking its children).
bool Inbox::reassemble(std::size_t ring, const SlotHeader* first, detail::batch_view& out) {
  Source& s = sources_[ring];
  if (first) {
    const SlotHeader h = checked_header(ring, first);
    if (h.large_total == 0 || h.large_total > options_.max_item_bytes)
      throw shm_error(fmt::format("channel: split item of {} bytes (limit {})", h.large_total, options_.max_item_bytes));
    large_.resize(h.large_total);
    const std::uint64_t payload = s.ring.payload_bytes();
    const std::uint64_t slots = h.large_total / payload + (h.large_total % payload != 0 ? 1 : 0);
    partial_ = {ring, h.large_total, 0, {h.seq, h.first_item, (h.flags & slot_dense) != 0}, s.ring.head_index(),
                options_.hold_split_items && slots <= s.ring.slot_count()};
  }
  const SlotHeader* slot = first;
  bool batch_end = false;
  for (;;) {
    if (!slot) {
      const SlotHeader* next = nullptr;
      const auto t0 = Clock::now();
      const bool ready = wait(*data_event_, [&] { return (next = s.ring.try_peek()) != nullptr || s.ring.drained(); }, deadline_, options_.spin);
      stats_.starved_ns += static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count());
      if (!ready) return false;  // progress is kept in partial_; the next receive resumes
      if (!next) throw shm_error("channel: stream ended inside a split item");
      slot = next;
    }
    const SlotHeader h = checked_header(ring, slot);
    if (!(h.flags & slot_fragment) || h.seq != partial_.meta.seq || (slot != first && h.large_total != 0))
      throw shm_error("channel: split item interrupted by another slot");
    if (h.bytes > partial_.total - partial_.done) throw shm_error("channel: split item longer than announced");
    std::memcpy(large_.data() + partial_.done, s.ring.payload(slot), h.bytes);
    partial_.done += h.bytes;
    stats_.slots += 1;
    stats_.bytes += h.bytes;
    const bool last = (h.flags & slot_fragment_last) != 0;
    batch_end = (h.flags & slot_batch_end) != 0;
    if (partial_.hold) {
      s.ring.step();  // given back with the item (release())
    } else {
      release_slot(ring);
    }
    slot = nullptr;
    if (last) break;
    if (partial_.done == partial_.total) throw shm_error("channel: split item has no last fragment");
  }
  if (partial_.done != partial_.total)
    throw shm_error(fmt::format("channel: split item has {} of {} bytes", partial_.done, partial_.total));
  partial_.ring = none;
  held_origin_ring_ = ring;
  held_origin_index_ = partial_.first_index;
  held_redeliverable_ = partial_.hold || !options_.hold_split_items;
  held_stepped_ = partial_.hold;
  out.bytes = {large_.data(), large_.size()};
  out.large = nullptr;
  out.large_bytes = 0;
  out.items = 1;
  out.meta = partial_.meta;
  out.batch_end = batch_end;
  held_large_ = true;
  held_batch_end_ = batch_end;
  stats_.items += 1;
  return true;
}

// Hands the caller a split item as a stream over its fragments, starting at its first slot: the
// caller's decode copies each fragment straight into the item (LargeStream::read), and the slots
// go back as they are read (or with the item under hold_split_items, as reassemble() does).
bool Inbox::start_stream(std::size_t ring, const SlotHeader* first, detail::batch_view& out) {
  Source& s = sources_[ring];
  const SlotHeader h = checked_header(ring, first);
  if (h.large_total == 0 || h.large_total > options_.max_item_bytes)
    throw shm_error(fmt::format("channel: split item of {} bytes (limit {})", h.large_total, options_.max_item_bytes));
  const std::uint64_t payload = s.ring.payload_bytes();
  const std::uint64_t slots = h.large_total / payload + (h.large_total % payload != 0 ? 1 : 0);
  LargeStream& st = stream_;
  st.ring = ring;
  st.total = h.large_total;
  st.received = 0;
  st.seq = h.seq;
  st.slot = first;
  st.slot_bytes = 0;
  st.slot_pos = 0;
  st.checked = false;
  st.first = true;
  st.hold = options_.hold_split_items && slots <= s.ring.slot_count();
  st.last_seen = false;
  st.batch_end = false;
  st.released = 0;
  st.unwoken = false;
  st.out = &out;
  held_origin_ring_ = ring;
  held_origin_index_ = s.ring.head_index();
  held_redeliverable_ = st.hold || !options_.hold_split_items;
  held_stepped_ = st.hold;
  held_stream_ = true;
  held_large_ = true;
  held_batch_end_ = false;
  out.bytes = {};
  out.items = 1;
  out.meta = {h.seq, h.first_item, (h.flags & slot_dense) != 0};
  out.batch_end = false;  // known once the last fragment is read
  out.large = &st;
  out.large_bytes = h.large_total;
  stats_.items += 1;
  return true;
}

// Makes a checked fragment current: `slot` once its header is validated against the item, else
// the next slot of the ring, waiting for it while it has not arrived. False once the item's last
// fragment was finished.
bool Inbox::LargeStream::ensure_fragment() {
  if (slot && checked) return true;
  Inbox& inbox = *inbox_;
  Source& s = inbox.sources_[ring];
  if (!slot) {
    if (last_seen) return false;
    const SlotHeader* next = s.ring.try_peek();
    const auto t0 = Clock::now();
    if (!next && unwoken) {
      // About to wait for the producer, which may itself wait for the slots given back quietly.
      notify(*s.space_event);
      unwoken = false;
    }
    if (!next)
      wait(*inbox.data_event_, [&] { return (next = s.ring.try_peek()) != nullptr || s.ring.drained(); }, Clock::time_point::max(),
           inbox.options_.spin);
    inbox.stats_.starved_ns += static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count());
    if (!next) throw shm_error("channel: stream ended inside a split item");
    slot = next;
    first = false;
  }
  const SlotHeader h = inbox.checked_header(ring, slot);
  if (!(h.flags & slot_fragment) || h.seq != seq || (!first && h.large_total != 0))
    throw shm_error("channel: split item interrupted by another slot");
  if (h.bytes > total - received) throw shm_error("channel: split item longer than announced");
  received += h.bytes;
  slot_bytes = h.bytes;
  slot_pos = 0;
  checked = true;
  if (h.flags & slot_fragment_last) {
    if (received != total) throw shm_error(fmt::format("channel: split item has {} of {} bytes", received, total));
    last_seen = true;
    batch_end = (h.flags & slot_batch_end) != 0;
  } else if (received == total) {
    throw shm_error("channel: split item has no last fragment");
  }
  return true;
}

// The current fragment is read: its slot is stepped past or given back.
void Inbox::LargeStream::finish_fragment() {
  Inbox& inbox = *inbox_;
  inbox.stats_.slots += 1;
  inbox.stats_.bytes += slot_bytes;
  if (hold) {
    inbox.sources_[ring].ring.step();  // given back with the item (release())
  } else {
    // A producer writing this item faster than it is read fills the ring and sleeps; woken for
    // every slot given back, it would write one fragment per wake-up (a futex wake and two
    // context switches per slot). It is woken by every `wake_every`-th slot and the item's last,
    // and before this reader waits for a fragment (ensure_fragment), so it always learns of the
    // room before either side could wait for the other.
    Source& s = inbox.sources_[ring];
    s.ring.release();
    const std::uint32_t wake_every = std::max<std::uint32_t>(1, s.ring.slot_count() / 2);
    if (last_seen || ++released % wake_every == 0) {
      notify(*s.space_event);
      unwoken = false;
    } else {
      unwoken = true;
    }
  }
  slot = nullptr;
  checked = false;
  if (last_seen) {
    // The item is complete: what the caller's batch and release() need from its last slot.
    out->batch_end = batch_end;
    inbox.held_batch_end_ = batch_end;
  }
}

void Inbox::LargeStream::read(std::byte* to, std::size_t n) {
  while (n > 0) {
    if (!ensure_fragment()) throw shm_error(fmt::format("channel: read past the end of a split item of {} bytes", total));
    const std::size_t chunk = std::min<std::size_t>(n, slot_bytes - slot_pos);
    std::memcpy(to, inbox_->sources_[ring].ring.payload(slot) + slot_pos, chunk);
    to += chunk;
    n -= chunk;
    slot_pos += static_cast<std::uint32_t>(chunk);
    if (slot_pos == slot_bytes) finish_fragment();  // the item's last byte read: complete before release()
  }
}

void Inbox::LargeStream::skip_rest() {
  while (ensure_fragment()) finish_fragment();
}

bool Inbox::receive(detail::batch_view& out) { return receive_until(out, Clock::time_point::max()); }

bool Inbox::receive_until(detail::batch_view& out, Clock::time_point deadline, const std::function<bool()>& interrupt) {
  deadline_ = deadline;
  if (poll(out)) return true;
  if (end_) return false;
  bool got = false;
  const auto t0 = Clock::now();
  wait(*data_event_, [&] { return (got = poll(out)) || end_ || (interrupt && interrupt()); }, deadline, options_.spin);
  stats_.starved_ns += static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count());
  return got;
}

void Inbox::release_slot(std::size_t ring) {
  sources_[ring].ring.release();
  notify(*sources_[ring].space_event);
}

void Inbox::release() {
  if (held_ != none) {
    release_slot(held_);
    held_ = none;
  } else if (held_large_) {
    if (held_stream_) {
      held_stream_ = false;
      stream_.skip_rest();  // a caller that did not read the whole item: step past the rest
    }
    held_large_ = false;
    if (held_stepped_) {
      sources_[held_origin_ring_].ring.release_stepped();
      notify(*sources_[held_origin_ring_].space_event);
      held_stepped_ = false;
    }
  } else {
    return;
  }
  if (options_.ordered && held_batch_end_) {
    expected_seq_ += options_.seq_stride;
    ordered_ring_ = none;
  }
  held_batch_end_ = false;
}

}  // namespace procflow::channel

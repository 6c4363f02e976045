#include "channel/inbox.hpp"

#include <fmt/format.h>

#include <cstring>
#include <stdexcept>

namespace procflow::channel {

Inbox::Inbox(const Channel& channel, std::uint32_t consumer, const InboxOptions& options)
    : data_event_(&channel.data_event(consumer)), options_(options), expected_seq_(options.first_seq) {
  if (options.seq_stride == 0) throw std::invalid_argument("Inbox: seq_stride must be >= 1");
  for (std::uint32_t p = 0; p < channel.producers(); ++p)
    sources_.push_back({RingReader(channel.ring(p, consumer)), &channel.space_event(p), false});
}

bool Inbox::update_end() {
  bool all = true;
  for (auto& s : sources_) {
    if (!s.drained) s.drained = s.ring.drained();
    all = all && s.drained;
  }
  return all;
}

bool Inbox::try_receive(detail::batch_view& out) {
  if (held_ != none || held_large_) throw std::logic_error("Inbox: receive before release() of the previous batch");
  if (end_) return false;
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

bool Inbox::deliver(std::size_t ring, const SlotHeader* slot, detail::batch_view& out) {
  const std::uint32_t flags = slot->flags;
  if (flags & slot_fragment) {
    reassemble(ring, slot, out);
    return true;
  }
  if (slot->items > slot->bytes)
    throw shm_error(fmt::format("channel: slot claims {} items in {} bytes", slot->items, slot->bytes));
  out.bytes = {sources_[ring].ring.payload(slot), slot->bytes};
  out.items = slot->items;
  out.meta = {slot->seq, slot->first_item, (flags & slot_dense) != 0};
  out.batch_end = (flags & slot_batch_end) != 0;
  held_ = ring;
  held_batch_end_ = out.batch_end;
  stats_.slots += 1;
  stats_.items += slot->items;
  stats_.bytes += slot->bytes;
  return true;
}

void Inbox::reassemble(std::size_t ring, const SlotHeader* first, detail::batch_view& out) {
  const std::uint64_t total = first->large_total;
  if (total == 0 || total > options_.max_item_bytes)
    throw shm_error(fmt::format("channel: split item of {} bytes (limit {})", total, options_.max_item_bytes));
  Source& s = sources_[ring];
  large_.resize(total);
  std::uint64_t done = 0;
  const SlotHeader* slot = first;
  const detail::batch_meta meta{first->seq, first->first_item, (first->flags & slot_dense) != 0};
  bool batch_end = false;
  for (;;) {
    if (!(slot->flags & slot_fragment) || slot->seq != meta.seq || (slot != first && slot->large_total != 0))
      throw shm_error("channel: split item interrupted by another slot");
    if (slot->bytes > total - done) throw shm_error("channel: split item longer than announced");
    std::memcpy(large_.data() + done, s.ring.payload(slot), slot->bytes);
    done += slot->bytes;
    stats_.slots += 1;
    stats_.bytes += slot->bytes;
    const bool last = (slot->flags & slot_fragment_last) != 0;
    batch_end = (slot->flags & slot_batch_end) != 0;
    release_slot(ring);
    if (last) break;
    if (done == total) throw shm_error("channel: split item has no last fragment");
    // The producer is writing the next fragment right now; wait for it.
    const SlotHeader* next = nullptr;
    const auto t0 = Clock::now();
    wait(*data_event_, [&] { return (next = s.ring.try_peek()) != nullptr || s.ring.drained(); }, Clock::time_point::max(), options_.spin);
    stats_.starved_ns += static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count());
    if (!next) throw shm_error("channel: stream ended inside a split item");
    slot = next;
  }
  if (done != total) throw shm_error(fmt::format("channel: split item has {} of {} bytes", done, total));
  out.bytes = {large_.data(), large_.size()};
  out.items = 1;
  out.meta = meta;
  out.batch_end = batch_end;
  held_large_ = true;
  held_batch_end_ = batch_end;
  stats_.items += 1;
}

bool Inbox::receive(detail::batch_view& out) { return receive_until(out, Clock::time_point::max()); }

bool Inbox::receive_until(detail::batch_view& out, Clock::time_point deadline) {
  if (try_receive(out)) return true;
  if (end_) return false;
  bool got = false;
  const auto t0 = Clock::now();
  wait(*data_event_, [&] { return (got = try_receive(out)) || end_; }, deadline, options_.spin);
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
    held_large_ = false;
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

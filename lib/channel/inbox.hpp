// Inbox: consumer replica q's side of a Channel, implementing detail::input_port.
//
// Batches are handed out in place (a view into the slot in shared memory) and given back with
// release(), so the consumer never copies a batch; only an item larger than a slot is
// reassembled into a local buffer. Unordered inboxes take the next ready slot round-robin over
// their P rings; ordered ones deliver batches strictly by sequence number (the rings themselves
// are the bounded reorder buffer). When nothing is ready the consumer spins briefly, then sleeps
// on its data event; end of stream is reported once every producer closed and all is delivered.
#pragma once

#include "channel/channel.hpp"

#include <procflow/detail/port.hpp>
#include <procflow/detail/stage.hpp>

#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

namespace procflow::channel {

struct InboxOptions {
  // Deliver batches in sequence order: first_seq, first_seq + seq_stride, ... (a consumer q of
  // Q replicas behind by_sequence dispatch receives the batches with seq % Q == q).
  bool ordered = false;
  std::uint64_t first_seq = 0;
  std::uint64_t seq_stride = 1;
  // A replacement of a dead replica (pf::restart, pf::recycle) reads on where its predecessor was:
  // first_seq is then the batch it expected next and continue_ring the ring that batch had begun
  // on, if it had (Inbox::position_after_release()); or, when the predecessor died holding a slot
  // (still at the head of its ring), resume_at_head names that ring: the slot's batch is read first.
  std::optional<std::uint32_t> continue_ring;
  std::optional<std::uint32_t> resume_at_head;
  std::uint32_t spin = default_spin_iterations;
  // Largest item accepted from a peer (an item split over slots is reassembled in memory).
  std::uint64_t max_item_bytes = std::uint64_t{1} << 30;
  // pf::restart: the slots of an item split over several stay unreleased until release() (so a
  // replacement reads them again), when the ring can hold all of them at once; a larger item's
  // slots are given back as they are copied (see held_redeliverable()).
  bool hold_split_items = false;
  // Items split over several slots are streamed, not reassembled: the batch carries a
  // large_item_reader (batch_view::large) that copies the fragments straight into the decoded
  // item, waiting for each as needed. For consumers that decode through decode_items() only.
  bool stream_large_items = false;
};

struct InboxStats {
  std::uint64_t slots = 0;
  std::uint64_t items = 0;
  std::uint64_t bytes = 0;
  std::uint64_t starved_ns = 0;  // time spent waiting for input
};

class Inbox final : public detail::input_port {
 public:
  Inbox(const Channel& channel, std::uint32_t consumer, const InboxOptions& options = {});
  Inbox(const Inbox&) = delete;
  Inbox& operator=(const Inbox&) = delete;

  bool try_receive(detail::batch_view& out) override;
  bool receive(detail::batch_view& out) override;
  void release() override;
  // receive() that gives up at `deadline`: false on timeout or at end of stream (see at_end()).
  // With `interrupt`: also false as soon as it returns true, tested on every wake-up (whoever
  // makes it true notifies the data event afterwards; see Supervisor::drain_results).
  bool receive_until(detail::batch_view& out, Clock::time_point deadline, const std::function<bool()>& interrupt = {});
  bool at_end() const override { return end_; }
  // A retiring consumer: true once no producer can send it anything any more — every producer
  // acknowledged membership epoch `epoch` (which excluded this consumer) or closed its ring, and
  // every ring is empty — and nothing is held. Never blocks.
  bool try_retire(std::uint64_t epoch);

  const InboxStats& stats() const noexcept { return stats_; }
  // The batch out with the caller: its ring (producer) and the index of its (first) slot there —
  // what the producer's slots of its output are stamped with (Outbox::begin_origin).
  std::uint32_t held_ring() const noexcept { return static_cast<std::uint32_t>(held_origin_ring_); }
  std::uint64_t held_index() const noexcept { return held_origin_index_; }
  // False when the batch out with the caller is an item whose slots were already given back (it
  // was larger than its ring): a replacement could not read it again.
  bool held_redeliverable() const noexcept { return held_redeliverable_; }
  // Ordered: where this inbox will be once the batch out with the caller is released — the batch
  // expected next and the ring it began on, if it began (a batch's slots all come from one ring).
  // What a replacement needs to read on (InboxOptions::continue_ring).
  struct position {
    std::uint64_t seq;
    std::optional<std::uint32_t> ring;
  };
  position position_after_release() const noexcept;

 private:
  struct Source {
    RingReader ring;
    EventShared* space_event = nullptr;  // the producer's
    MembershipAck* ack = nullptr;        // the producer's acknowledgement of membership changes
    bool drained = false;
  };

  // The split item being streamed to the caller (InboxOptions::stream_large_items).
  class LargeStream final : public detail::large_item_reader {
   public:
    explicit LargeStream(Inbox& inbox) noexcept : inbox_(&inbox) {}
    std::uint64_t size() const noexcept override { return total; }
    void read(std::byte* to, std::size_t n) override;
    // Steps past what the caller left unread, to the item's last fragment.
    void skip_rest();

    std::size_t ring = none;
    std::uint64_t total = 0;
    std::uint64_t received = 0;       // bytes of the fragments seen so far (checked against total)
    std::uint64_t seq = 0;
    const SlotHeader* slot = nullptr;  // fragment being read (null: the next one is still to come)
    std::uint32_t slot_bytes = 0;
    std::uint32_t slot_pos = 0;
    bool checked = false;             // `slot`'s header was validated (slot_bytes, slot_pos hold)
    bool first = true;                // `slot` is the item's first fragment
    bool hold = false;                // its slots are stepped past, released with the item
    bool last_seen = false;           // the last fragment was reached
    bool batch_end = false;
    std::uint32_t released = 0;       // fragments given back so far
    bool unwoken = false;             // some were given back without waking their producer
    detail::batch_view* out = nullptr;

   private:
    bool ensure_fragment();  // false once the last fragment is done
    void finish_fragment();
    Inbox* inbox_;
  };

  bool start_stream(std::size_t ring, const SlotHeader* first, detail::batch_view& out);
  bool try_receive_unordered(detail::batch_view& out);
  bool try_receive_ordered(detail::batch_view& out);
  SlotHeader checked_header(std::size_t ring, const SlotHeader* slot) const;
  bool deliver(std::size_t ring, const SlotHeader* slot, detail::batch_view& out);
  bool reassemble(std::size_t ring, const SlotHeader* first, detail::batch_view& out);
  bool poll(detail::batch_view& out);  // try_receive with the current deadline_
  void release_slot(std::size_t ring);
  bool update_end();

  std::vector<Source> sources_;
  EventShared* data_event_ = nullptr;
  InboxOptions options_;
  std::size_t next_ = 0;             // round-robin start
  static constexpr std::size_t none = ~std::size_t{0};
  std::size_t held_ = none;          // ring whose slot is out with the caller
  bool held_large_ = false;          // the caller holds the reassembly buffer instead
  bool held_batch_end_ = false;
  std::size_t ordered_ring_ = none;  // ordered: ring the current batch continues on
  std::uint64_t expected_seq_ = 0;
  // Reassembly buffer of split items, reused from item to item; growing it does not zero-fill.
  detail::batch_buffer<std::byte> large_;
  // A split item in progress (ring == none: none). Kept across calls when its next fragment is late.
  struct Reassembly {
    std::size_t ring = none;
    std::uint64_t total = 0;
    std::uint64_t done = 0;
    detail::batch_meta meta;
    std::uint64_t first_index = 0;  // ring index of its first slot
    bool hold = false;              // its slots are stepped past, released with the item
  };
  Reassembly partial_;
  Clock::time_point deadline_ = Clock::time_point::max();  // how long reassembly may wait
  bool end_ = false;
  std::size_t held_origin_ring_ = 0;
  std::uint64_t held_origin_index_ = 0;
  bool held_redeliverable_ = true;
  bool held_stepped_ = false;  // release() gives back the slots of a held split item
  bool held_stream_ = false;   // the caller holds stream_
  LargeStream stream_{*this};
  InboxStats stats_;
};

}  // namespace procflow::channel

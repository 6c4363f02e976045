// The two ends of a stage boundary as typed stage code sees them: an output_port that items are
// encoded into, and an input_port that batches of encoded items come out of.
//
// The per-item fast path (reserve/commit) is inline pointer arithmetic on the slot currently
// open in shared memory; only when a slot is full does it call into the runtime (reserve_slow),
// which publishes the slot, picks the next consumer and, if every ring is full, sleeps.
// Implementations live in lib/channel (Outbox, Inbox); nothing here includes OS headers.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <thread>

namespace procflow::detail {

// Where a batch of items came from. Carried in every slot header.
struct batch_meta {
  std::uint64_t seq = 0;         // sequence number of the source batch (ordering)
  std::uint64_t first_item = 0;  // source position of the first item, when dense
  bool dense = false;            // items are consecutive source items starting at first_item
};

// Every item costs its bytes and at least one unit of a slot's room: an item that encodes to zero
// bytes (a tag, an empty struct) is charged one unit by moving `end` back, so a slot of P payload
// bytes holds at most P items (the consumer rejects a header claiming more), and a cursor with no
// slot open (pos == end) reports too little room for any item, zero-byte ones included. The check
// `n + (n == 0) <= end - pos` and the charge `end -= (n == 0)` are branch-free.
struct write_cursor {
  std::byte* pos = nullptr;  // next free byte of the open slot (nullptr: no slot open)
  std::byte* end = nullptr;  // end of the open slot's payload, less one per zero-byte item
  std::uint32_t items = 0;   // items committed to the open slot
};

// The hand-off between a producer and the flusher thread that publishes its partly filled slots
// when they get older than the latency bound (lib/channel/flusher.hpp). The flusher may touch
// the port only while the producer runs user code (a generator call, a stage's batch): the
// producer says so with two plain stores per call, and the flusher pays for the ordering with
// one membarrier() (an asymmetric Dekker handshake; see flusher.cpp for the argument).
struct flush_gate {
  // 1 while the producer is inside user code and will not touch the port. Stored by the
  // producer: release on entry (its port writes are visible to a flusher that reads 1, SYNC
  // POINT with the flusher's acquire load), relaxed on exit (ordered by the barrier below).
  std::atomic<std::uint32_t> in_user{0};
  // 1 while the flusher claims the port. Stored by the flusher (relaxed before its heavy
  // barrier, release when done: SYNC POINT with the producer's acquire load on exit, which
  // makes what the flusher published visible to the producer).
  std::atomic<std::uint32_t> flusher_owns{0};
  // Slots the producer published so far. Relaxed, stored once per slot: the flusher only
  // compares it between ticks to see that the producer is publishing by itself (full rate),
  // and then leaves it alone without claiming anything.
  std::atomic<std::uint64_t> published{0};
  // The producer needs only a compiler barrier on exit: membarrier() is available, or there is
  // no flusher at all. Otherwise both sides use a full fence. Written once, by the producer
  // thread, when its flusher starts (before the producer's next bracket).
  bool asymmetric = true;
};
// Room an item of `n` encoded bytes needs in a slot (see write_cursor).
constexpr std::size_t slot_cost(std::size_t n) noexcept { return n + (n == 0); }

// Producer side. One per producing replica, used by one thread.
class output_port {
 public:
  static constexpr std::size_t any_lane = std::numeric_limits<std::size_t>::max();

  virtual ~output_port() = default;

  // Space for one item of `n` bytes (n <= max_item_bytes()) in the slot open for the current
  // lane, chosen by the dispatch policy. May block while every eligible ring is full.
  std::byte* reserve(std::size_t n) {
    if (slot_cost(n) <= static_cast<std::size_t>(current_->end - current_->pos)) return current_->pos;
    return reserve_slow(any_lane, n);
  }
  // Commits the item written at the pointer reserve() returned.
  void commit(std::size_t n) noexcept {
    current_->pos += n;
    current_->end -= (n == 0);  // a zero-byte item still takes one unit of room
    ++current_->items;
  }

  // The same for an explicit lane (key-hash dispatch: the caller picked the consumer).
  // Precondition: lane < lane_count() (unchecked: this is the per-item path).
  std::byte* reserve_lane(std::size_t lane, std::size_t n) {
    write_cursor& c = cursors_[lane];
    if (slot_cost(n) <= static_cast<std::size_t>(c.end - c.pos)) return c.pos;
    return reserve_slow(lane, n);
  }
  void commit_lane(std::size_t lane, std::size_t n) noexcept {
    write_cursor& c = cursors_[lane];
    c.pos += n;
    c.end -= (n == 0);
    ++c.items;
  }

  // Bulk path for fixed-size items of at least one byte: all the room left in the current slot
  // (at least `min_bytes`, which must be > 0).
  std::span<std::byte> reserve_bulk(std::size_t min_bytes) {
    if (min_bytes > static_cast<std::size_t>(current_->end - current_->pos)) reserve_slow(any_lane, min_bytes);
    return {current_->pos, current_->end};
  }
  void commit_bulk(std::size_t bytes, std::uint32_t items) noexcept {
    current_->pos += bytes;
    current_->items += items;
  }

  // The flusher hand-off for user code that runs between items (see user_code_gate).
  flush_gate& gate() noexcept { return *gate_; }
  // True when the latency bound is 0: every item is published as soon as it is written.
  bool publish_each_item() const noexcept { return publish_each_item_; }

  // Largest item that fits one slot; larger ones go through write_large(). A slot also holds at
  // most this many items (see write_cursor).
  std::size_t max_item_bytes() const noexcept { return max_item_bytes_; }
  std::size_t lane_count() const noexcept { return lane_count_; }

  // Sends one item of any size whose encoding is `parts` back to back, split over as many slots
  // as it needs: each part is copied once, straight into the slots (a codec whose encoding is a
  // short head and the object's own bytes, such as std::string, needs no encode buffer).
  virtual void write_large_parts(std::size_t lane, std::span<const std::span<const std::byte>> parts) = 0;
  // The same for an item already encoded in one piece.
  void write_large(std::size_t lane, std::span<const std::byte> item) {
    const std::span<const std::byte> one[] = {item};
    write_large_parts(lane, one);
  }
  // Items committed from now on derive from the input batch `meta`.
  virtual void begin_batch(const batch_meta& meta) = 0;
  // The input batch is done. For ordered output this publishes its last slot (even an empty
  // one, so the consumer sees no gap in sequence numbers); otherwise slots keep filling.
  virtual void end_batch() = 0;
  // Publishes every partly filled slot.
  virtual void flush() = 0;
  // Flushes and marks end of stream on every lane. Idempotent.
  virtual void close() = 0;

 protected:
  // Publishes the full slot of `lane` (any_lane: the current one), opens a slot with room for
  // `n` bytes (blocking while needed), points current_ / cursors_ at it and returns its start.
  virtual std::byte* reserve_slow(std::size_t lane, std::size_t n) = 0;

  write_cursor* cursors_ = nullptr;  // one per lane
  write_cursor* current_ = nullptr;  // cursor of the lane batch dispatch writes to
  std::size_t lane_count_ = 0;
  std::size_t max_item_bytes_ = 0;
  flush_gate* gate_ = nullptr;  // never null once constructed
  bool publish_each_item_ = false;
};

// Brackets user code that runs between items (a generator call, a stage's batch): between
// enter() and leave() the flusher may publish the port's open slots. Take one per loop, not per
// item: it keeps the gate in registers, so a bracket costs two stores and a load.
class user_code_gate {
 public:
  explicit user_code_gate(output_port& out) noexcept : gate_(&out.gate()), asymmetric_(out.gate().asymmetric) {}
  void enter() const noexcept { gate_->in_user.store(1, std::memory_order_release); }
  void leave() const noexcept {
    gate_->in_user.store(0, std::memory_order_relaxed);
    // SYNC POINT (store-load, the producer's half of the Dekker handshake): our in_user = 0 is
    // ordered before reading flusher_owns, either by the flusher's membarrier() (which acts as a
    // full fence on this thread) plus a compiler barrier here, or by a full fence.
    if (asymmetric_) {
      std::atomic_signal_fence(std::memory_order_seq_cst);
    } else {
      std::atomic_thread_fence(std::memory_order_seq_cst);
    }
    if (gate_->flusher_owns.load(std::memory_order_acquire) != 0) wait_for_flusher();
  }

 private:
  void wait_for_flusher() const noexcept {
    while (gate_->flusher_owns.load(std::memory_order_acquire) != 0) std::this_thread::yield();
  }
  flush_gate* gate_;
  bool asymmetric_;
};

// gate.enter() for a scope, gate.leave() on every way out of it (exceptions included).
class user_code_scope {
 public:
  explicit user_code_scope(const user_code_gate& gate) noexcept : gate_(gate) { gate_.enter(); }
  ~user_code_scope() { gate_.leave(); }
  user_code_scope(const user_code_scope&) = delete;
  user_code_scope& operator=(const user_code_scope&) = delete;

 private:
  const user_code_gate& gate_;
};

// The encoding of one item larger than a slot, read in order straight from the slots it was
// split over (an input port that streams large items; see batch_view::large). One reader per
// input port, used by its consumer thread between receive() and release().
class large_item_reader {
 public:
  // Encoded bytes of the whole item.
  virtual std::uint64_t size() const noexcept = 0;
  // Copies the item's next `n` bytes into `to`, waiting for fragments still on their way.
  // Throws shm_error when reading past the item or when its fragments are corrupt or missing.
  virtual void read(std::byte* to, std::size_t n) = 0;

 protected:
  ~large_item_reader() = default;
};

// One batch as delivered by an input_port: valid until release() or the next receive.
struct batch_view {
  std::span<const std::byte> bytes;  // encoded items, back to back
  std::uint32_t items = 0;
  batch_meta meta;
  bool batch_end = false;            // last batch of meta.seq (ordered streams)
  // Set (with bytes empty and items == 1) when the batch is one item larger than a slot that the
  // port streams instead of reassembling: decode_items() reads it from the slots straight into
  // the item. batch_end is then known once the item was read.
  large_item_reader* large = nullptr;
  std::uint64_t large_bytes = 0;     // its encoded size (bytes.size() otherwise)
};

// Consumer side. One per consuming replica, used by one thread.
class input_port {
 public:
  virtual ~input_port() = default;
  // The next batch if one is ready; never blocks. False when none is (see at_end()).
  virtual bool try_receive(batch_view& out) = 0;
  // The next batch, sleeping while none is ready. False at end of stream: every producer
  // closed and everything was delivered; later calls keep returning false.
  virtual bool receive(batch_view& out) = 0;
  // Done with the batch last delivered: its slot goes back to its producer.
  virtual void release() = 0;
  virtual bool at_end() const = 0;
};

}  // namespace procflow::detail

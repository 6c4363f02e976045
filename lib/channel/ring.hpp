// Ring: a single-producer/single-consumer lock-free ring of fixed-size slots in shared memory.
//
// RingShared is the shared layout (plain, fixed-size, pointer-free); RingWriter and RingReader
// are the process-local handles of its one producer and one consumer. The handles never block
// and never make a system call: blocking is layered on top (Outbox/Inbox with an Event).
//
// Indices are free-running 64-bit counters of slots ever published (tail) and released
// (head); slot = index & (slot_count - 1). Unsigned subtraction keeps `tail - head` right
// across wrap-around at 2^64, which is why slot_count must be a power of two.
//
//   RingShared (at a cache-line aligned offset)
//   +------------------+------------------+------------------+----------------------------+
//   | geometry (const) | tail, closed     | head             | slot 0 | slot 1 | ...       |
//   | line 0           | line 1: producer | line 2: consumer | SlotHeader + payload each  |
//   +------------------+------------------+------------------+----------------------------+
#pragma once

#include "shm/segment.hpp"

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace procflow::channel {

inline constexpr std::uint64_t ring_magic = 0x474e4952464f5250ULL;  // "PROFRING"

// Bits of SlotHeader::flags.
enum SlotFlags : std::uint32_t {
  slot_dense = 1u << 0,          // items are consecutive source items from first_item on
  slot_batch_end = 1u << 1,      // last slot of batch `seq` (ordered streams)
  slot_fragment = 1u << 2,       // part of one item larger than a slot
  slot_fragment_last = 1u << 3,  // last part of such an item
};

// Metadata at the start of every slot; the payload (encoded items) follows.
struct SlotHeader {
  std::uint32_t bytes;       // payload bytes used
  std::uint32_t items;       // items in the payload (0 in a fragment slot but the last, which says 1)
  std::uint64_t seq;         // sequence number of the source batch these items derive from
  std::uint64_t first_item;  // source position of the first item, meaningful with slot_dense
  std::uint64_t large_total; // total bytes of a fragmented item (first fragment only)
  std::uint32_t flags;       // SlotFlags
  // pf::restart (runtime/redelivery.hpp): the producer's input batch these items derive from —
  // its input ring (no_origin_lane: a chunk of a splittable source) and that ring's slot index
  // (or the chunk number) — and this slot's number among that batch's output slots (1, 2, ...;
  // 0: not stamped). A replacement producer reads them back from the last slot of each ring.
  std::uint32_t origin_lane;
  std::uint64_t origin;
  std::uint64_t origin_slot;
  // A fragment of a stamped source slot (a restartable generator's item larger than a slot): its
  // number among the item's fragments (1, 2, ...); 0 in any other slot.
  std::uint64_t origin_fragment;
};
static_assert(std::is_standard_layout_v<SlotHeader> && std::is_trivially_copyable_v<SlotHeader>);
static_assert(sizeof(SlotHeader) == 64);
inline constexpr std::uint32_t no_origin_lane = 0xffffffffu;

inline constexpr std::size_t slot_header_bytes = 64;  // payload starts 64-byte aligned
static_assert(sizeof(SlotHeader) <= slot_header_bytes);

struct RingShared {
  // --- line 0: geometry, written once by the creator before any fork, read-only after. ---
  // Read by attach_ring() only (once per field), never by the handles: see RingView.
  std::uint64_t magic;
  std::uint32_t slot_count;     // power of two, >= 1
  std::uint32_t payload_bytes;  // usable bytes per slot
  std::uint64_t slot_stride;    // bytes from one slot to the next
  std::uint64_t total_bytes;    // sizeof(RingShared) + slot_count * slot_stride

  // --- line 1: written by the producer only ---
  // Slots published so far. Release-stored by the producer after a slot is filled; acquire-
  // loaded by the consumer before reading the slot (SYNC POINT: slot contents).
  alignas(shm::cache_line) std::atomic<std::uint64_t> tail;
  // Set (release) by the producer after its final tail store: nothing more will come.
  std::atomic<std::uint32_t> closed;

  // --- line 2: written by the consumer only ---
  // Slots released so far. Release-stored by the consumer after it is done with a slot;
  // acquire-loaded by the producer before overwriting it (SYNC POINT: slot reuse).
  alignas(shm::cache_line) std::atomic<std::uint64_t> head;

  // Slots start on the next cache line.
  static constexpr std::size_t bytes_for(std::uint32_t slot_count, std::uint32_t payload_bytes) noexcept;
};
static_assert(std::is_standard_layout_v<RingShared>);
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);
static_assert(std::atomic<std::uint32_t>::is_always_lock_free);
static_assert(offsetof(RingShared, tail) == shm::cache_line, "tail must own the producer's cache line");
static_assert(offsetof(RingShared, head) == 2 * shm::cache_line, "head must own the consumer's cache line");
static_assert(sizeof(RingShared) == 3 * shm::cache_line);

constexpr std::size_t slot_stride_for(std::uint32_t payload_bytes) noexcept {
  return shm::align_up(slot_header_bytes + payload_bytes, 64);
}

constexpr std::size_t RingShared::bytes_for(std::uint32_t slot_count, std::uint32_t payload_bytes) noexcept {
  return sizeof(RingShared) + std::size_t{slot_count} * slot_stride_for(payload_bytes);
}

struct RingGeometry {
  std::uint32_t slot_count = 64;         // power of two
  std::uint32_t payload_bytes = 64 * 1024;
};

// Validates a geometry; throws std::invalid_argument naming the bad field.
void check_geometry(const RingGeometry& g);

// Reserves room for a ring in `layout`; returns its offset.
std::uint64_t reserve_ring(shm::SegmentLayout& layout, const RingGeometry& g);

// A ring as one process sees it: where its shared part lies, and its geometry, validated once
// when attached and kept in process memory from then on. The handles below compute every slot
// address and bound from this copy, never from the shared header, so a peer that rewrites the
// header later cannot move a read or write outside the ring (the header is only read at attach).
struct RingView {
  RingShared* shared = nullptr;
  RingGeometry geometry;
  std::uint64_t slot_stride = 0;  // slot_stride_for(geometry.payload_bytes)
};

// Constructs the ring at `offset` (before fork). `initial_index` lets tests start near 2^64.
RingView create_ring(const shm::Segment& segment, std::uint64_t offset, const RingGeometry& g,
                     std::uint64_t initial_index = 0);

// Resolves and validates a ring at `offset`: magic, geometry, and that the whole ring lies inside
// the segment. Each header field is read from shared memory once. Throws shm_error.
RingView attach_ring(const shm::Segment& segment, std::uint64_t offset);
// The same, and the header must describe exactly `expected` (the geometry the process planned).
RingView attach_ring(const shm::Segment& segment, std::uint64_t offset, const RingGeometry& expected);

// Producer handle. One per ring, used by one thread of one process.
class RingWriter {
 public:
  RingWriter() = default;
  explicit RingWriter(const RingView& ring) noexcept;

  // The slot at tail if the ring has room, else nullptr. Never blocks. Calling it again before
  // publish() returns the same slot. Throws shm_error if the consumer's index is impossible.
  SlotHeader* try_claim();
  // Makes the claimed slot visible to the consumer.
  void publish() noexcept;
  // Marks end of stream (after the final publish()).
  void close() noexcept;

  std::byte* payload(SlotHeader* slot) const noexcept { return reinterpret_cast<std::byte*>(slot) + slot_header_bytes; }
  std::uint32_t payload_bytes() const noexcept { return payload_bytes_; }
  std::uint32_t slot_count() const noexcept { return slot_count_; }
  // Slots published and not yet released. Racy: the consumer moves on concurrently.
  std::uint64_t size_approx() const noexcept;
  bool valid() const noexcept { return ring_ != nullptr; }
  // The slot published last (for a ring never published to: a zeroed slot). Read by a
  // replacement producer (pf::restart) before it writes anything: its predecessor's last slot is
  // never overwritten until then, and the consumer only reads it.
  const SlotHeader* last_published() const noexcept {
    return reinterpret_cast<const SlotHeader*>(slots_ + ((tail_ - 1) & (slot_count_ - 1)) * slot_stride_);
  }
  // The producer closed the ring (a replacement finds its predecessor's closed lanes).
  bool closed() const noexcept { return ring_->closed.load(std::memory_order_acquire) != 0; }

 private:
  RingShared* ring_ = nullptr;
  std::byte* slots_ = nullptr;
  // Geometry: process-local copies, validated at attach (RingView); never re-read from shm.
  std::uint32_t slot_count_ = 0;
  std::uint32_t payload_bytes_ = 0;
  std::uint64_t slot_stride_ = 0;
  std::uint64_t tail_ = 0;        // our own index: only we write ring_->tail
  std::uint64_t head_cache_ = 0;  // last head we read; refreshed only when the ring looks full
};

// Consumer handle. One per ring, used by one thread of one process.
class RingReader {
 public:
  RingReader() = default;
  explicit RingReader(const RingView& ring) noexcept;

  // The slot at head if one is published, else nullptr. Never blocks. Throws shm_error if the
  // producer's index or the slot header is impossible (corrupt or hostile peer).
  const SlotHeader* try_peek();
  // Gives the peeked slot back to the producer.
  void release() noexcept;
  // Deferred release (pf::restart keeps the fragments of a split item until it was processed):
  // step() moves past the peeked slot without giving it back; release_stepped() gives back every
  // slot stepped past. Until then a replacement consumer would read them again.
  void step() noexcept { ++head_; }
  void release_stepped() noexcept;
  // Index of the slot at the head (the next one peeked), as a free-running counter.
  std::uint64_t head_index() const noexcept { return head_; }
  std::uint32_t slot_count() const noexcept { return slot_count_; }
  // True once the producer closed the ring and every slot was released: end of stream.
  bool drained() const noexcept;
  // True once the producer closed the ring (slots may still be waiting to be read).
  bool closed() const noexcept;

  const std::byte* payload(const SlotHeader* slot) const noexcept {
    return reinterpret_cast<const std::byte*>(slot) + slot_header_bytes;
  }
  std::uint32_t payload_bytes() const noexcept { return payload_bytes_; }
  std::uint64_t size_approx() const noexcept;
  bool valid() const noexcept { return ring_ != nullptr; }

 private:
  RingShared* ring_ = nullptr;
  const std::byte* slots_ = nullptr;
  // Geometry: process-local copies, validated at attach (RingView); never re-read from shm.
  std::uint32_t slot_count_ = 0;
  std::uint32_t payload_bytes_ = 0;
  std::uint64_t slot_stride_ = 0;
  std::uint64_t head_ = 0;        // our own index: only we write ring_->head
  std::uint64_t tail_cache_ = 0;  // last tail we read; refreshed only when the ring looks empty
};

}  // namespace procflow::channel

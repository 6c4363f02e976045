#include "channel/ring.hpp"

#include <fmt/format.h>

#include <bit>
#include <new>
#include <stdexcept>

namespace procflow::channel {

void check_geometry(const RingGeometry& g) {
  if (g.slot_count == 0 || !std::has_single_bit(g.slot_count))
    throw std::invalid_argument(fmt::format("ring slot_count must be a power of two >= 1, got {}", g.slot_count));
  if (g.payload_bytes < 64 || g.payload_bytes > (1u << 30))
    throw std::invalid_argument(fmt::format("ring payload_bytes must be in [64, 2^30], got {}", g.payload_bytes));
}

std::uint64_t reserve_ring(shm::SegmentLayout& layout, const RingGeometry& g) {
  check_geometry(g);
  return layout.add(RingShared::bytes_for(g.slot_count, g.payload_bytes), shm::cache_line);
}

RingView create_ring(const shm::Segment& segment, std::uint64_t offset, const RingGeometry& g,
                     std::uint64_t initial_index) {
  check_geometry(g);
  const std::size_t bytes = RingShared::bytes_for(g.slot_count, g.payload_bytes);
  auto* ring = new (segment.at<std::byte>(offset, bytes)) RingShared{};
  ring->magic = ring_magic;
  ring->slot_count = g.slot_count;
  ring->payload_bytes = g.payload_bytes;
  ring->slot_stride = slot_stride_for(g.payload_bytes);
  ring->total_bytes = bytes;
  // Relaxed: no other process exists yet; fork() publishes everything written before it.
  ring->tail.store(initial_index, std::memory_order_relaxed);
  ring->head.store(initial_index, std::memory_order_relaxed);
  ring->closed.store(0, std::memory_order_relaxed);
  return {ring, g, slot_stride_for(g.payload_bytes)};
}

namespace {

// Reads one header field exactly once (volatile: the compiler may not re-load it later from
// shared memory, where a peer may have changed it since it was checked).
template <class T>
T read_once(const T& field) noexcept {
  return *static_cast<const volatile T*>(&field);
}

}  // namespace

RingView attach_ring(const shm::Segment& segment, std::uint64_t offset) {
  const auto* ring = segment.at<RingShared>(offset);
  const std::uint64_t magic = read_once(ring->magic);
  if (magic != ring_magic) throw shm_error(fmt::format("ring at offset {}: bad magic {:#x}", offset, magic));
  const RingGeometry g{read_once(ring->slot_count), read_once(ring->payload_bytes)};
  const std::uint64_t stride = read_once(ring->slot_stride);
  const std::uint64_t total = read_once(ring->total_bytes);
  try {
    check_geometry(g);
  } catch (const std::invalid_argument& e) {
    throw shm_error(fmt::format("ring at offset {}: {}", offset, e.what()));
  }
  if (stride != slot_stride_for(g.payload_bytes) || total != RingShared::bytes_for(g.slot_count, g.payload_bytes))
    throw shm_error(fmt::format("ring at offset {}: inconsistent stride {} / size {}", offset, stride, total));
  segment.at<std::byte>(offset, total);  // the whole ring must lie inside the segment
  return {const_cast<RingShared*>(ring), g, stride};
}

RingView attach_ring(const shm::Segment& segment, std::uint64_t offset, const RingGeometry& expected) {
  RingView view = attach_ring(segment, offset);
  if (view.geometry.slot_count != expected.slot_count || view.geometry.payload_bytes != expected.payload_bytes)
    throw shm_error(fmt::format("ring at offset {}: header says {} slots of {} bytes, the plan {} of {}", offset,
                                view.geometry.slot_count, view.geometry.payload_bytes, expected.slot_count,
                                expected.payload_bytes));
  return view;
}

// ---------------------------------------------------------------- RingWriter

RingWriter::RingWriter(const RingView& ring) noexcept
    : ring_(ring.shared),
      slots_(reinterpret_cast<std::byte*>(ring.shared) + sizeof(RingShared)),
      slot_count_(ring.geometry.slot_count),
      payload_bytes_(ring.geometry.payload_bytes),
      slot_stride_(ring.slot_stride),
      // Relaxed: only this process writes tail; head is re-read with acquire before use.
      tail_(ring.shared->tail.load(std::memory_order_relaxed)),
      head_cache_(ring.shared->head.load(std::memory_order_acquire)) {}

SlotHeader* RingWriter::try_claim() {
  const std::uint64_t capacity = slot_count_;
  if (tail_ - head_cache_ >= capacity) {
    // SYNC POINT (slot reuse, acquire): pairs with the consumer's release store of head in
    // RingReader::release(); after it, the consumer no longer reads the slot we overwrite.
    head_cache_ = ring_->head.load(std::memory_order_acquire);
    const std::uint64_t used = tail_ - head_cache_;
    if (used > capacity)
      throw shm_error(fmt::format("ring: consumer index {} is impossible for tail {} and {} slots", head_cache_, tail_, capacity));
    if (used == capacity) return nullptr;
  }
  const std::uint64_t index = tail_ & (capacity - 1);
  return reinterpret_cast<SlotHeader*>(slots_ + index * slot_stride_);
}

void RingWriter::publish() noexcept {
  ++tail_;
  // SYNC POINT (slot contents, release): pairs with the acquire load of tail in
  // RingReader::try_peek(); the slot's header and payload written before are visible after it.
  ring_->tail.store(tail_, std::memory_order_release);
}

void RingWriter::close() noexcept {
  // SYNC POINT (end of stream, release): ordered after the final tail store; pairs with the
  // acquire load of closed in RingReader::drained().
  ring_->closed.store(1, std::memory_order_release);
}

std::uint64_t RingWriter::size_approx() const noexcept {
  // Relaxed: an observer; the value may be stale by the time it is used.
  return tail_ - ring_->head.load(std::memory_order_relaxed);
}

// ---------------------------------------------------------------- RingReader

RingReader::RingReader(const RingView& ring) noexcept
    : ring_(ring.shared),
      slots_(reinterpret_cast<const std::byte*>(ring.shared) + sizeof(RingShared)),
      slot_count_(ring.geometry.slot_count),
      payload_bytes_(ring.geometry.payload_bytes),
      slot_stride_(ring.slot_stride),
      // Relaxed: only this process writes head.
      head_(ring.shared->head.load(std::memory_order_relaxed)),
      // Nothing seen yet: the first try_peek() loads the producer's index (acquire) and checks
      // it against head and the capacity, as every later reload does. Taking the value found
      // at attach unchecked would let a corrupt tail pass as that many published slots.
      tail_cache_(head_) {}

const SlotHeader* RingReader::try_peek() {
  const std::uint64_t capacity = slot_count_;
  if (head_ == tail_cache_) {
    // SYNC POINT (slot contents, acquire): pairs with the release store in RingWriter::publish().
    tail_cache_ = ring_->tail.load(std::memory_order_acquire);
    if (tail_cache_ - head_ > capacity)
      throw shm_error(fmt::format("ring: producer index {} is impossible for head {} and {} slots", tail_cache_, head_, capacity));
    if (head_ == tail_cache_) return nullptr;
  }
  const std::uint64_t index = head_ & (capacity - 1);
  const auto* slot = reinterpret_cast<const SlotHeader*>(slots_ + index * slot_stride_);
  const std::uint32_t bytes = read_once(slot->bytes);
  if (bytes > payload_bytes_)
    throw shm_error(fmt::format("ring: slot {} claims {} payload bytes, slots hold {}", head_, bytes, payload_bytes_));
  return slot;
}

void RingReader::release() noexcept {
  ++head_;
  // SYNC POINT (slot reuse, release): pairs with the acquire load of head in try_claim().
  ring_->head.store(head_, std::memory_order_release);
}

void RingReader::release_stepped() noexcept {
  // SYNC POINT (slot reuse, release): as in release(), for every slot stepped past.
  ring_->head.store(head_, std::memory_order_release);
}

bool RingReader::drained() const noexcept {
  // SYNC POINT (end of stream, acquire): pairs with the release store in RingWriter::close(),
  // which follows the final tail store, so the tail read after it is final.
  if (ring_->closed.load(std::memory_order_acquire) == 0) return false;
  return ring_->tail.load(std::memory_order_acquire) == head_;
}

bool RingReader::closed() const noexcept {
  // SYNC POINT (end of stream, acquire): pairs with the release store in RingWriter::close();
  // after it, the tail (and so every slot this ring will ever hold) is final.
  return ring_->closed.load(std::memory_order_acquire) != 0;
}

std::uint64_t RingReader::size_approx() const noexcept {
  // Relaxed: an observer.
  return ring_->tail.load(std::memory_order_relaxed) - head_;
}

}  // namespace procflow::channel

// Checks lib/channel/ring.hpp in one process: FIFO order, full/empty detection at capacities 1, 2
// and 8, indices that wrap at 2^64, end of stream, and that corrupt shared state (impossible
// indices, oversized slots, bad geometry or magic) is refused rather than followed.
#include "channel/ring.hpp"
#include "channel/channel.hpp"
#include "channel/inbox.hpp"
#include "shm/segment.hpp"

#include <doctest/doctest.h>

#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>

using procflow::shm_error;
using namespace procflow::channel;
namespace shm = procflow::shm;

namespace {

constexpr std::uint64_t near_wrap = std::numeric_limits<std::uint64_t>::max() - 4;  // 2^64 - 5

struct RingFixture {
  shm::SegmentLayout layout;
  std::uint64_t offset;
  shm::Segment segment;
  RingView ring;

  explicit RingFixture(RingGeometry g, std::uint64_t initial_index = 0)
      : offset(reserve_ring(layout, g)), segment(layout), ring(create_ring(segment, offset, g, initial_index)) {}
};

// Writes one 8-byte item into a claimed slot; false if the ring is full.
bool try_push(RingWriter& w, std::uint64_t value) {
  SlotHeader* slot = w.try_claim();
  if (!slot) return false;
  std::memcpy(w.payload(slot), &value, sizeof value);
  slot->bytes = sizeof value;
  slot->items = 1;
  slot->seq = value;
  slot->flags = 0;
  w.publish();
  return true;
}

// Reads and releases one item; false if the ring is empty.
bool try_pop(RingReader& r, std::uint64_t& value) {
  const SlotHeader* slot = r.try_peek();
  if (!slot) return false;
  REQUIRE(slot->bytes == sizeof value);
  REQUIRE(slot->items == 1);
  std::memcpy(&value, r.payload(slot), sizeof value);
  CHECK(slot->seq == value);
  r.release();
  return true;
}

}  // namespace

TEST_CASE("ring: FIFO with full and empty detection at capacities 1, 2 and 8") {
  for (std::uint32_t capacity : {1u, 2u, 8u}) {
    for (std::uint64_t initial : {std::uint64_t{0}, near_wrap}) {
      CAPTURE(capacity);
      CAPTURE(initial);
      RingFixture f({capacity, 64}, initial);
      RingWriter w(f.ring);
      RingReader r(f.ring);
      CHECK(w.slot_count() == capacity);
      CHECK(w.payload_bytes() == 64);

      std::uint64_t value = 0;
      CHECK_FALSE(try_pop(r, value));  // empty at start
      CHECK(r.size_approx() == 0);

      std::uint64_t next_in = 0;
      std::uint64_t next_out = 0;
      // Fill completely, check full, drain completely, check empty; several rounds so the indices
      // pass every slot (and 2^64 when started near it).
      for (int round = 0; round < 5; ++round) {
        for (std::uint32_t i = 0; i < capacity; ++i) REQUIRE(try_push(w, next_in++));
        CHECK(w.size_approx() == capacity);
        CHECK(r.size_approx() == capacity);
        CHECK(w.try_claim() == nullptr);
        CHECK_FALSE(try_push(w, 999));
        for (std::uint32_t i = 0; i < capacity; ++i) {
          REQUIRE(try_pop(r, value));
          CHECK(value == next_out++);
        }
        CHECK_FALSE(try_pop(r, value));
        CHECK(w.size_approx() == 0);
      }
      // Interleaved: one slot frees exactly one claim.
      for (std::uint32_t i = 0; i < capacity; ++i) REQUIRE(try_push(w, next_in++));
      for (int k = 0; k < 20; ++k) {
        CHECK(w.try_claim() == nullptr);
        REQUIRE(try_pop(r, value));
        CHECK(value == next_out++);
        REQUIRE(try_push(w, next_in++));
      }
      CHECK(f.ring.shared->tail.load() - f.ring.shared->head.load() == capacity);
      CHECK(f.ring.shared->tail.load() == initial + next_in);              // wraps modulo 2^64
      if (initial == near_wrap) CHECK(f.ring.shared->tail.load() < 1000);  // it really crossed 2^64
    }
  }
}

TEST_CASE("ring: claiming twice before publish returns the same slot") {
  RingFixture f({4, 128});
  RingWriter w(f.ring);
  RingReader r(f.ring);
  SlotHeader* a = w.try_claim();
  REQUIRE(a != nullptr);
  CHECK(w.try_claim() == a);
  CHECK(r.try_peek() == nullptr);  // nothing published yet
  a->bytes = 0;
  a->items = 0;
  w.publish();
  CHECK(r.try_peek() == a);
  CHECK(r.try_peek() == a);  // peek does not consume
  SlotHeader* b = w.try_claim();
  CHECK(b != a);
  CHECK(reinterpret_cast<std::byte*>(b) - reinterpret_cast<std::byte*>(a) ==
        static_cast<std::ptrdiff_t>(slot_stride_for(128)));
}

TEST_CASE("ring: end of stream after close and the last release") {
  RingFixture f({2, 64}, near_wrap + 3);
  RingWriter w(f.ring);
  RingReader r(f.ring);
  CHECK_FALSE(r.drained());
  REQUIRE(try_push(w, 1));
  REQUIRE(try_push(w, 2));
  w.close();
  std::uint64_t value = 0;
  CHECK_FALSE(r.drained());  // closed, but two slots still to read
  REQUIRE(try_pop(r, value));
  CHECK_FALSE(r.drained());
  REQUIRE(try_pop(r, value));
  CHECK(value == 2);
  CHECK(r.drained());
  CHECK_FALSE(try_pop(r, value));
  CHECK(r.drained());
}

TEST_CASE("ring: the whole ring of a channel starts at initial_index") {
  shm::SegmentLayout layout;
  Channel ch(layout, 2, 3, {4, 256});
  shm::Segment segment(layout);
  ch.create(segment, near_wrap);
  for (std::uint32_t p = 0; p < 2; ++p)
    for (std::uint32_t q = 0; q < 3; ++q) {
      CHECK(ch.ring(p, q).shared->head.load() == near_wrap);
      CHECK(ch.ring(p, q).shared->tail.load() == near_wrap);
      CHECK(ch.ring(p, q).geometry.slot_count == 4);
    }
  CHECK_THROWS_AS(ch.ring(2, 0), std::out_of_range);
  CHECK_THROWS_AS(ch.ring(0, 3), std::out_of_range);
  CHECK_THROWS_AS(ch.data_event(3), std::out_of_range);
  CHECK_THROWS_AS(ch.space_event(2), std::out_of_range);
}

TEST_CASE("ring: an impossible consumer index is refused by the producer") {
  RingFixture f({4, 64}, near_wrap);
  RingWriter w(f.ring);
  for (std::uint64_t i = 0; i < 4; ++i) REQUIRE(try_push(w, i));
  // The ring is full, so the producer re-reads head: make it claim the consumer is ahead of us.
  f.ring.shared->head.store(f.ring.shared->tail.load() + 1);
  CHECK_THROWS_WITH_AS(w.try_claim(), doctest::Contains("consumer index"), shm_error);
  // ... or so far behind that more than capacity slots would be in use.
  f.ring.shared->head.store(f.ring.shared->tail.load() - 5);
  CHECK_THROWS_AS(w.try_claim(), shm_error);
}

TEST_CASE("ring: an impossible producer index is refused by the consumer") {
  RingFixture f({4, 64}, near_wrap);
  RingReader r(f.ring);
  SUBCASE("more than capacity published") {
    f.ring.shared->tail.store(f.ring.shared->head.load() + 5);
    CHECK_THROWS_WITH_AS(r.try_peek(), doctest::Contains("producer index"), shm_error);
  }
  SUBCASE("tail behind head") {
    f.ring.shared->tail.store(f.ring.shared->head.load() - 1);
    CHECK_THROWS_AS(r.try_peek(), shm_error);
  }
}

TEST_CASE("ring: a slot claiming more bytes than its payload is refused") {
  RingFixture f({2, 256});
  RingWriter w(f.ring);
  RingReader r(f.ring);
  SlotHeader* slot = w.try_claim();
  REQUIRE(slot != nullptr);
  slot->bytes = 257;
  slot->items = 1;
  w.publish();
  CHECK_THROWS_WITH_AS(r.try_peek(), doctest::Contains("payload bytes"), shm_error);
  slot->bytes = 256;  // exactly full is fine
  CHECK(r.try_peek() == slot);
}

// Zero-byte items make 4 items in 3 bytes legitimate; the bound is the slot's capacity (every item
// takes at least one unit of room, see write_cursor): more than 128 items in a 128-byte slot.
TEST_CASE("ring: the Inbox refuses a slot with more items than it can hold") {
  shm::SegmentLayout layout;
  Channel ch(layout, 1, 1, {2, 128});
  shm::Segment segment(layout);
  ch.create(segment);
  RingWriter w(ch.ring(0, 0));
  SlotHeader* slot = w.try_claim();
  REQUIRE(slot != nullptr);
  slot->bytes = 3;
  slot->items = 129;
  slot->flags = 0;
  w.publish();
  Inbox in(ch, 0);
  procflow::detail::batch_view b;
  CHECK_THROWS_AS(in.try_receive(b), shm_error);
}

TEST_CASE("ring: bad geometry is std::invalid_argument") {
  shm::SegmentLayout layout;
  CHECK_THROWS_AS(check_geometry({0, 1024}), std::invalid_argument);
  CHECK_THROWS_AS(check_geometry({3, 1024}), std::invalid_argument);
  CHECK_THROWS_AS(check_geometry({12, 1024}), std::invalid_argument);
  CHECK_THROWS_AS(check_geometry({(1u << 31) + 1, 1024}), std::invalid_argument);
  CHECK_THROWS_AS(check_geometry({4, 63}), std::invalid_argument);
  CHECK_THROWS_AS(check_geometry({4, (1u << 30) + 1}), std::invalid_argument);
  CHECK_NOTHROW(check_geometry({1, 64}));
  CHECK_NOTHROW(check_geometry({1u << 20, 100}));  // payload need not be a power of two
  CHECK_THROWS_AS(reserve_ring(layout, {6, 1024}), std::invalid_argument);
  CHECK_THROWS_AS(Channel(layout, 1, 1, {5, 1024}), std::invalid_argument);
  CHECK_THROWS_AS(Channel(layout, 0, 1, {4, 1024}), std::invalid_argument);
  CHECK_THROWS_AS(Channel(layout, 1, 0, {4, 1024}), std::invalid_argument);

  const auto offset = reserve_ring(layout, {4, 1024});
  const shm::Segment segment(layout);
  CHECK_THROWS_AS(create_ring(segment, offset, {7, 1024}), std::invalid_argument);
}

TEST_CASE("ring: attach validates magic, geometry and extent") {
  RingFixture f({4, 1024});
  CHECK(attach_ring(f.segment, f.offset).shared == f.ring.shared);
  RingShared& ring = *f.ring.shared;
  const auto magic = ring.magic;
  const auto slot_count = ring.slot_count;
  const auto slot_stride = ring.slot_stride;
  const auto total_bytes = ring.total_bytes;

  SUBCASE("magic") {
    ring.magic ^= 1;
    CHECK_THROWS_WITH_AS(attach_ring(f.segment, f.offset), doctest::Contains("bad magic"), shm_error);
  }
  SUBCASE("slot count not a power of two") {
    ring.slot_count = 3;
    CHECK_THROWS_AS(attach_ring(f.segment, f.offset), shm_error);  // not invalid_argument: it is shm
  }
  SUBCASE("inconsistent stride") {
    ring.slot_stride += 64;
    CHECK_THROWS_WITH_AS(attach_ring(f.segment, f.offset), doctest::Contains("inconsistent"), shm_error);
  }
  SUBCASE("a consistent geometry that does not fit the segment") {
    ring.slot_count = 1u << 20;
    ring.total_bytes = RingShared::bytes_for(ring.slot_count, ring.payload_bytes);
    CHECK_THROWS_WITH_AS(attach_ring(f.segment, f.offset), doctest::Contains("outside"), shm_error);
  }
  SUBCASE("offset outside the segment or misaligned") {
    CHECK_THROWS_AS(attach_ring(f.segment, f.segment.size()), shm_error);
    CHECK_THROWS_AS(attach_ring(f.segment, f.offset + 8), shm_error);  // misaligned or bad magic
  }
  ring.magic = magic;
  ring.slot_count = slot_count;
  ring.slot_stride = slot_stride;
  ring.total_bytes = total_bytes;
  CHECK_NOTHROW(attach_ring(f.segment, f.offset));
}

TEST_CASE("ring: the Inbox refuses seq_stride 0") {
  shm::SegmentLayout layout;
  Channel ch(layout, 1, 1, {2, 128});
  shm::Segment segment(layout);
  ch.create(segment);
  InboxOptions options;
  options.ordered = true;
  options.seq_stride = 0;
  CHECK_THROWS_AS(Inbox(ch, 0, options), std::invalid_argument);
}

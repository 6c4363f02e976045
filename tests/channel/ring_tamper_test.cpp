// Checks lib/channel/ring.hpp against a hostile peer (issue 13, point 4): the ring's geometry is
// validated once at attach and kept process-local, so rewriting the shared header afterwards
// (slot_count, payload_bytes, slot_stride, total_bytes) or a slot header cannot move any read or
// write of a RingWriter, RingReader, Outbox or Inbox outside the ring. Errors are shm_error,
// never a crash (run it under the asan preset to see that no access leaves the segment).
#include "channel/channel.hpp"
#include "channel/inbox.hpp"
#include "channel/outbox.hpp"
#include "channel/ring.hpp"

#include <doctest/doctest.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

using namespace procflow;
using namespace procflow::channel;

namespace {

constexpr RingGeometry small{4, 256};  // a 4-slot ring of 256-byte payloads: a few KiB

// One channel of one ring in a segment of its own, with the writer and reader attached first.
struct Attached {
  shm::SegmentLayout layout;
  Channel channel{layout, 1, 1, small};
  shm::Segment segment{layout};
  RingShared* shared = nullptr;
  const std::byte* begin = nullptr;  // the segment's bytes
  const std::byte* end = nullptr;

  Attached() {
    channel.create(segment);
    shared = channel.ring(0, 0).shared;
    begin = segment.at<std::byte>(0, segment.size());
    end = begin + segment.size();
  }
  bool inside(const void* p, std::size_t bytes) const {
    const auto* b = static_cast<const std::byte*>(p);
    return b >= begin && b + bytes <= end;
  }
  // What a hostile peer may write into the ring's geometry line after everybody attached.
  void tamper_geometry() {
    shared->slot_count = 1u << 31;
    shared->payload_bytes = 1u << 29;   // 512 MiB slots in a segment of a few KiB
    shared->slot_stride = 1ull << 40;   // the next slot 1 TiB away
    shared->total_bytes = 1ull << 50;
  }
};

bool push(RingWriter& w, std::uint64_t value) {
  SlotHeader* slot = w.try_claim();
  if (!slot) return false;
  std::memcpy(w.payload(slot), &value, sizeof value);
  slot->bytes = sizeof value;
  slot->items = 1;
  slot->seq = 0;
  slot->first_item = 0;
  slot->large_total = 0;
  slot->flags = 0;
  w.publish();
  return true;
}

}  // namespace

TEST_CASE("ring tamper: a rewritten geometry does not move the writer's slots or bounds") {
  Attached a;
  RingWriter w(a.channel.ring(0, 0));
  a.tamper_geometry();
  CHECK(w.slot_count() == small.slot_count);
  CHECK(w.payload_bytes() == small.payload_bytes);
  // Every slot the writer hands out, over several laps, lies inside the segment with its payload.
  for (std::uint64_t i = 0; i < 4 * small.slot_count; ++i) {
    SlotHeader* slot = w.try_claim();
    if (!slot) {
      // Full: the writer must see exactly slot_count in flight (its own count), then the peer
      // frees one (head is the one field the consumer legitimately writes).
      CHECK(w.size_approx() == small.slot_count);
      a.shared->head.fetch_add(1);
      slot = w.try_claim();
    }
    REQUIRE(slot != nullptr);
    CHECK(a.inside(slot, slot_header_bytes + w.payload_bytes()));
    slot->bytes = 0;
    slot->items = 0;
    w.publish();
  }
}

TEST_CASE("ring tamper: a rewritten geometry does not move the reader's slots or bounds") {
  Attached a;
  RingWriter w(a.channel.ring(0, 0));
  RingReader r(a.channel.ring(0, 0));
  std::uint64_t value = 0;
  for (std::uint64_t lap = 0; lap < 3 * small.slot_count; ++lap) {
    REQUIRE(push(w, lap));
    if (lap == 1) a.tamper_geometry();  // after attach and after traffic started
    const SlotHeader* slot = r.try_peek();
    REQUIRE(slot != nullptr);
    CHECK(a.inside(slot, slot_header_bytes + small.payload_bytes));
    std::memcpy(&value, r.payload(slot), sizeof value);
    CHECK(value == lap);
    r.release();
  }
  CHECK(r.payload_bytes() == small.payload_bytes);

  SUBCASE("a slot claiming a 512 MiB payload is refused against the attached geometry") {
    SlotHeader* slot = w.try_claim();
    REQUIRE(slot != nullptr);
    slot->bytes = 1u << 29;  // fits the tampered payload_bytes, not the real one
    slot->items = 1;
    w.publish();
    CHECK_THROWS_AS(r.try_peek(), shm_error);
  }
  SUBCASE("more slots published than the attached capacity is refused") {
    // The tampered slot_count (2^31) would accept this; the attached one (4) does not.
    a.shared->tail.store(a.shared->head.load() + small.slot_count + 1);
    CHECK_THROWS_AS(r.try_peek(), shm_error);
  }
  SUBCASE("the writer does not take the consumer's index as room the ring does not have") {
    for (std::uint32_t i = 0; i < small.slot_count; ++i) REQUIRE(push(w, i));
    CHECK(w.try_claim() == nullptr);  // full by the attached capacity, whatever slot_count says
  }
  SUBCASE("re-attaching the tampered ring is refused") {
    CHECK_THROWS_AS(a.channel.ring(0, 0), shm_error);
  }
}

TEST_CASE("ring tamper: Outbox and Inbox keep the geometry they attached with") {
  Attached a;
  Outbox out(a.channel, 0);
  Inbox in(a.channel, 0);
  a.tamper_geometry();

  SUBCASE("traffic still flows inside the segment") {
    // Items up to the attached payload size go through; the tampered 512 MiB is not offered.
    std::string item(small.payload_bytes - 16, 'x');
    for (int i = 0; i < 3; ++i) {
      std::byte* p = out.reserve(item.size());
      std::memcpy(p, item.data(), item.size());
      out.commit(item.size());
      out.flush();
      procflow::detail::batch_view b;
      REQUIRE(in.try_receive(b));
      CHECK(b.bytes.size() == item.size());
      CHECK(a.inside(b.bytes.data(), b.bytes.size()));
      in.release();
    }
    CHECK_THROWS(out.reserve(std::size_t{1} << 20));  // larger than the attached slot: refused
  }
  SUBCASE("a slot header rewritten after delivery does not change the delivered batch") {
    std::byte* p = out.reserve(8);
    std::memset(p, 7, 8);
    out.commit(8);
    out.flush();
    procflow::detail::batch_view b;
    REQUIRE(in.try_receive(b));
    // The peer rewrites the slot it sent while the consumer reads it: bytes and items were
    // snapshot and checked once, so the batch the consumer holds stays what was validated.
    auto* slot = reinterpret_cast<SlotHeader*>(const_cast<std::byte*>(b.bytes.data()) - slot_header_bytes);
    slot->bytes = 1u << 29;
    slot->items = 1u << 30;
    CHECK(b.bytes.size() == 8);
    CHECK(b.items == 1);
    CHECK(a.inside(b.bytes.data(), b.bytes.size()));
    in.release();
  }
  SUBCASE("a slot claiming more bytes than the attached payload is shm_error") {
    RingWriter w(RingView{a.shared, small, slot_stride_for(small.payload_bytes)});
    SlotHeader* slot = w.try_claim();
    REQUIRE(slot != nullptr);
    slot->bytes = 1u << 29;
    slot->items = 1;
    slot->flags = 0;
    w.publish();
    procflow::detail::batch_view b;
    CHECK_THROWS_AS(in.try_receive(b), shm_error);
  }
}

// Found by tests/fuzz/shm_fuzz: the reader took the producer's index it found at attach as the
// number of published slots without checking it, so a ring whose tail was corrupt before the
// consumer attached handed out the same slots over and over (a consumer reassembling a split
// item of empty fragments from them never returned).
TEST_CASE("ring tamper: an impossible producer index found at attach is refused") {
  Attached a;
  a.shared->tail.store(a.shared->head.load() + (std::uint64_t{1} << 40));

  SUBCASE("RingReader") {
    RingReader r(a.channel.ring(0, 0));
    CHECK_THROWS_AS(r.try_peek(), shm_error);
  }
  SUBCASE("Inbox") {
    Inbox in(a.channel, 0);
    procflow::detail::batch_view b;
    CHECK_THROWS_AS(in.try_receive(b), shm_error);
  }
  SUBCASE("an index behind the consumer's") {
    a.shared->tail.store(a.shared->head.load() - 1);
    RingReader r(a.channel.ring(0, 0));
    CHECK_THROWS_AS(r.try_peek(), shm_error);
  }
}

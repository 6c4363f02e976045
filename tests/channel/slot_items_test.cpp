// Checks how lib/channel (Outbox, Inbox) and the output_port fast path of
// include/procflow/detail/port.hpp count items per slot: items that encode to zero bytes travel
// like any other, alone or mixed with 5-byte items, on the dispatched lane and on explicit lanes;
// a slot never holds more items than its payload has bytes; and a slot header whose item count is
// impossible (a corrupt or hostile peer) is rejected before anything is sized by it.
//
// Producer and consumer share one process here (the rings are large enough to hold a whole run),
// which keeps the test cheap and deterministic; channel_test covers the cross-process protocol.
#include "channel/channel.hpp"
#include "channel/inbox.hpp"
#include "channel/outbox.hpp"
#include "shm/segment.hpp"

#include <procflow/detail/stage.hpp>

#include <doctest/doctest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

using namespace procflow::channel;
using procflow::detail::batch_view;
using procflow::detail::output_port;
namespace shm = procflow::shm;

namespace {

constexpr auto any_lane = output_port::any_lane;

// Item k of lane q in a mixed stream: zero bytes, or 5 bytes ('x' and k as 4 bytes). Producer and
// consumer derive the same sequence of sizes from the seed.
struct MixedStream {
  explicit MixedStream(std::uint64_t seed) : rng(seed) {}
  bool next_is_empty() { return rng() % 4 != 0; }  // mostly zero-byte items: many per slot
  std::mt19937_64 rng;
};

void write_item(Outbox& out, std::size_t lane, bool empty, std::uint32_t k) {
  const std::size_t n = empty ? 0 : 5;
  std::byte* p = lane == any_lane ? out.reserve(n) : out.reserve_lane(lane, n);
  if (!empty) {
    p[0] = std::byte{'x'};
    std::memcpy(p + 1, &k, 4);
  }
  if (lane == any_lane) {
    out.commit(n);
  } else {
    out.commit_lane(lane, n);
  }
}

// Reads everything lane `consumer` received and checks it against the stream of `seed`.
// Returns the number of items seen.
std::uint64_t read_and_check(const Channel& ch, std::uint32_t consumer, std::uint64_t seed, std::uint32_t payload_bytes) {
  Inbox in(ch, consumer);
  MixedStream stream(seed);
  std::uint32_t k = 0;
  std::uint64_t items = 0;
  batch_view b;
  while (in.try_receive(b)) {
    CHECK(b.items <= payload_bytes);
    std::size_t pos = 0;
    for (std::uint32_t i = 0; i < b.items; ++i, ++k) {
      CAPTURE(k);
      if (stream.next_is_empty()) continue;
      REQUIRE(pos + 5 <= b.bytes.size());
      CHECK(b.bytes[pos] == std::byte{'x'});
      std::uint32_t got = 0;
      std::memcpy(&got, b.bytes.data() + pos + 1, 4);
      CHECK(got == k);
      pos += 5;
    }
    CHECK(pos == b.bytes.size());
    items += b.items;
    in.release();
  }
  CHECK(in.at_end());
  return items;
}

}  // namespace

TEST_CASE("slot items: zero-byte items alone all arrive, at most payload_bytes per slot") {
  shm::SegmentLayout layout;
  const RingGeometry geometry{64, 64};
  Channel ch(layout, 1, 1, geometry);
  const shm::Segment segment(layout);
  ch.create(segment);
  constexpr std::uint32_t sent = 1000;
  {
    Outbox out(ch, 0);
    for (std::uint32_t k = 0; k < sent; ++k) write_item(out, any_lane, true, k);
    out.close();
    CHECK(out.stats().items == sent);
    CHECK(out.stats().slots >= sent / geometry.payload_bytes);
  }
  Inbox in(ch, 0);
  batch_view b;
  std::uint64_t received = 0;
  while (in.try_receive(b)) {
    CHECK(b.bytes.empty());
    CHECK(b.items >= 1);
    CHECK(b.items <= geometry.payload_bytes);
    received += b.items;
    in.release();
  }
  CHECK(in.at_end());
  CHECK(received == sent);
}

TEST_CASE("slot items: zero-byte items mixed with 5-byte items, dispatched and on explicit lanes") {
  const RingGeometry geometry{64, 256};
  for (const std::uint64_t seed : {1u, 7u, 2024u}) {
    CAPTURE(seed);
    SUBCASE("one lane, reserve/commit") {
      shm::SegmentLayout layout;
      Channel ch(layout, 1, 1, geometry);
      const shm::Segment segment(layout);
      ch.create(segment);
      constexpr std::uint32_t sent = 3000;
      {
        Outbox out(ch, 0);
        MixedStream stream(seed);
        for (std::uint32_t k = 0; k < sent; ++k) write_item(out, any_lane, stream.next_is_empty(), k);
        out.close();
      }
      CHECK(read_and_check(ch, 0, seed, geometry.payload_bytes) == sent);
    }
    SUBCASE("two lanes, reserve_lane/commit_lane (key-hash dispatch)") {
      shm::SegmentLayout layout;
      Channel ch(layout, 1, 2, geometry);
      const shm::Segment segment(layout);
      ch.create(segment);
      constexpr std::uint32_t sent = 1500;  // per lane
      {
        OutboxOptions options;
        options.dispatch = Dispatch::by_key;
        Outbox out(ch, 0, options);
        MixedStream streams[2] = {MixedStream(seed), MixedStream(seed + 1)};
        std::uint32_t next[2] = {0, 0};
        std::mt19937 pick(static_cast<std::uint32_t>(seed));
        for (std::uint32_t i = 0; i < 2 * sent; ++i) {
          std::size_t lane = pick() % 2;
          if (next[lane] == sent) lane = 1 - lane;
          write_item(out, lane, streams[lane].next_is_empty(), next[lane]++);
        }
        out.close();
      }
      CHECK(read_and_check(ch, 0, seed, geometry.payload_bytes) == sent);
      CHECK(read_and_check(ch, 1, seed + 1, geometry.payload_bytes) == sent);
    }
  }
}

TEST_CASE("slot items: an impossible item count in a slot header is rejected before it sizes anything") {
  const RingGeometry geometry{4, 128};
  shm::SegmentLayout layout;
  Channel ch(layout, 1, 1, geometry);
  const shm::Segment segment(layout);
  ch.create(segment);
  {
    Outbox out(ch, 0);
    for (std::uint32_t k = 0; k < 3; ++k) write_item(out, any_lane, false, k);
    out.flush();
  }
  // The peer rewrites the published header's count (a second reader only to find the slot).
  RingReader peek(ch.ring(0, 0));
  auto* header = const_cast<SlotHeader*>(peek.try_peek());
  REQUIRE(header != nullptr);
  REQUIRE(header->items == 3);
  REQUIRE(header->bytes == 15);

  SUBCASE("more items than the slot has bytes of payload") {
    header->items = geometry.payload_bytes + 1;
    Inbox in(ch, 0);
    batch_view b;
    CHECK_THROWS_WITH_AS(in.try_receive(b), doctest::Contains("slot holds at most 128"), procflow::shm_error);
  }
  SUBCASE("a count near 2^32") {
    header->items = 0xffffffffu;
    Inbox in(ch, 0);
    batch_view b;
    CHECK_THROWS_AS(in.try_receive(b), procflow::shm_error);
  }
  SUBCASE("a count the slot could hold but the bytes do not: decoding fails, sized by the bytes") {
    header->items = geometry.payload_bytes;
    Inbox in(ch, 0);
    batch_view b;
    REQUIRE(in.try_receive(b));
    CHECK(b.items == geometry.payload_bytes);
    procflow::detail::batch_buffer<std::string> strings;
    CHECK_THROWS_AS(procflow::detail::decode_items(b, strings), procflow::codec_error);
    CHECK(strings.capacity() <= b.bytes.size());
    in.release();
  }
}

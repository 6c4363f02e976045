// libFuzzer target: shared-memory attach and slot validation over arbitrary bytes (lib/shm,
// lib/channel/ring.*, lib/channel/inbox.*). A channel is laid out and created in a segment as the
// supervisor does, then everything from its first ring on (ring headers and indices, slot headers,
// payloads, events) is overwritten with the fuzz input, as a corrupt or hostile peer could. Every
// consumer then attaches and drains its rings, decoding what it receives; every producer attaches
// and claims a slot. Every error must be shm_error or codec_error, and every pointer handed out
// (a slot, a batch) must lie inside the consumer's rings, or be the reassembly buffer of a split
// item: the segment is mmap()ed memory that ASan does not watch, so this is checked explicitly.
#include "fuzz/shm_fuzz.hpp"

#include "channel/inbox.hpp"
#include "channel/outbox.hpp"
#include "shm/segment.hpp"

#include <procflow/detail/stage.hpp>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string>
#include <vector>

using namespace procflow;
using namespace procflow::channel;

namespace {

constexpr std::uint64_t max_item_bytes = std::uint64_t{1} << 20;  // the inbox's split-item limit here

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "shm_fuzz: %s\n", what);
  std::abort();
}

struct Range {
  const std::byte* begin;
  const std::byte* end;
  bool holds(const void* p, std::size_t n) const {
    const auto* b = static_cast<const std::byte*>(p);
    return b >= begin && b <= end && n <= static_cast<std::size_t>(end - b);
  }
};

// The slots of each ring of consumer q (rings (p, q) for every p), located before the bytes
// were overwritten: a batch handed to q must lie inside one of them.
struct Slots {
  std::vector<Range> rings;
  bool hold(const void* p, std::size_t n) const {
    for (const Range& r : rings)
      if (r.holds(p, n)) return true;
    return false;
  }
};

template <class T>
void decode_batch(const detail::batch_view& batch) {
  std::vector<T> items;
  try {
    detail::decode_items(batch, items);
  } catch (const codec_error&) {
  }
}

void decode_as(unsigned type, const detail::batch_view& batch) {
  switch (type) {
    case 0: decode_batch<std::string>(batch); break;
    case 1: decode_batch<std::uint64_t>(batch); break;
    case 2: decode_batch<std::vector<std::string>>(batch); break;
    default: decode_batch<std::pair<std::uint32_t, std::optional<std::string>>>(batch); break;
  }
}

// Consumer q drains what the bytes say its rings hold (bounded: a fuzzed index may claim a lot).
void drain(const Channel& channel, std::uint32_t q, const procflow_fuzz::ShmConfig& config, const Slots& slots) {
  InboxOptions options;
  options.ordered = config.ordered;
  options.first_seq = config.ordered ? q : 0;
  options.seq_stride = config.ordered ? config.consumers : 1;
  options.spin = 0;
  options.max_item_bytes = max_item_bytes;
  try {
    Inbox inbox(channel, q, options);
    const std::uint64_t rounds = 4 * std::uint64_t{config.producers} * config.geometry.slot_count + 4;
    for (std::uint64_t i = 0; i < rounds; ++i) {
      detail::batch_view batch;
      if (!inbox.try_receive(batch)) break;
      const bool in_rings = slots.hold(batch.bytes.data(), batch.bytes.size());
      const bool split_item = !in_rings && batch.items == 1 && batch.bytes.size() <= max_item_bytes;
      if (!in_rings && !split_item) {
        std::fprintf(stderr, "shm_fuzz: consumer %u got %u items in %zu bytes at %p, outside its rings\n", q,
                     batch.items, batch.bytes.size(), static_cast<const void*>(batch.bytes.data()));
        fail("a batch lies outside the consumer's rings");
      }
      if (in_rings && batch.bytes.size() > config.geometry.payload_bytes) fail("a batch is larger than a slot");
      if (batch.items > config.geometry.payload_bytes) fail("a batch claims more items than a slot holds");
      decode_as(config.item_type, batch);
      inbox.release();
    }
  } catch (const shm_error&) {
  }
}

// Producer p claims a slot on each of its rings: the slot must lie inside that ring.
void claim(const Channel& channel, std::uint32_t p, std::uint32_t q) {
  try {
    const RingView view = channel.ring(p, q);
    RingWriter writer(view);
    const auto* ring = reinterpret_cast<const std::byte*>(view.shared);
    const Range range{ring, ring + RingShared::bytes_for(view.geometry.slot_count, view.geometry.payload_bytes)};
    if (SlotHeader* slot = writer.try_claim()) {
      if (!range.holds(slot, slot_header_bytes + writer.payload_bytes())) fail("a claimed slot lies outside its ring");
    }
  } catch (const shm_error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < procflow_fuzz::shm_input_header) return 0;
  const procflow_fuzz::ShmConfig config = procflow_fuzz::shm_config(data[0], data[1]);
  const std::span<const std::uint8_t> body{data + procflow_fuzz::shm_input_header, size - procflow_fuzz::shm_input_header};

  shm::SegmentLayout layout;
  Channel channel(layout, config.producers, config.consumers, config.geometry);
  shm::Segment segment(layout);
  channel.create(segment);

  // Where every ring is (ring (0, 0) comes first in the segment), and its geometry line.
  std::byte* const base = segment.base();
  const std::size_t ring_bytes = RingShared::bytes_for(config.geometry.slot_count, config.geometry.payload_bytes);
  std::vector<std::byte*> rings;
  std::vector<Slots> slots(config.consumers);
  for (std::uint32_t p = 0; p < config.producers; ++p) {
    for (std::uint32_t q = 0; q < config.consumers; ++q) {
      auto* ring = reinterpret_cast<std::byte*>(channel.ring(p, q).shared);
      rings.push_back(ring);
      slots[q].rings.push_back({ring + sizeof(RingShared), ring + ring_bytes});
    }
  }
  std::vector<std::byte> geometry_lines(rings.size() * shm::cache_line);
  for (std::size_t r = 0; r < rings.size(); ++r)
    std::memcpy(geometry_lines.data() + r * shm::cache_line, rings[r], shm::cache_line);
  std::byte* const first = rings.front();
  const std::size_t room = segment.size() - static_cast<std::size_t>(first - base);
  std::memcpy(first, body.data(), std::min(room, body.size()));
  if (config.keep_geometry) {
    for (std::size_t r = 0; r < rings.size(); ++r)
      std::memcpy(rings[r], geometry_lines.data() + r * shm::cache_line, shm::cache_line);
  }
  if (config.rewrite_segment_header && body.size() >= sizeof(shm::SegmentHeader)) {
    std::memcpy(base, body.data() + body.size() - sizeof(shm::SegmentHeader), sizeof(shm::SegmentHeader));
    try {
      segment.validate();
    } catch (const shm_error&) {
    }
  }

  // An attach anywhere in the first lines of the segment: bounds, alignment, magic, geometry.
  try {
    const RingView view = attach_ring(segment, std::uint64_t{config.extra_attach_line} * 64);
    const auto* ring = reinterpret_cast<const std::byte*>(view.shared);
    if (!Range{base, base + segment.size()}.holds(ring, RingShared::bytes_for(view.geometry.slot_count, view.geometry.payload_bytes)))
      fail("attach_ring accepted a ring that leaves the segment");
  } catch (const shm_error&) {
  }

  for (std::uint32_t q = 0; q < config.consumers; ++q) drain(channel, q, config, slots[q]);
  for (std::uint32_t p = 0; p < config.producers; ++p)
    for (std::uint32_t q = 0; q < config.consumers; ++q) claim(channel, p, q);
  return 0;
}

// Channel: one stage boundary between P producer replicas and Q consumer replicas, built from
// P x Q SPSC rings (every producer has a private ring to every consumer, so no ring ever has two
// writers or two readers) plus one Event per endpoint:
//
//   producer p --ring(p,q)--> consumer q
//   data_event(q):  consumer q sleeps here when all of its P rings are empty; producers notify it
//   space_event(p): producer p sleeps here when the ring it must write is full; consumers notify it
//
// A Channel is a process-local description (offsets into a Segment) computed before fork and
// inherited by every replica; Outbox and Inbox are the handles a replica uses on its side.
#pragma once

#include "channel/event.hpp"
#include "channel/ring.hpp"
#include "shm/segment.hpp"

#include <cstdint>
#include <vector>

namespace procflow::channel {

class Channel {
 public:
  Channel() = default;
  // Reserves room for the rings and events in `layout` (before the segment exists).
  Channel(shm::SegmentLayout& layout, std::uint32_t producers, std::uint32_t consumers, const RingGeometry& geometry);

  // Constructs rings and events inside `segment` (still before fork). `initial_index` starts
  // every ring's indices there (tests use values near 2^64).
  void create(const shm::Segment& segment, std::uint64_t initial_index = 0);

  std::uint32_t producers() const noexcept { return producers_; }
  std::uint32_t consumers() const noexcept { return consumers_; }
  const RingGeometry& geometry() const noexcept { return geometry_; }

  // Validated accessors (bounds and magic checked against the segment). A ring's header must
  // match the planned geometry; the returned view keeps that geometry process-local.
  RingView ring(std::uint32_t producer, std::uint32_t consumer) const;
  EventShared& data_event(std::uint32_t consumer) const;
  EventShared& space_event(std::uint32_t producer) const;

 private:
  const shm::Segment* segment_ = nullptr;
  std::uint32_t producers_ = 0;
  std::uint32_t consumers_ = 0;
  RingGeometry geometry_;
  std::vector<std::uint64_t> ring_offsets_;         // producer-major: [p * consumers + q]
  std::vector<std::uint64_t> data_event_offsets_;   // per consumer
  std::vector<std::uint64_t> space_event_offsets_;  // per producer
};

}  // namespace procflow::channel

#pragma once

#include <atomic>
#include <cstdint>

namespace procflow::channel {

// pf::restart of a generator source: a digest of the items a producer published, kept in shared
// memory (its replica record), so that a replacement that runs the generator again from its start
// can tell whether the items it drops are those that were sent (a generator that reads a socket,
// the clock or a file offset shared with its dead predecessor does not yield the same items
// twice). The hash runs over the encoded bytes as one stream, whatever slots they were cut into
// (the latency flusher cuts by time). Two entries, written alternately: a death while one is
// written leaves the other.
struct ReplayDigest {
  static constexpr std::uint64_t writing = ~std::uint64_t{0};
  struct Entry {
    std::atomic<std::uint64_t> items;  // items folded into `hash`; `writing` while it changes
    std::atomic<std::uint64_t> hash;
  };
  Entry entries[2];
};
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);

// What a restartable generator's dead predecessor had published, read back from the last slot of
// each output ring (faults::find_redelivery), handed to its replacement in its replica record,
// and dropped by count of items by the replacement's Outbox::begin_source_replay.
struct SourceReplay {
  std::uint64_t items = 0;      // items published whole
  std::uint64_t fragments = 0;  // fragments published of the next item (larger than a slot)
  std::uint64_t next_seq = 0;   // the batch number the next new slot gets
  std::uint64_t slots = 0;      // origin_slot of the last slot published
  std::uint32_t lane = 0;       // the output ring the fragments went to
};

}  // namespace procflow::channel

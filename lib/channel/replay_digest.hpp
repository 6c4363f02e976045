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

}  // namespace procflow::channel

// SpanRing: one replica's timeline in shared memory — what it did (busy, starved, blocked) from
// when to when, for the Chrome / Perfetto trace (pf::trace). Laid out only when a trace was asked
// for. Bounded: when it is full, further spans are counted as dropped, not written.
//
// SpanRecorder (process-local, in the replica) turns the replica's cumulative counters, read at
// every batch, into spans: in the interval since its previous reading the replica first waited
// for input (starved), then ran the batch (busy), then waited for room downstream (blocked).
// The lengths are exact; their order within one batch is this model's. Adjacent spans of one
// kind are coalesced, so a long run of small batches gives few, long spans.
#pragma once

#include "shm/segment.hpp"

#include <atomic>
#include <cstdint>
#include <type_traits>

namespace procflow::metrics {

enum class SpanKind : std::uint32_t { busy = 0, starved = 1, blocked = 2 };

struct SpanEvent {
  std::uint64_t start_ns;     // steady clock
  std::uint32_t duration_us;  // microseconds (a longer span is split)
  SpanKind kind;
};
static_assert(std::is_trivially_copyable_v<SpanEvent> && sizeof(SpanEvent) == 16);

struct alignas(shm::cache_line) SpanRing {
  static constexpr std::uint32_t capacity = 16384;
  // Spans written (<= capacity), and spans not written because the ring was full. Single
  // writer (the replica); read by the supervisor after the replica was reaped (wait4 orders
  // it), so relaxed.
  std::atomic<std::uint64_t> count;
  std::atomic<std::uint64_t> dropped;
  SpanEvent events[capacity];
};
static_assert(std::is_standard_layout_v<SpanRing> && std::atomic<std::uint64_t>::is_always_lock_free);

class SpanRecorder {
 public:
  explicit SpanRecorder(SpanRing& ring, std::uint64_t start_ns) noexcept : ring_(&ring), last_ns_(start_ns) {}
  // The replica's cumulative busy, starved and blocked ns at `now_ns`.
  void record(std::uint64_t now_ns, std::uint64_t busy_ns, std::uint64_t starved_ns, std::uint64_t blocked_ns) noexcept;
  // Writes the pending span out (at the end of the replica).
  void flush() noexcept;

 private:
  void add(SpanKind kind, std::uint64_t start_ns, std::uint64_t duration_ns) noexcept;
  void emit(SpanKind kind, std::uint64_t start_ns, std::uint64_t duration_ns) noexcept;

  SpanRing* ring_;
  std::uint64_t last_ns_;
  std::uint64_t busy_ = 0, starved_ = 0, blocked_ = 0;
  // The span being coalesced.
  bool has_pending_ = false;
  SpanKind pending_kind_ = SpanKind::busy;
  std::uint64_t pending_start_ = 0;
  std::uint64_t pending_end_ = 0;
};

}  // namespace procflow::metrics

#include "metrics/span_ring.hpp"

#include <algorithm>

namespace procflow::metrics {

namespace {

// Gaps shorter than this between spans of one kind (the runtime's own work between batches)
// are absorbed into one span.
constexpr std::uint64_t coalesce_gap_ns = 200'000;
// Spans shorter than this are not worth a trace event on their own: they join the pending
// span of another kind (its length then says "mostly").
constexpr std::uint64_t min_span_ns = 20'000;

}  // namespace

void SpanRecorder::record(std::uint64_t now_ns, std::uint64_t busy_ns, std::uint64_t starved_ns, std::uint64_t blocked_ns) noexcept {
  const std::uint64_t s = starved_ns - std::min(starved_, starved_ns);
  const std::uint64_t b = busy_ns - std::min(busy_, busy_ns);
  const std::uint64_t k = blocked_ns - std::min(blocked_, blocked_ns);
  busy_ = std::max(busy_, busy_ns);
  starved_ = std::max(starved_, starved_ns);
  blocked_ = std::max(blocked_, blocked_ns);
  // Lay the interval out as starved, busy, blocked, ending at now (what does not fit is the
  // runtime's own time, left at the interval's start).
  const std::uint64_t total = std::min(s + b + k, now_ns - std::min(last_ns_, now_ns));
  std::uint64_t t = now_ns - total;
  const std::uint64_t ss = std::min(s, total), bb = std::min(b, total - ss), kk = total - ss - bb;
  add(SpanKind::starved, t, ss);
  t += ss;
  add(SpanKind::busy, t, bb);
  t += bb;
  add(SpanKind::blocked, t, kk);
  last_ns_ = now_ns;
}

void SpanRecorder::add(SpanKind kind, std::uint64_t start_ns, std::uint64_t duration_ns) noexcept {
  if (duration_ns == 0) return;
  const std::uint64_t end = start_ns + duration_ns;
  if (has_pending_ && (pending_kind_ == kind || duration_ns < min_span_ns) && start_ns <= pending_end_ + coalesce_gap_ns) {
    pending_end_ = std::max(pending_end_, end);
    return;
  }
  if (has_pending_ && pending_end_ - pending_start_ < min_span_ns && start_ns <= pending_end_ + coalesce_gap_ns) {
    // The pending span is too short to stand alone: it becomes part of this one.
    pending_kind_ = kind;
    pending_end_ = end;
    return;
  }
  flush();
  has_pending_ = true;
  pending_kind_ = kind;
  pending_start_ = start_ns;
  pending_end_ = end;
}

void SpanRecorder::flush() noexcept {
  if (!has_pending_) return;
  has_pending_ = false;
  emit(pending_kind_, pending_start_, pending_end_ - pending_start_);
}

void SpanRecorder::emit(SpanKind kind, std::uint64_t start_ns, std::uint64_t duration_ns) noexcept {
  constexpr std::uint64_t max_us = 0xffffffffULL;
  while (duration_ns > 0) {
    const std::uint64_t us = std::min<std::uint64_t>(duration_ns / 1000, max_us);
    const std::uint64_t piece = us == max_us ? us * 1000 : duration_ns;
    // Relaxed: single writer; the supervisor reads after reaping this process.
    const std::uint64_t n = ring_->count.load(std::memory_order_relaxed);
    if (n >= SpanRing::capacity) {
      ring_->dropped.store(ring_->dropped.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
      return;
    }
    ring_->events[n] = {start_ns, static_cast<std::uint32_t>(piece / 1000), kind};
    ring_->count.store(n + 1, std::memory_order_relaxed);
    start_ns += piece;
    duration_ns -= piece;
  }
}

}  // namespace procflow::metrics

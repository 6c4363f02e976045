// ReplicaStats: what one replica process reports about itself in shared memory — its lifetime
// on the steady clock (CLOCK_MONOTONIC, the same in every process of the machine) and what the
// kernel accounted to it (CPU, peak RSS, bytes read and written).
//
// One writer (the replica), read by the supervisor at any time (live progress) and after the
// replica was reaped (the report). Every field is an independent relaxed atomic: the supervisor
// only needs untorn values; the end-of-run read is ordered by wait4 on the reaped child.
#pragma once

#include "shm/segment.hpp"

#include <atomic>
#include <cstdint>
#include <type_traits>

namespace procflow::metrics {

struct alignas(shm::cache_line) ReplicaStats {
  // Steady-clock ns when the replica started its body / finished it (0: not yet). Relaxed: see above.
  std::atomic<std::uint64_t> start_ns;
  std::atomic<std::uint64_t> end_ns;
  // getrusage(RUSAGE_SELF) at the end. Relaxed: see above.
  std::atomic<std::uint64_t> cpu_user_ns;
  std::atomic<std::uint64_t> cpu_system_ns;
  std::atomic<std::uint64_t> peak_rss_bytes;
  // /proc/self/io rchar / wchar at the end (bytes through read-/write-like syscalls). Relaxed: see above.
  std::atomic<std::uint64_t> read_bytes;
  std::atomic<std::uint64_t> written_bytes;
  // Private (not shared copy-on-write) resident bytes at the end, from /proc/self/smaps_rollup.
  // Relaxed: see above.
  std::atomic<std::uint64_t> private_bytes;
};
static_assert(std::is_standard_layout_v<ReplicaStats> && std::is_trivially_destructible_v<ReplicaStats>);
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);
static_assert(sizeof(ReplicaStats) == shm::cache_line);

// The kernel's account of this process so far (best effort: a field it cannot read stays 0).
struct ProcessUsage {
  std::uint64_t cpu_user_ns = 0;
  std::uint64_t cpu_system_ns = 0;
  std::uint64_t peak_rss_bytes = 0;
  std::uint64_t read_bytes = 0;
  std::uint64_t written_bytes = 0;
  std::uint64_t private_bytes = 0;
};
ProcessUsage sample_process_usage() noexcept;

// Steady-clock ns now (comparable between processes on Linux).
std::uint64_t steady_now_ns() noexcept;

// Records the start (call first thing in the replica) and the end with the usage (call last).
void record_start(ReplicaStats& s) noexcept;
void record_end(ReplicaStats& s) noexcept;

}  // namespace procflow::metrics

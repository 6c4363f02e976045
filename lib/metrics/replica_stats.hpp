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
  // Private (not shared copy-on-write) resident bytes at the end, from /proc/self/smaps_rollup;
  // 0: not measured, the replica's life being too short for the read (private_read_pays). Relaxed: see above.
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
// `lived_ns`: how long the process has run its body so far (private_read_pays).
ProcessUsage sample_process_usage(std::uint64_t lived_ns) noexcept;

// Whether reading a process's private bytes costs at most ~1% of `lived_ns`. The read
// (/proc/self/smaps_rollup) walks the page tables of every mapping, the shared copy-on-write pages
// a forked replica inherited included: measured here ~0.1 ms for a small process and ~15 us more
// per MiB resident — 9 ms in a child of a 1 GiB caller, where it made a 1 000-item run() 17 ms
// slower (65 against 48 ms). Estimated as 0.1 ms + 20 us per MiB of peak RSS.
bool private_read_pays(std::uint64_t lived_ns, std::uint64_t peak_rss_bytes) noexcept;

// Steady-clock ns now (comparable between processes on Linux).
std::uint64_t steady_now_ns() noexcept;

// Records the start (call first thing in the replica) and the end with the usage (call last).
void record_start(ReplicaStats& s) noexcept;
void record_end(ReplicaStats& s) noexcept;

}  // namespace procflow::metrics

// Event: sleep until another process changes shared state — a futex "eventcount".
//
// Why a futex and not interprocess_semaphore: (1) one consumer replica waits for *any* of its P
// input rings, which a per-ring semaphore cannot express; (2) a semaphore's permits are lost when
// a process dies between taking and publishing, while an eventcount carries no state of its own
// (the ring indices stay the only truth); (3) FUTEX_WAIT's relative timeout runs on
// CLOCK_MONOTONIC, whereas Boost 1.74's timed_wait takes a CLOCK_REALTIME deadline; (4) waking
// is skipped entirely (no syscall) unless somebody sleeps. The channel benchmark measures the
// sleep/wake hand-off against interprocess_semaphore (tests/bench/channel_bench.cpp).
//
// Protocol (the Dekker pattern, see the SYNC POINT comments in event.cpp):
//   waiter:   waiters += 1; fence; e = epoch; if (condition()) done; else futex_wait(epoch, e)
//   notifier: publish state (release); fence; if (waiters != 0) { epoch += 1; futex_wake(epoch) }
// Either the notifier sees the waiter's registration, or the waiter sees the published state.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

namespace procflow::channel {

// Lives in shared memory.
struct alignas(64) EventShared {
  std::atomic<std::uint32_t> epoch{0};    // bumped by notify() when somebody waits; the futex word
  std::atomic<std::uint32_t> waiters{0};  // processes between registering and leaving wait()
};
static_assert(std::atomic<std::uint32_t>::is_always_lock_free);
static_assert(std::is_standard_layout_v<EventShared>);
static_assert(sizeof(EventShared) == 64);

using Clock = std::chrono::steady_clock;

// How long a waiter spins (re-checking its condition with a pause instruction) before it
// sleeps. Short on purpose: on a 2-core machine a spinning waiter steals the core the producer
// needs; the batch behind a wake-up amortises the syscall instead.
inline constexpr std::uint32_t default_spin_iterations = 256;

// Wakes every process sleeping on `event`. Call after publishing the state change waiters look
// for. No syscall when nobody waits. Never throws.
void notify(EventShared& event) noexcept;

// Cheap pause for spin loops.
inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

namespace impl {
// Sleeps on `event` while its epoch still equals `seen_epoch`, at most until `deadline`
// (Clock::time_point::max() for no limit). Retries EINTR internally; may return spuriously.
void futex_sleep(EventShared& event, std::uint32_t seen_epoch, Clock::time_point deadline) noexcept;
}  // namespace impl

// Blocks until `ready()` returns true or `deadline` passes; returns the last value of ready().
// Spins `spin` times first, then sleeps without using CPU. EINTR never surfaces.
template <class Ready>
bool wait(EventShared& event, Ready&& ready, Clock::time_point deadline = Clock::time_point::max(),
          std::uint32_t spin = default_spin_iterations) {
  for (std::uint32_t i = 0; i < spin; ++i) {
    if (ready()) return true;
    cpu_relax();
  }
  for (;;) {
    // SYNC POINT (waiter side): register, then full fence, then read epoch and state. Pairs
    // with the fence in notify(): the notifier either sees waiters != 0, or we see its state.
    event.waiters.fetch_add(1, std::memory_order_seq_cst);
    // Leaves on every path, an exception from ready() included. Relaxed: `waiters` is only a
    // hint to notifiers; a stale non-zero value costs one needless wake.
    struct registration {
      EventShared& event;
      ~registration() { event.waiters.fetch_sub(1, std::memory_order_relaxed); }
    } registered{event};
    std::atomic_thread_fence(std::memory_order_seq_cst);
    const std::uint32_t seen = event.epoch.load(std::memory_order_acquire);
    if (ready()) return true;
    if (Clock::now() >= deadline) return false;
    impl::futex_sleep(event, seen, deadline);
    if (ready()) return true;
  }
}

}  // namespace procflow::channel

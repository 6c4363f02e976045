#include "channel/event.hpp"

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <ctime>

namespace procflow::channel {

namespace {

// Shared (not FUTEX_PRIVATE_FLAG) futexes: the word lives in memory mapped by several processes.
long futex(std::atomic<std::uint32_t>* word, int op, std::uint32_t value, const timespec* timeout) noexcept {
  return ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), op, value, timeout, nullptr, 0);
}

}  // namespace

void notify(EventShared& event) noexcept {
  // SYNC POINT (notifier side): the caller's state was published with a release store; this
  // fence orders it before our read of `waiters` (pairs with the fence in wait()).
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (event.waiters.load(std::memory_order_relaxed) == 0) return;  // fast path: nobody sleeps
  // Release: a waiter that reads the new epoch also sees the state published before it.
  event.epoch.fetch_add(1, std::memory_order_release);
  futex(&event.epoch, FUTEX_WAKE, INT_MAX, nullptr);
}

namespace impl {

void futex_sleep(EventShared& event, std::uint32_t seen_epoch, Clock::time_point deadline) noexcept {
  timespec relative{};
  const timespec* timeout = nullptr;
  if (deadline != Clock::time_point::max()) {
    // FUTEX_WAIT takes a *relative* timeout measured on CLOCK_MONOTONIC: setting the wall
    // clock cannot move it.
    const auto left = deadline - Clock::now();
    if (left <= Clock::duration::zero()) return;
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(left).count();
    relative.tv_sec = static_cast<time_t>(ns / 1'000'000'000);
    relative.tv_nsec = static_cast<long>(ns % 1'000'000'000);
    timeout = &relative;
  }
  // Returns at once (EAGAIN) if the epoch moved since the caller read it; EINTR and ETIMEDOUT
  // simply return: the caller re-checks its condition and its deadline.
  futex(&event.epoch, FUTEX_WAIT, seen_epoch, timeout);
}

}  // namespace impl

}  // namespace procflow::channel

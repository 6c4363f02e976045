#include "runtime/interrupt_guard.hpp"

#include <procflow/error.hpp>

#include <signal.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>

namespace procflow::runtime {

namespace {

constexpr int caught_signals[2] = {SIGINT, SIGTERM};

// The first signal caught during the run (0: none). Written by the handler (exchange: a second
// signal sees the first's number), read by the supervisor after a wake-up. Relaxed: it publishes
// only itself; the eventfd write after it is what wakes the supervisor.
std::atomic<int> caught{0};
static_assert(std::atomic<int>::is_always_lock_free, "used in a signal handler");
// The guard's eventfd (-1 outside a run). Relaxed: stored before the handlers are installed
// (sigaction is a syscall, nothing is reordered across it) and after they are removed.
std::atomic<int> wake{-1};
// The host's dispositions, saved before our handlers go in; only read by the handler.
struct sigaction host_action[2];

void on_signal(int signal, siginfo_t* info, void* context) {
  const int saved_errno = errno;
  const int index = signal == SIGINT ? 0 : 1;
  if (caught.exchange(signal, std::memory_order_relaxed) != 0) {
    // Second signal: end at once with its default action (delivered when this handler returns,
    // since the signal is blocked while it runs).
    struct sigaction default_action {};
    default_action.sa_handler = SIG_DFL;
    sigemptyset(&default_action.sa_mask);
    ::sigaction(signal, &default_action, nullptr);
    ::raise(signal);
    errno = saved_errno;
    return;
  }
  const std::uint64_t one = 1;
  (void)!::write(wake.load(std::memory_order_relaxed), &one, sizeof one);
  // The host's own handler, if it had one, sees the signal too.
  const struct sigaction& host = host_action[index];
  if (host.sa_flags & SA_SIGINFO) {
    if (host.sa_sigaction) host.sa_sigaction(signal, info, context);
  } else if (host.sa_handler != SIG_DFL && host.sa_handler != SIG_IGN && host.sa_handler != nullptr) {
    host.sa_handler(signal);
  }
  errno = saved_errno;
}

}  // namespace

InterruptGuard::InterruptGuard() : wake_fd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
  if (wake_fd_ < 0) throw procflow::system_error(errno, "cannot create the eventfd that wakes the supervisor on SIGINT / SIGTERM");
  caught.store(0, std::memory_order_relaxed);
  wake.store(wake_fd_, std::memory_order_relaxed);
  struct sigaction ours {};
  ours.sa_sigaction = on_signal;
  ours.sa_flags = SA_SIGINFO | SA_RESTART;
  sigemptyset(&ours.sa_mask);
  for (const int s : caught_signals) sigaddset(&ours.sa_mask, s);  // one handler at a time
  for (int k = 0; k < 2; ++k) {
    struct sigaction current {};
    ::sigaction(caught_signals[k], nullptr, &current);
    if (!(current.sa_flags & SA_SIGINFO) && current.sa_handler == SIG_IGN) continue;  // the host ignores it
    host_action[k] = current;
    installed_[k] = ::sigaction(caught_signals[k], &ours, nullptr) == 0;
  }
}

InterruptGuard::~InterruptGuard() {
  for (int k = 0; k < 2; ++k)
    if (installed_[k]) ::sigaction(caught_signals[k], &host_action[k], nullptr);
  wake.store(-1, std::memory_order_relaxed);
  ::close(wake_fd_);
}

int InterruptGuard::pending() noexcept { return caught.load(std::memory_order_relaxed); }

}  // namespace procflow::runtime

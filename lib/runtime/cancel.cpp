#include "runtime/cancel_state.hpp"

#include <procflow/error.hpp>

#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>

namespace procflow {

namespace detail {

cancel_state::cancel_state() : wake_fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
  if (wake_fd < 0) throw procflow::system_error(errno, "cannot create the eventfd of a cancel_source");
}

cancel_state::~cancel_state() { ::close(wake_fd); }

}  // namespace detail

cancel_source::cancel_source() : state_(std::make_shared<detail::cancel_state>()) {}

void cancel_source::request_stop() const noexcept {
  const int saved_errno = errno;  // a signal handler must leave errno as it found it
  state_->requested.store(1, std::memory_order_relaxed);
  const std::uint64_t one = 1;
  (void)!::write(state_->wake_fd, &one, sizeof one);  // EAGAIN (counter full) still leaves it readable
  errno = saved_errno;
}

bool cancel_source::stop_requested() const noexcept { return state_->requested.load(std::memory_order_relaxed) != 0; }

void cancel_source::reset() noexcept {
  state_->requested.store(0, std::memory_order_relaxed);
  std::uint64_t drained = 0;
  (void)!::read(state_->wake_fd, &drained, sizeof drained);  // non-blocking: EAGAIN when empty
}

}  // namespace procflow

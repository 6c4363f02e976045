// The shared state behind procflow::cancel_source (include/procflow/cancel.hpp).
#pragma once

#include <procflow/cancel.hpp>

#include <atomic>

namespace procflow::detail {

struct cancel_state {
  cancel_state();
  ~cancel_state();
  cancel_state(const cancel_state&) = delete;
  cancel_state& operator=(const cancel_state&) = delete;

  // 1 once a stop was requested. Written by request_stop() (maybe in a signal handler), read by
  // the supervisor after each wake-up. Relaxed: it publishes nothing but itself; the eventfd
  // write that follows it only wakes the supervisor, which then loads this flag.
  std::atomic<int> requested{0};
  static_assert(std::atomic<int>::is_always_lock_free, "request_stop() must be async-signal-safe");
  // eventfd, readable once a stop was requested: the supervisor polls it with the pidfds.
  int wake_fd = -1;
};

}  // namespace procflow::detail

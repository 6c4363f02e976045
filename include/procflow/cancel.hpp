// Stopping a running pipeline from the program itself: from its own signal handler or from
// another thread.
//
//   pf::cancel_source stop;                      // before run(); copies share one request
//   // in a signal handler or another thread:    stop.request_stop();
//   pf::pipeline("p", pf::cancel_with(stop)) ... .run();   // throws pf::interrupted (signal() 0)
//
// request_stop() is async-signal-safe and thread-safe (one atomic store and one write() to an
// eventfd the supervisor polls), so a run blocked anywhere (waiting for results, for a replica,
// on a full ring) stops within a scheduling tick. Every run given the source stops while the
// request stands, including one started after it (it throws before forking); reset() withdraws it.
#pragma once

#include <memory>

namespace procflow {

namespace detail {
struct cancel_state;  // lib/runtime/cancel_state.hpp
}

class cancel_source {
 public:
  // Throws procflow::system_error if the eventfd cannot be created.
  cancel_source();

  // Asks every run given this source to stop. Async-signal-safe, thread-safe, idempotent.
  void request_stop() const noexcept;
  // True once request_stop() was called (and not reset since).
  bool stop_requested() const noexcept;
  // Withdraws a request so that the source can be given to another run. Not async-signal-safe;
  // call it while no run uses the source.
  void reset() noexcept;

  const std::shared_ptr<detail::cancel_state>& state() const noexcept { return state_; }

 private:
  std::shared_ptr<detail::cancel_state> state_;
};

// Pipeline option: `source` can stop the run (see above).
struct cancel_with {
  explicit cancel_with(const cancel_source& s) : source(s) {}
  cancel_source source;
};

// Pipeline option: run() even though the calling process has other threads. Without it run()
// throws procflow::error when /proc/self/task lists more than one thread, because fork() copies
// only the calling thread: a lock another thread holds (malloc's, a logger's) stays locked in
// every replica. Opt in when those threads are known to hold nothing a stage uses (a oneTBB pool
// that is idle, say).
struct allow_threads_t {
  explicit constexpr allow_threads_t() = default;
};
inline constexpr allow_threads_t allow_threads{};

}  // namespace procflow

// Forking replicas and reaping them: the only place procflow calls fork() and waitpid().
//
// Every child gets PR_SET_PDEATHSIG(SIGKILL) (and re-checks its parent afterwards, closing the
// race with a parent that died before the prctl), leaves with _exit() so the parent's atexit
// handlers and stdio buffers are not run twice, and is watched through a pidfd so the
// supervisor can sleep in poll() until a child ends — no polling loop burning CPU.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <optional>
#include <vector>

namespace procflow::process {

struct ExitInfo {
  std::size_t index = 0;  // position in the ChildSet
  pid_t pid = 0;
  int status = 0;         // as from waitpid
  double cpu_user_s = 0;
  double cpu_system_s = 0;
  long max_rss_kib = 0;
};

class ChildSet {
 public:
  ChildSet() = default;
  ~ChildSet();  // SIGKILLs and reaps every child still running
  ChildSet(const ChildSet&) = delete;
  ChildSet& operator=(const ChildSet&) = delete;

  // Forks a child running `body`; the child exits with body's return value (or 71 if it throws).
  // Returns the child's index. Throws procflow::system_error if fork or pidfd_open fails.
  std::size_t spawn(const std::function<int()>& body);

  // Waits up to `timeout` for one child to end and reaps it. nullopt: none ended in time.
  std::optional<ExitInfo> wait_any(std::chrono::milliseconds timeout);

  // Sends `signal` to every child still running.
  void signal_all(int signal) noexcept;
  // SIGKILLs and reaps every child still running (blocking; they cannot refuse).
  void kill_and_reap_all() noexcept;

  std::size_t running() const noexcept;
  pid_t pid(std::size_t index) const noexcept { return children_[index].pid; }

 private:
  struct Child {
    pid_t pid = -1;
    int pidfd = -1;
    bool reaped = false;
  };
  ExitInfo reap(std::size_t index);
  std::vector<Child> children_;
};

}  // namespace procflow::process

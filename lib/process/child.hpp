// Forking replicas and reaping them: the only place procflow calls fork() and waits for a child.
//
// A child is watched and signalled only through its pidfd, never through its pid number, which
// the host program may have reaped and the kernel reused. The pidfd is obtained race-free: the
// child is forked with every signal blocked and waits on an eventfd until the parent holds its
// pidfd, so it cannot end (and be reaped by SIGCHLD = SIG_IGN or by a host's SIGCHLD handler)
// before that; only an outside SIGKILL could, and the parent then checks that the pidfd names
// its own child (waitid(P_PIDFD) answers ECHILD otherwise). A raw clone3(CLONE_PIDFD) would do it
// in one call but bypasses glibc's fork bookkeeping (cached TID, atfork handlers, malloc locks).
//
// Before running its body, a child:
//  - gets PR_SET_PDEATHSIG(SIGKILL) (and re-checks its parent, closing the race with a parent
//    that died before the prctl);
//  - closes the pidfds of the siblings forked before it;
//  - ignores SIGINT (Ctrl-C reaches the whole foreground process group; the supervisor alone
//    decides what it means), resets SIGTERM, SIGHUP, SIGQUIT, SIGPIPE and SIGCHLD to their default
//    disposition, and unblocks all six, whatever the host program installed (other signals keep
//    the host's setting, as across execve).
// It leaves with _exit(), so the parent's atexit handlers and destructors do not run twice, after
// flushing C stdio and the C++ standard streams (which hold their own buffers under
// std::ios::sync_with_stdio(false)); the parent flushes both before forking so that nothing
// buffered is written twice.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <optional>
#include <vector>

namespace procflow::process {

// Threads of this process, from /proc/self/task (1 if it cannot be read). A thread that was
// joined may still be listed for a moment: the kernel wakes pthread_join before it has finished
// tearing the thread down.
std::size_t thread_count() noexcept;

// Waits up to `timeout` until at most `threads` threads are listed; true if they are.
bool await_thread_count(std::size_t threads, std::chrono::milliseconds timeout) noexcept;

struct ExitInfo {
  std::size_t index = 0;  // position in the ChildSet
  pid_t pid = 0;
  // False when somebody else reaped the child first (SIGCHLD set to SIG_IGN, or a host's SIGCHLD
  // handler calling wait): its exit status and resource usage are then unknown (status 0).
  bool status_known = true;
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
  // Returns the child's index. Throws procflow::system_error if the child cannot be forked or
  // watched (no child is left behind then).
  std::size_t spawn(const std::function<int()>& body);

  // Waits up to `timeout` for one child to end and reaps it. nullopt: none ended in time, or a
  // wake fd (see add_wake_fd) is readable.
  std::optional<ExitInfo> wait_any(std::chrono::milliseconds timeout);
  // wait_any() also returns (nullopt) as soon as `fd` is readable. The caller keeps `fd` open
  // while it may wait and reads nothing from it through the ChildSet.
  void add_wake_fd(int fd) { wake_fds_.push_back(fd); }

  // Sends `signal` to every child still running (through its pidfd).
  void signal_all(int signal) noexcept;
  // SIGKILLs and reaps every child still running (blocking; they cannot refuse).
  void kill_and_reap_all() noexcept;

  std::size_t running() const noexcept;
  std::size_t size() const noexcept { return children_.size(); }
  bool reaped(std::size_t index) const noexcept { return children_[index].reaped; }
  // Sends `signal` to one child still running (through its pidfd); a no-op once it was reaped.
  void signal_one(std::size_t index, int signal) noexcept;
  pid_t pid(std::size_t index) const noexcept { return children_[index].pid; }

 private:
  struct Child {
    pid_t pid = -1;
    int pidfd = -1;
    bool reaped = false;
  };
  ExitInfo reap(std::size_t index);
  std::vector<Child> children_;
  std::vector<int> wake_fds_;
};

}  // namespace procflow::process

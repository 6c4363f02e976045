// Catching SIGINT and SIGTERM in the process that called run(), for the length of the run.
//
// The first SIGINT or SIGTERM is noted (its number, for procflow::interrupted) and wakes the
// supervisor through an eventfd it polls with the pidfds; the host program's own handler, if it
// installed one, is then called too, so a program that notes Ctrl-C in a flag still sees it. A
// second one (either) while the first is being handled ends the process at once with that signal's
// default action; the replicas follow it through PR_SET_PDEATHSIG and the shared memory is
// anonymous, so nothing is left behind. A signal the host ignores (SIG_IGN, as a shell does for a
// background job) stays ignored. The host's dispositions are restored when the guard ends.
//
// Replicas ignore SIGINT (lib/process/child.cpp), so Ctrl-C in a terminal, which reaches the whole
// foreground process group, is decided by the supervisor alone.
#pragma once

namespace procflow::runtime {

class InterruptGuard {
 public:
  InterruptGuard();   // throws procflow::system_error if its eventfd cannot be created
  ~InterruptGuard();  // restores the host's SIGINT / SIGTERM dispositions
  InterruptGuard(const InterruptGuard&) = delete;
  InterruptGuard& operator=(const InterruptGuard&) = delete;

  // Readable once a signal was caught.
  int wake_fd() const noexcept { return wake_fd_; }
  // The signal caught (SIGINT or SIGTERM), 0 if none.
  static int pending() noexcept;

 private:
  int wake_fd_ = -1;
  bool installed_[2] = {false, false};
};

}  // namespace procflow::runtime

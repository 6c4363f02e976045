// Test support: the signal set-ups of a host program (procflow is a library inside other
// programs), installed for one test case and always put back.
#pragma once

#include <signal.h>
#include <sys/wait.h>

#include <cerrno>

namespace procflow::test {

// Sets a disposition for the lifetime of the guard: restored even when a check throws, so a
// failure cannot leave (say) SIGCHLD ignored for the cases after it.
class SignalGuard {
 public:
  SignalGuard(int signal, void (*handler)(int), int flags = 0) : signal_(signal) {
    struct sigaction a {};
    a.sa_handler = handler;
    a.sa_flags = flags;
    sigemptyset(&a.sa_mask);
    ::sigaction(signal_, &a, &old_);
  }
  ~SignalGuard() { ::sigaction(signal_, &old_, nullptr); }
  SignalGuard(const SignalGuard&) = delete;
  SignalGuard& operator=(const SignalGuard&) = delete;

 private:
  int signal_;
  struct sigaction old_ {};
};

// What many servers install as their SIGCHLD handler: reap every child that ended, whoever it
// belongs to.
inline void reap_every_child(int) {
  const int saved = errno;
  while (::waitpid(-1, nullptr, WNOHANG) > 0) {
  }
  errno = saved;
}

}  // namespace procflow::test

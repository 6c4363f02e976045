#include "process/child.hpp"

#include <procflow/error.hpp>
#include <procflow/detail/sanitizers.hpp>
#include <procflow/detail/table_memory.hpp>

#include <fmt/format.h>

#include <malloc.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <iostream>
#include <thread>

#ifndef P_PIDFD
#define P_PIDFD 3  // <linux/wait.h>; glibc 2.36's <sys/wait.h> does not define it
#endif

namespace procflow::process {

namespace {

// Exit statuses of a child that never ran its body.
constexpr int exit_orphaned = 72;     // the parent died before the child could start
constexpr int exit_not_started = 73;  // the parent could not watch the child and called it off

// Values written to a child's start eventfd.
constexpr std::uint64_t start_go = 1;
constexpr std::uint64_t start_abort = 2;

int pidfd_open(pid_t pid) noexcept { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }

int pidfd_send_signal(int pidfd, int signal) noexcept {
  return static_cast<int>(::syscall(SYS_pidfd_send_signal, pidfd, signal, nullptr, 0));
}

// waitid(P_PIDFD, ...) with the resource usage glibc's wrapper does not return. Waiting on the
// pidfd rather than the pid cannot wait for another process that reuses the number.
int waitid_pidfd(int pidfd, siginfo_t* info, int options, rusage* usage) noexcept {
  return static_cast<int>(::syscall(SYS_waitid, P_PIDFD, pidfd, info, options, usage));
}

void write_start(int fd, std::uint64_t value) noexcept {
  while (::write(fd, &value, sizeof value) < 0 && errno == EINTR) {
  }
}

// The wait status waitpid would have returned, rebuilt from waitid's siginfo.
int wait_status(const siginfo_t& info) noexcept {
  switch (info.si_code) {
    case CLD_EXITED: return (info.si_status & 0xff) << 8;
    case CLD_KILLED: return info.si_status & 0x7f;
    case CLD_DUMPED: return (info.si_status & 0x7f) | 0x80;
    default: return 0;
  }
}

double seconds(const timeval& tv) noexcept {
  return static_cast<double>(tv.tv_sec) + static_cast<double>(tv.tv_usec) / 1e6;
}

// Flushes the C++ standard streams (they hold their own buffers under
// std::ios::sync_with_stdio(false)), then every C stdio stream.
void flush_standard_streams() noexcept {
  for (std::ostream* s : {&std::cout, &std::cerr, &std::clog}) {
    try {
      s->flush();
    } catch (...) {  // a stream with exceptions() set; nothing to report it to
    }
  }
  for (std::wostream* s : {&std::wcout, &std::wcerr, &std::wclog}) {
    try {
      s->flush();
    } catch (...) {
    }
  }
  std::fflush(nullptr);
}

// The signals that stop a program (and SIGPIPE / SIGCHLD, whose inherited setting would change
// how a stage's own I/O and children behave): default disposition and unblocked in a replica,
// whatever the host program installed, except SIGINT, ignored: Ctrl-C reaches the whole foreground
// process group and the supervisor decides (it stops the replicas itself). The rest of the host's
// mask is kept.
void reset_stop_signals(const sigset_t& host_mask) noexcept {
  struct sigaction action {};
  sigemptyset(&action.sa_mask);
  sigset_t mask = host_mask;
  for (const int s : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE, SIGCHLD}) {
    action.sa_handler = s == SIGINT ? SIG_IGN : SIG_DFL;
    ::sigaction(s, &action, nullptr);
    sigdelset(&mask, s);
  }
  ::pthread_sigmask(SIG_SETMASK, &mask, nullptr);
}

}  // namespace

std::size_t thread_count() noexcept {
  std::error_code ec;
  std::size_t n = 0;
  for (std::filesystem::directory_iterator it("/proc/self/task", ec), end; !ec && it != end; it.increment(ec)) ++n;
  return n == 0 ? 1 : n;
}

bool await_thread_count(std::size_t threads, std::chrono::milliseconds timeout) noexcept {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (thread_count() <= threads) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

ChildSet::~ChildSet() { kill_and_reap_all(); }

std::size_t ChildSet::spawn(const std::function<int()>& body) {
  flush_standard_streams();  // nothing buffered may be written twice
  children_.reserve(children_.size() + 1);  // no allocation failure after the fork
  const int start_fd = ::eventfd(0, EFD_CLOEXEC);
  if (start_fd < 0) throw procflow::system_error(errno, "cannot create the start eventfd of a replica process");
  // Fork with every signal blocked, as posix_spawn does: no host handler runs in the child, and
  // nothing but SIGKILL can end it before its parent holds its pidfd.
  sigset_t all;
  sigset_t host_mask;
  sigfillset(&all);
  ::pthread_sigmask(SIG_SETMASK, &all, &host_mask);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(exit_orphaned);  // the parent died before prctl took effect
    std::uint64_t start = 0;
    while (::read(start_fd, &start, sizeof start) < 0 && errno == EINTR) {
    }
    ::close(start_fd);
    if (start != start_go) ::_exit(exit_not_started);
    for (const Child& sibling : children_)
      if (sibling.pidfd >= 0) ::close(sibling.pidfd);
    reset_stop_signals(host_mask);
#ifndef PROCFLOW_ASAN  // AddressSanitizer checks only memory malloc hands out: keep operator new
    detail::table_memory::use_arena_in_this_process();  // large tables on huge pages: the child exits at its end
    // The parent's free heap memory is still shared with it after the fork: the first write to a
    // page of it (a large item decoded or built into a reused block) copies the page and flushes
    // the TLB of every CPU the process ran on. Given back here, those pages fault in fresh and
    // zeroed instead; malloc's free blocks only, nothing anybody holds.
    ::malloc_trim(0);
#endif
    int status = 71;
    try {
      status = body();
    } catch (...) {
      // body() reports its own failures; this is a last resort that must not unwind into the
      // parent's stack frames (that would run the caller's code twice).
    }
    flush_standard_streams();
    ::_exit(status);
  }
  const int fork_errno = errno;
  ::pthread_sigmask(SIG_SETMASK, &host_mask, nullptr);
  if (pid < 0) {
    ::close(start_fd);
    throw procflow::system_error(fork_errno, "cannot fork a replica process");
  }
  // The child is blocked on start_fd: it can only have ended if somebody SIGKILLed it, and then
  // the number may already name another process. waitid(P_PIDFD) tells: it only sees our children.
  const int fd = pidfd_open(pid);
  int err = fd < 0 ? errno : 0;
  if (fd >= 0) {
    siginfo_t info{};
    if (waitid_pidfd(fd, &info, WEXITED | WNOHANG | WNOWAIT, nullptr) < 0 && errno == ECHILD) err = ESRCH;
  }
  if (err != 0) {
    write_start(start_fd, start_abort);
    ::close(start_fd);
    if (fd >= 0) {
      ::close(fd);
    } else if (err != ESRCH) {
      // The child is ours and alive (pidfd_open failed for want of a descriptor, say): it exits on
      // its own once told to; waiting by pid is safe for a live child of ours.
      while (::waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
      }
    }
    throw procflow::system_error(err, err == ESRCH ? fmt::format("replica process {} was killed before it started", pid)
                                                   : fmt::format("cannot open a pidfd for replica process {}", pid));
  }
  write_start(start_fd, start_go);
  ::close(start_fd);
  children_.push_back({pid, fd, false});
  return children_.size() - 1;
}

ExitInfo ChildSet::reap(std::size_t index) {
  Child& c = children_[index];
  ExitInfo info;
  info.index = index;
  info.pid = c.pid;
  siginfo_t si{};
  rusage ru{};
  for (;;) {
    if (waitid_pidfd(c.pidfd, &si, WEXITED, &ru) == 0) {
      info.status = wait_status(si);
      break;
    }
    if (errno == EINTR) continue;
    // ECHILD: somebody else (SIGCHLD set to SIG_IGN, a SIGCHLD handler of the program) reaped it.
    info.status_known = false;
    break;
  }
  info.cpu_user_s = seconds(ru.ru_utime);
  info.cpu_system_s = seconds(ru.ru_stime);
  info.max_rss_kib = ru.ru_maxrss;
  ::close(c.pidfd);
  c.pidfd = -1;
  c.reaped = true;
  return info;
}

std::optional<ExitInfo> ChildSet::wait_any(std::chrono::milliseconds timeout) {
  std::vector<pollfd> fds;
  std::vector<std::size_t> owners;
  for (std::size_t i = 0; i < children_.size(); ++i) {
    if (children_[i].reaped) continue;
    fds.push_back({children_[i].pidfd, POLLIN, 0});
    owners.push_back(i);
  }
  if (fds.empty()) return std::nullopt;
  const std::size_t children = fds.size();
  for (const int fd : wake_fds_) fds.push_back({fd, POLLIN, 0});
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    const int n = ::poll(fds.data(), fds.size(), static_cast<int>(std::max<long long>(0, left.count())));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw procflow::system_error(errno, "poll on replica pidfds failed");
    for (std::size_t k = 0; k < children; ++k)
      if (fds[k].revents != 0) return reap(owners[k]);  // a pidfd is readable once its process ended
    return std::nullopt;  // timed out, or woken
  }
}

void ChildSet::signal_all(int signal) noexcept {
  // ESRCH (the child ended, maybe reaped by someone else) is the only expected failure: fine.
  for (const Child& c : children_)
    if (!c.reaped) pidfd_send_signal(c.pidfd, signal);
}

void ChildSet::signal_one(std::size_t index, int signal) noexcept {
  if (!children_[index].reaped) pidfd_send_signal(children_[index].pidfd, signal);
}

void ChildSet::kill_and_reap_all() noexcept {
  signal_all(SIGKILL);
  for (std::size_t i = 0; i < children_.size(); ++i)
    if (!children_[i].reaped) reap(i);
}

std::size_t ChildSet::running() const noexcept {
  std::size_t n = 0;
  for (const Child& c : children_) n += c.reaped ? 0 : 1;
  return n;
}

}  // namespace procflow::process

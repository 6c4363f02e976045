#include "process/child.hpp"

#include <procflow/error.hpp>

#include <fmt/format.h>

#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <exception>

namespace procflow::process {

namespace {

int pidfd_open(pid_t pid) noexcept { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }

double seconds(const timeval& tv) noexcept {
  return static_cast<double>(tv.tv_sec) + static_cast<double>(tv.tv_usec) / 1e6;
}

}  // namespace

ChildSet::~ChildSet() { kill_and_reap_all(); }

std::size_t ChildSet::spawn(const std::function<int()>& body) {
  std::fflush(nullptr);  // nothing buffered may be written twice
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) throw procflow::system_error(errno, "cannot fork a replica process");
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(72);  // the parent died before prctl took effect
    int status = 71;
    try {
      status = body();
    } catch (...) {
      // body() reports its own failures; this is a last resort that must not unwind into the
      // parent's stack frames (that would run the caller's code twice).
    }
    std::fflush(nullptr);
    ::_exit(status);
  }
  const int fd = pidfd_open(pid);
  if (fd < 0) {
    const int err = errno;
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    throw procflow::system_error(err, fmt::format("cannot open a pidfd for replica process {}", pid));
  }
  children_.push_back({pid, fd, false});
  return children_.size() - 1;
}

ExitInfo ChildSet::reap(std::size_t index) {
  Child& c = children_[index];
  ExitInfo info;
  info.index = index;
  info.pid = c.pid;
  rusage ru{};
  for (;;) {
    const pid_t r = ::wait4(c.pid, &info.status, 0, &ru);
    if (r == c.pid) break;
    if (r < 0 && errno == EINTR) continue;
    // ECHILD: somebody else (a SIGCHLD handler of the program) reaped it.
    info.status = -1;
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
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    const int n = ::poll(fds.data(), fds.size(), static_cast<int>(std::max<long long>(0, left.count())));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw procflow::system_error(errno, "poll on replica pidfds failed");
    for (std::size_t k = 0; k < fds.size(); ++k)
      if (fds[k].revents != 0) return reap(owners[k]);  // a pidfd is readable once its process ended
    return std::nullopt;
  }
}

void ChildSet::signal_all(int signal) noexcept {
  for (const Child& c : children_)
    if (!c.reaped) ::kill(c.pid, signal);
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

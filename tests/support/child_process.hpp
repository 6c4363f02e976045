// Test support: a forked child that can never outlive its test.
//
// The child gets PR_SET_PDEATHSIG(SIGKILL), so it dies with the test process even when ctest's
// timeout kills that; the destructor SIGKILLs and reaps a child still running when a test fails
// early. wait_for() bounds every wait, so a hang fails the test instead of blocking CI.
#pragma once

#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <functional>
#include <optional>
#include <set>
#include <string>
#include <thread>

// Inside a child of the test: a failed expectation prints where and makes the child exit 1
// (doctest's checks cannot report from another process).
#define CHILD_CHECK(cond)                                                                     \
  do {                                                                                        \
    if (!(cond)) {                                                                            \
      std::fprintf(stderr, "%s:%d: in child: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
      return 1;                                                                               \
    }                                                                                         \
  } while (0)

// Inside a child of the test: reaching this line is a failure (e.g. a call that must throw returned).
#define CHILD_FAIL(what)                                                            \
  do {                                                                              \
    std::fprintf(stderr, "%s:%d: in child: %s\n", __FILE__, __LINE__, what);       \
    return 1;                                                                       \
  } while (0)

namespace procflow::test {

class ChildProcess {
 public:
  // Forks and runs `body` in the child; its return value is the exit status. An exception in
  // the child is printed and exits with 99.
  explicit ChildProcess(const std::function<int()>& body) {
    std::fflush(nullptr);
    const pid_t parent = ::getpid();
    pid_ = ::fork();
    if (pid_ < 0) throw std::runtime_error("fork failed");
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(98);
      int rc = 99;
      try {
        rc = body();
      } catch (const std::exception& e) {
        std::fprintf(stderr, "child %d failed: %s\n", ::getpid(), e.what());
      }
      std::fflush(nullptr);
      ::_exit(rc);
    }
  }
  ~ChildProcess() {
    if (pid_ > 0 && !reaped_) {
      ::kill(pid_, SIGKILL);
      int status = 0;
      ::waitpid(pid_, &status, 0);
    }
  }
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  pid_t pid() const { return pid_; }

  // Waits up to `timeout` for the child; returns its wait status, or nullopt if it still runs
  // (it is then killed and reaped). CPU time used by the child is stored for cpu_seconds().
  std::optional<int> wait_for(std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      int status = 0;
      rusage ru{};
      const pid_t r = ::wait4(pid_, &status, WNOHANG, &ru);
      if (r == pid_) {
        reaped_ = true;
        cpu_seconds_ = static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
                       static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
        return status;
      }
      if (std::chrono::steady_clock::now() >= deadline) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, &status, 0);
        reaped_ = true;
        return std::nullopt;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  }

  // True if the child exited normally with status 0 within `timeout`.
  bool succeeded_within(std::chrono::milliseconds timeout) {
    const auto status = wait_for(timeout);
    return status && WIFEXITED(*status) && WEXITSTATUS(*status) == 0;
  }

  double cpu_seconds() const { return cpu_seconds_; }

 private:
  pid_t pid_ = -1;
  bool reaped_ = false;
  double cpu_seconds_ = 0;
};

// The entries of /dev/shm, to check a test left it as it found it.
inline std::set<std::string> dev_shm_entries() {
  std::set<std::string> names;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/dev/shm", ec)) names.insert(e.path().filename().string());
  return names;
}

// Our direct children that still exist (zombies included), read from /proc.
inline int count_children() {
  int n = 0;
  const std::string me = std::to_string(::getpid());
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/proc", ec)) {
    const auto name = e.path().filename().string();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::FILE* f = std::fopen((e.path() / "stat").c_str(), "r");
    if (!f) continue;
    char buf[512] = {};
    const std::size_t len = std::fread(buf, 1, sizeof buf - 1, f);
    std::fclose(f);
    std::string stat(buf, len);
    // Format: pid (comm) state ppid ...; comm may contain spaces, so split after the last ')'.
    const auto close = stat.rfind(')');
    if (close == std::string::npos || close + 4 > stat.size()) continue;
    const auto rest = stat.substr(close + 4);  // skips ") S "
    const auto space = rest.find(' ');
    if (rest.substr(0, space) == me) ++n;
  }
  return n;
}

}  // namespace procflow::test

// Checks lib/process/child.hpp (spawning replicas, watching them through pidfds, reaping them)
// and what a replica inherits from the host program, end to end through run():
//  - a host that ignores SIGCHLD or reaps every child from a handler: every run succeeds (the
//    pidfd is obtained before the child can end), and a replica whose exit status was taken by
//    somebody else is still judged by its record: a failure or a crash is never a success;
//  - a replica holds no pidfd of its siblings;
//  - replicas start with an unblocked mask and the default disposition for the signals that
//    stop a program (SIGINT: ignored, the supervisor decides), whatever the host installed (a
//    host SIGINT handler made them deaf); SIGINT to the group makes run() throw interrupted;
//  - what a stage writes with printf and with std::cout (sync_with_stdio(false)) arrives once.
// Every case runs in a child of the test (its own signal setup, its own process group where it
// sends signals) under ChildProcess::wait_for, so a hang fails the case instead of CI, and the
// test process's own dispositions are never touched.
#include "process/child.hpp"
#include "support/child_process.hpp"
#include "support/host_signals.hpp"

#include <procflow/procflow.hpp>

#include <doctest/doctest.h>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <iostream>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <utility>

namespace pf = procflow;
namespace pt = procflow::test;
using pt::reap_every_child;
using pt::SignalGuard;
using i64 = std::int64_t;
using namespace std::chrono_literals;

namespace {

// Runs `body` in a child of the test and expects it to exit 0 within `timeout`.
void expect_child_succeeds(const std::function<int()>& body, std::chrono::milliseconds timeout) {
  pt::ChildProcess child(body);
  const auto status = child.wait_for(timeout);
  REQUIRE_MESSAGE(status.has_value(), "the case did not finish within ", timeout.count(), " ms (killed)");
  INFO("wait status ", *status);
  CHECK_MESSAGE(WIFEXITED(*status), "the case's process died by signal ", WTERMSIG(*status));
  if (WIFEXITED(*status)) CHECK_MESSAGE(WEXITSTATUS(*status) == 0, "the case's process exited ", WEXITSTATUS(*status));
}

int runs_from_env(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v && std::atoi(v) > 0 ? std::atoi(v) : fallback;
}

volatile sig_atomic_t host_flag = 0;
void set_host_flag(int) { host_flag = 1; }

enum class Host { sigchld_ignored, sigchld_reaped };

std::unique_ptr<SignalGuard> install(Host host) {
  if (host == Host::sigchld_ignored) return std::make_unique<SignalGuard>(SIGCHLD, SIG_IGN);
  return std::make_unique<SignalGuard>(SIGCHLD, reap_every_child, SA_RESTART | SA_NOCLDSTOP);
}

const char* name(Host host) { return host == Host::sigchld_ignored ? "SIGCHLD ignored" : "SIGCHLD reaped by a handler"; }

// One pipeline of short-lived replicas; returns whether its answer was right (prints otherwise).
bool short_run_is_right(int round) {
  try {
    if (round % 2 == 0) {
      const auto r = pf::pipeline("short")
                         .source("n", pf::iota(0, 64))
                         .map("m", [](int x) { return x + 1; }, pf::replicas(3))
                         .reduce("sum", 0, std::plus<>{}, std::plus<>{})
                         .run();
      if (r.value == 64 * 65 / 2) return true;
      std::fprintf(stderr, "round %d: sum %d\n", round, r.value);
    } else {
      const auto r = pf::pipeline("short gen")
                         .source("gen", [i = 0]() mutable -> std::optional<int> {
                           if (i < 20) return i++;
                           return std::nullopt;
                         })
                         .map("m", [](int x) { return 2 * x; }, pf::replicas(2))
                         .collect()
                         .run();
      if (r.value.size() == 20) return true;
      std::fprintf(stderr, "round %d: %zu items\n", round, r.value.size());
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "round %d: %s\n", round, e.what());
  }
  return false;
}

// Open pidfds of the calling process.
int pidfds_open() {
  int n = 0;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd", ec)) {
    char target[128] = {};
    const ssize_t len = ::readlink(e.path().c_str(), target, sizeof target - 1);
    const std::string_view link(target, len > 0 ? static_cast<std::size_t>(len) : 0);
    if (link == "anon_inode:[pidfd]" || link.starts_with("pidfd:")) ++n;
  }
  return n;
}

// The signals that stop a program, plus the two whose inherited setting changes a stage's I/O.
constexpr std::array<int, 6> stop_signals = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE, SIGCHLD};

// Bit k set: stop_signals[k] is not at a replica's disposition (SIG_IGN for SIGINT, which the
// supervisor decides on; SIG_DFL for the others), or is blocked, in this process.
int signal_setup_violations() {
  int bits = 0;
  sigset_t mask;
  ::pthread_sigmask(SIG_BLOCK, nullptr, &mask);
  for (std::size_t k = 0; k < stop_signals.size(); ++k) {
    struct sigaction a {};
    ::sigaction(stop_signals[k], nullptr, &a);
    const auto expected = stop_signals[k] == SIGINT ? SIG_IGN : SIG_DFL;
    const bool is_default = (a.sa_flags & SA_SIGINFO) == 0 && a.sa_handler == expected;
    if (!is_default || sigismember(&mask, stop_signals[k])) bits |= 1 << k;
  }
  return bits;
}

// Waits up to `timeout` for `fd` to be readable and reads one byte; nullopt: end of file or timeout.
std::optional<char> read_byte(int fd, std::chrono::milliseconds timeout) {
  pollfd p{fd, POLLIN, 0};
  char byte = 0;
  if (::poll(&p, 1, static_cast<int>(timeout.count())) == 1 && ::read(fd, &byte, 1) == 1) return byte;
  return std::nullopt;
}

// Reads everything from `fd` until end of file or `timeout`.
std::string read_all(int fd, std::chrono::milliseconds timeout) {
  std::string out;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) break;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
    char buf[4096];
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0) break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  return out;
}

}  // namespace

// ------------------------------------------------------------------ ChildSet itself

TEST_CASE("ChildSet reports exit codes and signals, signals through pidfds, and says when a status was taken by someone else") {
  expect_child_succeeds(
      [] {
        {
          pf::process::ChildSet children;
          children.spawn([] { return 3; });
          auto exit = children.wait_any(10s);
          CHILD_CHECK(exit && exit->status_known && WIFEXITED(exit->status) && WEXITSTATUS(exit->status) == 3);
          // A child that waits for a signal; the host ignores SIGTERM and blocks it, the child
          // must still die by it.
          SignalGuard ignore_term(SIGTERM, SIG_IGN);
          sigset_t term;
          sigemptyset(&term);
          sigaddset(&term, SIGTERM);
          ::pthread_sigmask(SIG_BLOCK, &term, nullptr);
          const std::size_t sleeper = children.spawn([] {
            for (;;) ::pause();
            return 0;
          });
          ::pthread_sigmask(SIG_UNBLOCK, &term, nullptr);
          CHILD_CHECK(!children.wait_any(50ms));
          children.signal_all(SIGTERM);
          exit = children.wait_any(10s);
          CHILD_CHECK(exit && exit->index == sleeper && exit->status_known);
          CHILD_CHECK(WIFSIGNALED(exit->status) && WTERMSIG(exit->status) == SIGTERM);
          CHILD_CHECK(children.running() == 0);
        }
        {
          const auto ignored = install(Host::sigchld_ignored);
          pf::process::ChildSet children;
          for (int i = 0; i < 50; ++i) children.spawn([] { return 3; });
          for (int i = 0; i < 50; ++i) {
            const auto exit = children.wait_any(10s);
            CHILD_CHECK(exit && !exit->status_known);  // the kernel reaped it: nobody can know
          }
        }
        CHILD_CHECK(pt::count_children() == 0);
        return 0;
      },
      60s);
}

// ------------------------------------------------------------------ point 5: SIGCHLD set up by the host

TEST_CASE("run() succeeds every time when the host ignores SIGCHLD or reaps every child (pidfd race)") {
  // Before the fix most of these runs failed ("cannot open a pidfd for replica process N: No
  // such process"); after it, 1000 of 1000 of each passed (PROCFLOW_SIGCHLD_RUNS=1000). The
  // suite keeps 300 of each: a run costs ~40 ms under ASan on a loaded machine.
  const int runs = runs_from_env("PROCFLOW_SIGCHLD_RUNS", 300);
  for (const Host host : {Host::sigchld_ignored, Host::sigchld_reaped}) {
    CAPTURE(name(host));
    expect_child_succeeds(
        [&] {
          const auto guard = install(host);
          int failures = 0;
          for (int round = 0; round < runs; ++round) failures += short_run_is_right(round) ? 0 : 1;
          std::fprintf(stderr, "%s: %d of %d runs failed\n", name(host), failures, runs);
          CHILD_CHECK(failures == 0);
          CHILD_CHECK(pt::count_children() == 0);
          return 0;
        },
        180s);
  }
}

TEST_CASE("a replica that fails or crashes is reported even when someone else took its exit status") {
  for (const Host host : {Host::sigchld_ignored, Host::sigchld_reaped}) {
    CAPTURE(name(host));
    expect_child_succeeds(
        [&] {
          const auto guard = install(host);
          SignalGuard default_abort(SIGABRT, SIG_DFL);  // not doctest's crash report, in replicas
          for (int round = 0; round < 20; ++round) {
            // An exception: the record says failed, the stage and message come from it.
            try {
              pf::pipeline("throws")
                  .source("n", pf::iota(0, 1000))
                  .map("boom", [](int x) { return x == 500 ? throw std::runtime_error("item 500 is bad") : x; }, pf::replicas(2))
                  .reduce("sum", 0, std::plus<>{}, std::plus<>{})
                  .run();
              CHILD_FAIL("a throwing stage returned normally");
            } catch (const pf::stage_error& e) {
              CHILD_CHECK(e.kind() == pf::stage_error::cause::exception);
              CHILD_CHECK(e.stage() == "boom");
              CHILD_CHECK(std::string(e.what()).find("item 500 is bad") != std::string::npos);
            }
            // A crash and an early exit: the record says running. The status may be lost, the
            // failure never is.
            for (const int how : {0, 1}) {
              try {
                pf::pipeline("crashes")
                    .source("n", pf::iota(0, 1000))
                    .map("die", [how](int x) {
                      if (x == 500) {
                        if (how == 0) std::abort();
                        ::_exit(0);
                      }
                      return x;
                    }, pf::replicas(2))
                    .reduce("sum", 0, std::plus<>{}, std::plus<>{})
                    .run();
                CHILD_FAIL("a crashing stage returned normally");
              } catch (const pf::stage_error& e) {
                CHILD_CHECK(e.stage() == "die");
                if (how == 0)
                  CHILD_CHECK(e.kind() == pf::stage_error::cause::lost ||
                              (e.kind() == pf::stage_error::cause::signal && e.signal_number() == SIGABRT));
                else
                  CHILD_CHECK(e.kind() == pf::stage_error::cause::lost || e.kind() == pf::stage_error::cause::exit);
                if (e.kind() == pf::stage_error::cause::lost)
                  CHILD_CHECK(std::string(e.what()).find("exit status") != std::string::npos);
              }
            }
          }
          CHILD_CHECK(pt::count_children() == 0);
          return 0;
        },
        120s);
  }
}

// ------------------------------------------------------------------ point 6: inherited pidfds

TEST_CASE("a replica holds no pidfd of its siblings") {
  expect_child_succeeds(
      [] {
        // Six replicas in all; each of the four keyed reducers reports its pid and the pidfds it
        // holds (the last one forked held five before the fix).
        using Seen = std::pair<i64, i64>;  // pid, pidfds open
        const auto r = pf::pipeline("pidfds")
                           .source("n", pf::iota(0, 2000))
                           .map("id", [](int x) { return x; }, pf::replicas(2))
                           .reduce_by_key(
                               "check", [](int x) { return x; }, Seen{0, -1},
                               [](Seen, int) { return Seen{::getpid(), pidfds_open()}; },
                               [](Seen a, Seen b) { return a.first != 0 ? a : b; }, pf::replicas(4))
                           .run();
        CHILD_CHECK(r.value.size() == 2000);
        std::map<i64, i64> most_by_pid;
        for (const auto& [key, seen] : r.value) most_by_pid[seen.first] = std::max(most_by_pid[seen.first], seen.second);
        for (const auto& [pid, n] : most_by_pid) std::fprintf(stderr, "replica %lld: %lld pidfds\n", static_cast<long long>(pid), static_cast<long long>(n));
        CHILD_CHECK(most_by_pid.size() == 4);  // every reducer was looked at
        for (const auto& [pid, n] : most_by_pid) CHILD_CHECK(n == 0);
        return 0;
      },
      60s);
}

// ------------------------------------------------------------------ point 7: signal setup of a replica

TEST_CASE("replicas start with default dispositions and an unblocked mask for the signals that stop a program") {
  expect_child_succeeds(
      [] {
        SignalGuard int_flag(SIGINT, set_host_flag);
        SignalGuard hup_flag(SIGHUP, set_host_flag, SA_RESTART);
        SignalGuard term_ignored(SIGTERM, SIG_IGN);
        SignalGuard quit_ignored(SIGQUIT, SIG_IGN);
        SignalGuard pipe_ignored(SIGPIPE, SIG_IGN);
        SignalGuard chld_reaped(SIGCHLD, reap_every_child, SA_RESTART);
        sigset_t blocked;
        sigemptyset(&blocked);
        for (const int s : {SIGINT, SIGTERM, SIGHUP, SIGQUIT}) sigaddset(&blocked, s);
        ::pthread_sigmask(SIG_BLOCK, &blocked, nullptr);
        CHILD_CHECK(signal_setup_violations() != 0);  // the host really is set up otherwise
        const auto r = pf::pipeline("dispositions")
                           .source("gen", [i = 0]() mutable -> std::optional<int> {
                             if (i++ < 100) return signal_setup_violations();
                             return std::nullopt;
                           })
                           .map("check", [](int v) { return v | signal_setup_violations(); }, pf::replicas(2))
                           .reduce("or", 0, [](int a, int b) { return a | b; }, [](int a, int b) { return a | b; })
                           .run();
        ::pthread_sigmask(SIG_UNBLOCK, &blocked, nullptr);
        for (std::size_t k = 0; k < stop_signals.size(); ++k)
          if (r.value & (1 << k)) std::fprintf(stderr, "a replica inherited the host's setting of %s\n", strsignal(stop_signals[k]));
        CHILD_CHECK(r.value == 0);
        return 0;
      },
      60s);
}

TEST_CASE("SIGINT to the process group ends a run with interrupted even when the host program handles SIGINT") {
  int ready[2];
  REQUIRE(::pipe(ready) == 0);
  pt::ChildProcess host([&] {
    ::setpgid(0, 0);
    ::close(ready[0]);
    SignalGuard flag(SIGINT, set_host_flag);  // what many programs do: note it, poll it later
    try {
      // About 10 s uninterrupted: a generator of 1000 items, 10 ms apart.
      pf::pipeline("long")
          .source("gen", [i = 0, fd = ready[1]]() mutable -> std::optional<int> {
            if (i == 0) {
              const char byte = 'r';
              (void)!::write(fd, &byte, 1);
            }
            if (i >= 1000) return std::nullopt;
            std::this_thread::sleep_for(10ms);
            return i++;
          })
          .map("work", [](int x) { return x; }, pf::replicas(2))
          .reduce("sum", 0, std::plus<>{}, std::plus<>{})
          .run();
      std::fprintf(stderr, "run() returned normally after SIGINT (host flag %d)\n", int(host_flag));
      return 2;
    } catch (const pf::interrupted& e) {
      // Replicas ignore SIGINT: the supervisor alone decides, stops them and says so.
      std::fprintf(stderr, "run() threw: %s\n", e.what());
      CHILD_CHECK(e.signal() == SIGINT);
      CHILD_CHECK(std::string(e.what()).find("signal 2") != std::string::npos);
      CHILD_CHECK(host_flag == 1);  // the host's own handler still ran in the host
      CHILD_CHECK(pt::count_children() == 0);
      struct sigaction after {};
      ::sigaction(SIGINT, nullptr, &after);
      CHILD_CHECK(after.sa_handler == set_host_flag);  // the host's disposition is back
      return 0;
    } catch (const pf::stage_error& e) {
      std::fprintf(stderr, "run() threw a stage_error (a replica died of the group's SIGINT?): %s\n", e.what());
      return 3;
    }
  });
  ::setpgid(host.pid(), host.pid());  // either side may win; both set the same group
  ::close(ready[1]);
  const auto started = read_byte(ready[0], 30s);
  ::close(ready[0]);
  REQUIRE_MESSAGE(started == 'r', "the pipeline never started");
  std::this_thread::sleep_for(1s);
  REQUIRE(::kill(-host.pid(), SIGINT) == 0);
  const auto status = host.wait_for(30s);
  REQUIRE_MESSAGE(status.has_value(), "run() did not end within 30 s of SIGINT");
  CHECK(WIFEXITED(*status));
  CHECK_MESSAGE(WEXITSTATUS(*status) == 0, "exit status ", WEXITSTATUS(*status), " (2: run() ignored SIGINT)");
}

// ------------------------------------------------------------------ point 8: a stage's output

TEST_CASE("lines a stage writes with printf and with std::cout (sync_with_stdio(false)) arrive exactly once") {
  int out[2];
  REQUIRE(::pipe(out) == 0);
  pt::ChildProcess host([&] {
    ::close(out[0]);
    ::dup2(out[1], STDOUT_FILENO);
    ::close(out[1]);
    std::ios::sync_with_stdio(false);
    std::cout << "host before\n";  // buffered in the host when the replicas are forked
    std::printf("host printf before\n");
    const auto r = pf::pipeline("prints")
                       .source("n", pf::iota(0, 100))
                       .map("say", [](int x) {
                         std::printf("printf %d\n", x);
                         std::cout << "cout " << x << '\n';
                         return x;
                       }, pf::replicas(2))
                       .reduce("sum", 0, std::plus<>{}, std::plus<>{})
                       .run();
    std::cout << "host after " << r.value << '\n';
    std::cout.flush();
    return 0;
  });
  ::close(out[1]);
  const std::string text = read_all(out[0], 60s);
  ::close(out[0]);
  const auto status = host.wait_for(10s);
  REQUIRE(status.has_value());
  CHECK(WIFEXITED(*status));
  CHECK(WEXITSTATUS(*status) == 0);
  std::map<std::string, int> count;
  std::size_t begin = 0;
  while (begin < text.size()) {
    const auto end = text.find('\n', begin);
    count[text.substr(begin, end - begin)]++;
    if (end == std::string::npos) break;
    begin = end + 1;
  }
  int printf_lines = 0, cout_lines = 0;
  for (int i = 0; i < 100; ++i) {
    printf_lines += count["printf " + std::to_string(i)] == 1 ? 1 : 0;
    cout_lines += count["cout " + std::to_string(i)] == 1 ? 1 : 0;
  }
  CHECK(printf_lines == 100);
  CHECK(cout_lines == 100);
  CHECK(count["host before"] == 1);
  CHECK(count["host printf before"] == 1);
  CHECK(count["host after 4950"] == 1);
  CHECK(count.size() == 203);  // nothing else, nothing doubled
}

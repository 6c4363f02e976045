// Checks SPEC §4 / issue 8 "Termination", from outside the process that calls run():
//  - SIGTERM to the supervisor alone, SIGINT to the whole process group: one orderly shutdown,
//    run() throws procflow::interrupted naming the signal, clean (no child, no new /dev/shm
//    entry, no leaked fd), the host's dispositions are back, and a run right after works;
//  - a second SIGINT while the supervisor is busy in user code ends the process at once;
//  - the supervisor SIGKILLed: every replica exits (PR_SET_PDEATHSIG), nothing in /dev/shm;
//  - a cancel_source stops a run from a signal handler and from another thread;
//  - a SIGUSR1 storm (the host has a handler without SA_RESTART) and SIGSTOP / SIGCONT of the
//    whole group never turn a wait into an error, a hang or a lost item;
//  - run() with other threads alive throws unless pf::allow_threads.
// Every case runs in a child of the test in its own process group (the signals the test sends
// reach nobody else) under ChildProcess::wait_for, so a hang fails the case instead of CI.
#include "support/child_process.hpp"

#include <procflow/procflow.hpp>

#include <doctest/doctest.h>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace pf = procflow;
namespace pt = procflow::test;
using i64 = std::int64_t;
using namespace std::chrono_literals;

namespace {

std::size_t open_fds() {
  std::size_t n = 0;
  std::error_code ec;
  for (std::filesystem::directory_iterator it("/proc/self/fd", ec), end; !ec && it != end; it.increment(ec)) ++n;
  return n;
}

// What "clean" compares: children, /dev/shm entries, open descriptors.
struct Snapshot {
  int children = pt::count_children();
  std::set<std::string> shm = pt::dev_shm_entries();
  std::size_t fds = open_fds();
};

bool clean_since(const Snapshot& before) {
  const Snapshot now;
  if (now.children != 0 || now.shm != before.shm || now.fds != before.fds) {
    std::fprintf(stderr, "not clean: %d children, /dev/shm %zu -> %zu entries, fds %zu -> %zu\n", now.children,
                 before.shm.size(), now.shm.size(), before.fds, now.fds);
    return false;
  }
  return true;
}

// Waits up to `timeout` for a byte on `fd`.
std::optional<char> read_byte(int fd, std::chrono::milliseconds timeout) {
  pollfd p{fd, POLLIN, 0};
  char byte = 0;
  if (::poll(&p, 1, static_cast<int>(timeout.count())) == 1 && ::read(fd, &byte, 1) == 1) return byte;
  return std::nullopt;
}

void say(int fd, char byte) { (void)!::write(fd, &byte, 1); }

// A run of about 10 s unless stopped: a generator of 1000 items 10 ms apart that says 'r' on
// `ready` when it starts, a map with 2 replicas, a sum.
i64 long_run(int ready, const pf::pipeline_builder& p) {
  return p.source("gen", [i = 0, ready]() mutable -> std::optional<int> {
            if (i == 0) say(ready, 'r');
            if (i >= 1000) return std::nullopt;
            std::this_thread::sleep_for(10ms);
            return i++;
          })
      .map("work", [](int x) { return i64{x}; }, pf::replicas(2))
      .reduce("sum", i64{0}, std::plus<>{}, std::plus<>{})
      .run()
      .value;
}

// A short run that must work after an interrupted one.
bool next_run_works() {
  const auto r = pf::pipeline("after")
                     .source("n", pf::iota<i64>(0, 10000))
                     .map("m", [](i64 x) { return x + 1; }, pf::replicas(2))
                     .reduce("sum", i64{0}, std::plus<>{}, std::plus<>{})
                     .run();
  return r.value == 10000 * 10001 / 2;
}

bool is_default(int signal) {
  struct sigaction a {};
  ::sigaction(signal, nullptr, &a);
  return (a.sa_flags & SA_SIGINFO) == 0 && a.sa_handler == SIG_DFL;
}

// A host program in its own process group that runs `body` and tells the test it started
// (through the pipe `ready`, written by the body's pipeline). `signal_it(pid)` is sent once the
// pipeline runs; the host must then exit 0 (checks passed) within `timeout`.
struct Host {
  int ready[2] = {-1, -1};
  std::optional<pt::ChildProcess> child;

  explicit Host(const std::function<int(int ready_fd)>& body) {
    REQUIRE(::pipe(ready) == 0);
    child.emplace([&] {
      ::setpgid(0, 0);
      ::close(ready[0]);
      // A program of its own: not doctest's crash handlers (inherited through fork), which the
      // supervisor would chain to.
      for (const int s : {SIGINT, SIGTERM}) ::signal(s, SIG_DFL);
      return body(ready[1]);
    });
    ::setpgid(child->pid(), child->pid());  // either side may win; both set the same group
    ::close(ready[1]);
  }
  ~Host() { ::close(ready[0]); }

  void wait_started() {
    const auto started = read_byte(ready[0], 30s);
    REQUIRE_MESSAGE(started == 'r', "the pipeline never started");
  }
  std::optional<int> wait_for(std::chrono::milliseconds timeout) { return child->wait_for(timeout); }
  pid_t pid() const { return child->pid(); }
};

void expect_exit_0(const std::optional<int>& status, const char* what) {
  REQUIRE_MESSAGE(status.has_value(), what, ": the host did not end in time (killed)");
  CHECK_MESSAGE(WIFEXITED(*status), what, ": the host died by signal ", WTERMSIG(*status));
  if (WIFEXITED(*status)) CHECK_MESSAGE(WEXITSTATUS(*status) == 0, what, ": the host exited ", WEXITSTATUS(*status));
}

// The host side of the SIGTERM / SIGINT cases: run, expect interrupted(expected), clean, host
// dispositions back, next run fine.
int expect_interrupted(int ready, int expected) {
  const Snapshot before;
  try {
    long_run(ready, pf::pipeline("long"));
    std::fprintf(stderr, "run() returned normally\n");
    return 2;
  } catch (const pf::interrupted& e) {
    std::fprintf(stderr, "run() threw: %s\n", e.what());
    CHILD_CHECK(e.signal() == expected);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "run() threw something else: %s\n", e.what());
    return 3;
  }
  CHILD_CHECK(clean_since(before));
  CHILD_CHECK(is_default(SIGINT) && is_default(SIGTERM));
  CHILD_CHECK(next_run_works());
  CHILD_CHECK(clean_since(before));
  return 0;
}

}  // namespace

TEST_CASE("SIGTERM to the supervisor alone: interrupted(SIGTERM), clean, dispositions back, next run works") {
  Host host([](int ready) { return expect_interrupted(ready, SIGTERM); });
  host.wait_started();
  std::this_thread::sleep_for(200ms);
  REQUIRE(::kill(host.pid(), SIGTERM) == 0);
  expect_exit_0(host.wait_for(30s), "SIGTERM");
}

TEST_CASE("SIGINT to the whole process group (Ctrl-C): replicas ignore it, the supervisor stops the run") {
  Host host([](int ready) { return expect_interrupted(ready, SIGINT); });
  host.wait_started();
  std::this_thread::sleep_for(200ms);
  REQUIRE(::kill(-host.pid(), SIGINT) == 0);
  expect_exit_0(host.wait_for(30s), "SIGINT to the group");
}

TEST_CASE("SIGTERM to the whole process group: interrupted(SIGTERM), not a replica's stage_error") {
  Host host([](int ready) { return expect_interrupted(ready, SIGTERM); });
  host.wait_started();
  std::this_thread::sleep_for(200ms);
  REQUIRE(::kill(-host.pid(), SIGTERM) == 0);
  expect_exit_0(host.wait_for(30s), "SIGTERM to the group");
}

TEST_CASE("a second SIGINT while the supervisor is busy in user code ends the process at once, replicas too") {
  int pids[2];
  REQUIRE(::pipe(pids) == 0);
  Host host([&](int ready) {
    ::close(pids[0]);
    const pid_t supervisor = ::getpid();
    // The combine runs in the supervisor when merging the replicas' partials: there it takes
    // 60 s, so the first SIGINT cannot be acted on before it returns.
    pf::pipeline("stuck")
        .source("n", pf::iota<i64>(0, 1000))
        .map("m", [fd = pids[1]](i64 x) {
          static bool told = false;
          if (!told) {
            const pid_t me = ::getpid();
            (void)!::write(fd, &me, sizeof me);
            told = true;
          }
          return x;
        }, pf::replicas(2))
        .reduce("sum", i64{0}, std::plus<>{}, [supervisor, ready](i64 a, i64 b) {
          if (::getpid() == supervisor) {
            say(ready, 'r');
            std::this_thread::sleep_for(60s);
          }
          return a + b;
        })
        .run();
    return 2;
  });
  ::close(pids[1]);
  host.wait_started();
  REQUIRE(::kill(-host.pid(), SIGINT) == 0);
  std::this_thread::sleep_for(200ms);
  REQUIRE(::kill(-host.pid(), SIGINT) == 0);
  const auto status = host.wait_for(10s);
  REQUIRE_MESSAGE(status.has_value(), "the second SIGINT did not end the process (killed after 10 s)");
  CHECK_MESSAGE(WIFSIGNALED(*status), "expected death by SIGINT, got wait status ", *status);
  if (WIFSIGNALED(*status)) CHECK(WTERMSIG(*status) == SIGINT);
  ::close(pids[0]);
}

namespace {

// True when `pid` no longer runs (gone, or a zombie waiting for whoever adopted it).
bool ended(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string text;
  if (!std::getline(stat, text)) return true;
  const auto close = text.rfind(')');
  return close != std::string::npos && close + 2 < text.size() && (text[close + 2] == 'Z' || text[close + 2] == 'X');
}

}  // namespace

TEST_CASE("supervisor SIGKILLed: every replica exits, nothing left in /dev/shm") {
  const auto shm_before = pt::dev_shm_entries();
  int pids[2];
  REQUIRE(::pipe(pids) == 0);
  Host host([&](int ready) {
    ::close(pids[0]);
    try {
      pf::pipeline("killed")
          .source("gen", [i = 0, ready]() mutable -> std::optional<int> {
            if (i >= 100000) return std::nullopt;
            std::this_thread::sleep_for(1ms);
            return i++;
          })
          .map("m", [fd = pids[1], ready](int x) {
            static bool told = false;
            if (!told) {
              const pid_t me = ::getpid();
              (void)!::write(fd, &me, sizeof me);
              say(ready, 'r');
              told = true;
            }
            return i64{x};
          }, pf::replicas(3))
          .reduce("sum", i64{0}, std::plus<>{}, std::plus<>{})
          .run();
    } catch (...) {
    }
    return 2;
  });
  ::close(pids[1]);
  host.wait_started();
  // All three map replicas have said who they are once three pids arrived.
  std::vector<pid_t> replicas;
  const auto deadline = std::chrono::steady_clock::now() + 30s;
  while (replicas.size() < 3 && std::chrono::steady_clock::now() < deadline) {
    pollfd p{pids[0], POLLIN, 0};
    if (::poll(&p, 1, 100) != 1) continue;
    pid_t pid = 0;
    if (::read(pids[0], &pid, sizeof pid) == sizeof pid) replicas.push_back(pid);
  }
  ::close(pids[0]);
  REQUIRE(replicas.size() == 3);
  REQUIRE(::kill(host.pid(), SIGKILL) == 0);
  host.wait_for(10s);
  // PR_SET_PDEATHSIG kills them at once; 10 s is only a watchdog for a loaded machine.
  const auto watchdog = std::chrono::steady_clock::now() + 10s;
  for (const pid_t pid : replicas) {
    while (!ended(pid) && std::chrono::steady_clock::now() < watchdog) std::this_thread::sleep_for(5ms);
    CHECK_MESSAGE(ended(pid), "replica ", pid, " outlived its SIGKILLed supervisor");
  }
  CHECK(pt::dev_shm_entries() == shm_before);
}

namespace {

pf::cancel_source* handler_source = nullptr;
void request_stop_from_handler(int) { handler_source->request_stop(); }

}  // namespace

TEST_CASE("a cancel_source stops a run from the program's own signal handler (SIGUSR2 sent from outside)") {
  Host host([](int ready) {
    pf::cancel_source stop;
    handler_source = &stop;
    struct sigaction a {};
    a.sa_handler = request_stop_from_handler;
    sigemptyset(&a.sa_mask);
    ::sigaction(SIGUSR2, &a, nullptr);
    const Snapshot before;
    try {
      long_run(ready, pf::pipeline("long", pf::cancel_with(stop)));
      return 2;
    } catch (const pf::interrupted& e) {
      std::fprintf(stderr, "run() threw: %s\n", e.what());
      CHILD_CHECK(e.signal() == 0);
      CHILD_CHECK(stop.stop_requested());
    }
    CHILD_CHECK(clean_since(before));
    // The request stands: a run given the source throws before forking; reset() withdraws it.
    try {
      pf::pipeline("again", pf::cancel_with(stop)).source("n", pf::iota(0, 10)).collect().run();
      return 4;
    } catch (const pf::interrupted& e) {
      CHILD_CHECK(e.signal() == 0);
    }
    stop.reset();
    const auto r = pf::pipeline("reset", pf::cancel_with(stop)).source("n", pf::iota(0, 10)).map("m", [](int x) { return x; }, pf::replicas(2)).collect().run();
    CHILD_CHECK(r.value.size() == 10);
    CHILD_CHECK(clean_since(before));
    return 0;
  });
  host.wait_started();
  std::this_thread::sleep_for(200ms);
  REQUIRE(::kill(host.pid(), SIGUSR2) == 0);
  expect_exit_0(host.wait_for(30s), "cancel from a signal handler");
}

TEST_CASE("a cancel_source stops a run from another thread (allow_threads)") {
  Host host([](int ready) {
    pf::cancel_source stop;
    int inner[2];
    CHILD_CHECK(::pipe(inner) == 0);
    std::thread canceller([&] {
      if (read_byte(inner[0], 30s)) {
        std::this_thread::sleep_for(200ms);
        stop.request_stop();
      }
    });
    int rc = 0;
    try {
      long_run(inner[1], pf::pipeline("long", pf::cancel_with(stop), pf::allow_threads));
      rc = 2;
    } catch (const pf::interrupted& e) {
      rc = e.signal() == 0 ? 0 : 5;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "run() threw: %s\n", e.what());
      rc = 3;
    }
    ::close(inner[1]);
    canceller.join();
    ::close(inner[0]);
    say(ready, 'r');
    return rc;
  });
  host.wait_started();
  expect_exit_0(host.wait_for(30s), "cancel from a thread");
}

TEST_CASE("run() with another thread alive throws a clear error unless allow_threads") {
  Host host([](int ready) {
    say(ready, 'r');
    std::atomic<bool> done{false};  // the helper thread's stop flag (seq_cst, two threads only)
    std::thread other([&] {
      while (!done) std::this_thread::sleep_for(1ms);
    });
    int rc = 0;
    try {
      pf::pipeline("threads").source("n", pf::iota(0, 10)).collect().run();
      std::fprintf(stderr, "run() did not notice the other thread\n");
      rc = 2;
    } catch (const pf::error& e) {
      const std::string what = e.what();
      std::fprintf(stderr, "run() threw: %s\n", e.what());
      if (what.find("2 threads") == std::string::npos || what.find("allow_threads") == std::string::npos) rc = 3;
    }
    if (rc == 0) {
      const auto r = pf::pipeline("threads", pf::allow_threads).source("n", pf::iota(0, 10)).map("m", [](int x) { return x; }, pf::replicas(2)).collect().run();
      if (r.value.size() != 10) rc = 4;
    }
    done = true;
    other.join();
    return rc;
  });
  host.wait_started();
  expect_exit_0(host.wait_for(30s), "threads");
}

TEST_CASE("a SIGUSR1 storm (host handler, no SA_RESTART) and SIGSTOP / SIGCONT of the group lose nothing") {
  constexpr i64 items = 3000;
  Host host([](int ready) {
    struct sigaction a {};
    a.sa_handler = [](int) {};
    a.sa_flags = 0;  // no SA_RESTART: every blocking call in every process sees EINTR
    sigemptyset(&a.sa_mask);
    ::sigaction(SIGUSR1, &a, nullptr);
    const Snapshot before;
    try {
      const auto r = pf::pipeline("storm", pf::batch_bytes(256), pf::ring_slots(2))
                         .source("gen", [i = i64{0}, ready]() mutable -> std::optional<i64> {
                           if (i == 0) say(ready, 'r');
                           if (i >= items) return std::nullopt;
                           if (i % 8 == 0) std::this_thread::sleep_for(1ms);
                           return i++;
                         })
                         .map("m", [](i64 x) { return x * 3; }, pf::replicas(2))
                         .map("n", [](i64 x) { return x + 1; }, pf::replicas(2), pf::own_process)
                         .reduce("sum", std::pair<i64, i64>{0, 0}, [](std::pair<i64, i64> acc, i64 x) { return std::pair<i64, i64>{acc.first + 1, acc.second + x}; },
                                 [](std::pair<i64, i64> x, std::pair<i64, i64> y) { return std::pair<i64, i64>{x.first + y.first, x.second + y.second}; })
                         .run();
      CHILD_CHECK(r.value.first == items);
      CHILD_CHECK(r.value.second == 3 * (items * (items - 1) / 2) + items);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "run() threw: %s\n", e.what());
      return 3;
    }
    CHILD_CHECK(clean_since(before));
    return 0;
  });
  host.wait_started();
  std::atomic<bool> stop{false};  // ends the stopper thread (seq_cst; test process only)
  std::thread stopper([&] {
    while (!stop) {
      std::this_thread::sleep_for(30ms);
      ::kill(-host.pid(), SIGSTOP);
      std::this_thread::sleep_for(10ms);
      ::kill(-host.pid(), SIGCONT);
    }
  });
  // The storm lasts until the host ended (seen without reaping it: WNOWAIT), at most 200000 signals.
  for (int round = 0; round < 200000; ++round) {
    ::kill(-host.pid(), SIGUSR1);
    if (round % 64 != 0) continue;
    siginfo_t info{};
    if (::waitid(P_PID, static_cast<id_t>(host.pid()), &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info.si_pid == host.pid()) break;
  }
  stop = true;
  stopper.join();
  ::kill(-host.pid(), SIGCONT);
  expect_exit_0(host.wait_for(60s), "storm");
}

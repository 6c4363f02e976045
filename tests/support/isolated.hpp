// Test support: run a piece of a test in a child process under a watchdog.
//
// run_isolated(what, timeout, body) forks (ChildProcess), runs `body` in the child and waits at
// most `timeout`. A hang fails the calling test with a message naming `what` (the test case, the
// seed, ...) instead of a bare ctest timeout, and the child with every replica it started is
// killed (replicas die with their supervisor: PR_SET_PDEATHSIG). The doctest checks made in the
// child count: their failures are printed by the child as usual, and a child that failed one (or
// threw, or died) fails the parent's test naming `what`. Anything the body does to the process
// (signal dispositions, stream settings, leaked children) ends with the child.
#pragma once

#include "support/child_process.hpp"

#include <doctest/doctest.h>

#include <chrono>
#include <cstddef>
#include <cstdio>
#include <exception>
#include <functional>
#include <iostream>
#include <string>

namespace procflow::test {

// Failed doctest assertions (and FAIL/FAIL_CHECK messages) so far in this process
// (tests/support/doctest_main.cpp counts them with a doctest listener).
std::size_t failed_assertions();
// "'test case' / 'subcase' / ..." being run, for messages.
std::string current_test_name();

// How a body run in a child ended.
enum class isolated_outcome { passed, checks_failed, threw, died, exited, timed_out };

struct isolated_result {
  isolated_outcome outcome = isolated_outcome::passed;
  int detail = 0;  // the signal (died) or exit status (exited)
};

inline constexpr int isolated_checks_failed = 1;  // exit statuses of the child
inline constexpr int isolated_threw = 97;

// Runs `body` in a child process and reports how it ended; does not check anything itself.
inline isolated_result run_in_child(const std::string& what, std::chrono::milliseconds timeout, const std::function<void()>& body) {
  ChildProcess child([&]() -> int {
    const std::size_t failed_before = failed_assertions();
    int rc = 0;
    try {
      body();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "%s: uncaught exception: %s\n", what.c_str(), e.what());
      rc = isolated_threw;
    } catch (...) {
      // doctest's REQUIRE throws a type of its own after printing the failure.
      rc = isolated_threw;
    }
    if (rc == 0 && failed_assertions() != failed_before) rc = isolated_checks_failed;
    std::cout.flush();
    std::cerr.flush();
    return rc;
  });
  const auto status = child.wait_for(timeout);
  if (!status) return {isolated_outcome::timed_out, 0};
  if (WIFSIGNALED(*status)) return {isolated_outcome::died, WTERMSIG(*status)};
  const int code = WIFEXITED(*status) ? WEXITSTATUS(*status) : -1;
  if (code == 0) return {isolated_outcome::passed, 0};
  if (code == isolated_checks_failed) return {isolated_outcome::checks_failed, code};
  if (code == isolated_threw) return {isolated_outcome::threw, code};
  return {isolated_outcome::exited, code};
}

// Runs `body` in a child process; see the file comment. Returns true if the body passed.
inline bool run_isolated(const std::string& what, std::chrono::milliseconds timeout, const std::function<void()>& body) {
  const isolated_result r = run_in_child(what, timeout, body);
  switch (r.outcome) {
    case isolated_outcome::passed: return true;
    case isolated_outcome::timed_out:
      FAIL_CHECK(what, ": no result within ", static_cast<double>(timeout.count()) / 1000.0,
                 " s (a hang); the child and its replicas were killed");
      break;
    case isolated_outcome::died: FAIL_CHECK(what, ": the child running it died by signal ", r.detail); break;
    case isolated_outcome::checks_failed: FAIL_CHECK(what, ": checks failed in the child running it (printed above)"); break;
    case isolated_outcome::threw: FAIL_CHECK(what, ": the child running it threw or failed a REQUIRE (printed above)"); break;
    case isolated_outcome::exited: FAIL_CHECK(what, ": the child running it exited with status ", r.detail); break;
  }
  return false;
}

// The same, named after the current test case and subcase.
inline bool run_isolated(std::chrono::milliseconds timeout, const std::function<void()>& body) {
  return run_isolated(current_test_name(), timeout, body);
}

}  // namespace procflow::test

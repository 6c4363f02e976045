// Checks tests/support/isolated.hpp, the watchdog every runtime test runs its cases under: a body
// that passes, fails a check, throws, dies or hangs in its child is told apart in the parent, and a
// hang ends at the timeout with the child killed. (The failures printed by this test's children
// are expected.)
#include "support/isolated.hpp"

#include <doctest/doctest.h>

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <stdexcept>
#include <thread>

namespace pt = procflow::test;
using namespace std::chrono_literals;
using pt::isolated_outcome;

TEST_CASE("run_in_child tells a pass, a failed check, a throw, a death and a hang apart") {
  CHECK(pt::run_in_child("pass", 10s, [] { CHECK(1 + 1 == 2); }).outcome == isolated_outcome::passed);
  MESSAGE("the next four failures and an exception, printed by children, are expected");
  CHECK(pt::run_in_child("check", 10s, [] { CHECK_MESSAGE(1 + 1 == 3, "expected failure"); }).outcome == isolated_outcome::checks_failed);
  CHECK(pt::run_in_child("fail_check", 10s, [] { FAIL_CHECK("expected failure"); }).outcome == isolated_outcome::checks_failed);
  CHECK(pt::run_in_child("require", 10s, [] { REQUIRE_MESSAGE(false, "expected failure"); }).outcome == isolated_outcome::threw);
  CHECK(pt::run_in_child("throw", 10s, [] { throw std::runtime_error("expected exception"); }).outcome == isolated_outcome::threw);
  const auto died = pt::run_in_child("die", 10s, [] { ::kill(::getpid(), SIGKILL); });
  CHECK(died.outcome == isolated_outcome::died);
  CHECK(died.detail == SIGKILL);
  const auto exited = pt::run_in_child("exit", 10s, [] { ::_exit(5); });
  CHECK(exited.outcome == isolated_outcome::exited);
  CHECK(exited.detail == 5);
  // The parent's own count is untouched by its children's failures.
  CHECK(pt::failed_assertions() == 0);
}

TEST_CASE("run_in_child ends a hang at its timeout and kills the child") {
  const auto r = pt::run_in_child("hang", 300ms, [] {
    for (;;) std::this_thread::sleep_for(1s);
  });
  CHECK(r.outcome == isolated_outcome::timed_out);
  CHECK(pt::count_children() == 0);
}

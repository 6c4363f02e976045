// Checks issue 7's counter accounting on real pipelines: per replica, busy, starved and blocked
// are disjoint and, with the runtime's own time, add up to the replica's wall time; waiting for
// room downstream is blocked (not busy) time, waiting for input is starved time, a stage that
// burns a known time per item shows that busy time, and items in and out match the data.
//
// Timing tolerances are generous (the machine may be loaded); each check still fails when time
// is counted twice or not at all: blocked counted as busy makes busy + blocked exceed the wall
// time by the blocked time, and a wait left out shows as a large runtime share.
#include "support/cleanup_check.hpp"

#include <procflow/procflow.hpp>

#include <doctest/doctest.h>

#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <set>
#include <string>

namespace pf = procflow;
namespace pt = procflow::test;
using i64 = std::int64_t;

namespace {

using CleanupCheck = pt::CleanupCheck;

// Burns `us` microseconds of wall time (a stage with a known cost per item).
void spin_us(int us) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(us);
  while (std::chrono::steady_clock::now() < until) {
  }
}

std::int64_t thread_cpu_ns() {
  timespec t{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<std::int64_t>(t.tv_sec) * 1'000'000'000 + t.tv_nsec;
}

// Burns `us` microseconds of this thread's CPU time (however long a loaded machine makes it).
void burn_cpu_us(int us) {
  const std::int64_t until = thread_cpu_ns() + std::int64_t{us} * 1000;
  while (thread_cpu_ns() < until) {
  }
}

// The accounting invariant, for every replica of the run.
void check_accounting(const pf::run_report& report) {
  INFO(report.to_string(true));
  REQUIRE(!report.replica_rows.empty());
  for (const auto& r : report.replica_rows) {
    INFO("replica " << r.replica << " of group " << r.process_group << " (" << r.stages << ")");
    CHECK(r.wall_s > 0);
    CHECK(r.wall_s <= report.wall_s + 1e-3);
    CHECK(r.busy_s >= 0);
    CHECK(r.starved_s >= 0);
    CHECK(r.blocked_s >= 0);
    // Disjoint: no time counted twice (1 ms for clock reads at the edges).
    CHECK(r.busy_s + r.starved_s + r.blocked_s <= r.wall_s + 1e-3);
    // Complete: what is left is the runtime's own work (start-up, between batches, finishing),
    // small beside the run, apart from time the replica was off its CPU while neither starved nor
    // blocked (a loaded machine preempting it: wall time that is no one's work).
    // Not under sanitizers: they slow the runtime's own code several times over, not user code.
#if !defined(PROCFLOW_SANITIZED)
    const double preempted = std::max(0.0, r.busy_s + r.runtime_s - (r.cpu_user_s + r.cpu_system_s));
    CHECK(r.runtime_s <= 0.10 * r.wall_s + 0.030 + preempted);
#endif
  }
}

const pf::replica_report& replica_of(const pf::run_report& report, const std::string& stages, std::uint32_t k = 0) {
  for (const auto& r : report.replica_rows)
    if (r.stages == stages && r.replica == k) return r;
  FAIL("no replica " << k << " running " << stages);
  throw std::logic_error("unreachable");
}

}  // namespace

TEST_CASE("waiting for room downstream is blocked time, not busy time") {
  CleanupCheck cleanup;
  constexpr i64 n = 10'000;
  // A trivial map feeding a 50 us stage: the map spends its life waiting on a full ring.
  auto r = pf::pipeline("blocked", pf::fusion(false), pf::batch_bytes(512))
               .source("numbers", pf::iota<i64>(0, n))
               .map("trivial", [](i64 x) { return x + 1; })
               .map("slow", [](i64 x) {
                 spin_us(50);
                 return x;
               })
               .reduce("sum", i64{0}, std::plus<>{}, std::plus<>{})
               .run();
  CHECK(r.value == n * (n + 1) / 2);
  check_accounting(r.report);
  INFO(r.report.to_string(true));
  const auto& trivial = replica_of(r.report, "trivial");
  CHECK(trivial.blocked_s > 0.5 * trivial.wall_s);
  CHECK(trivial.busy_s < 0.1 * trivial.wall_s);
  const auto& slow = replica_of(r.report, "slow");
  CHECK(slow.busy_s > 0.5 * slow.wall_s);
  CHECK(r.report.bottleneck()->name == "slow");
  // The stage rows carry the same split.
  CHECK(r.report.stages[1].blocked_s > 10 * r.report.stages[1].busy_s);
}

TEST_CASE("waiting for input, up to the end of the stream, is starved time") {
  CleanupCheck cleanup;
  constexpr i64 n = 2'000;
  // A slow generator: both consumer replicas wait for it all along, and one of them also waits
  // for the end of the stream after the last batch went to the other.
  auto r = pf::pipeline("starved", pf::fusion(false))
               .source("gen",
                       [i = i64{0}]() mutable -> std::optional<i64> {
                         if (i >= n) return std::nullopt;
                         spin_us(200);
                         return i++;
                       })
               .map("fast", [](i64 x) { return x; }, pf::replicas(2))
               .sink("drop", [](i64) {}, pf::replicas(2))
               .run();
  check_accounting(r.report);
  INFO(r.report.to_string(true));
  for (std::uint32_t k = 0; k < 2; ++k) {
    const auto& fast = replica_of(r.report, "fast", k);
    CHECK(fast.starved_s > 0.5 * fast.wall_s);
    const auto& drop = replica_of(r.report, "drop", k);
    CHECK(drop.starved_s > 0.5 * drop.wall_s);
  }
  CHECK(r.report.bottleneck()->name == "gen");
  CHECK(r.report.stages[1].items_in == static_cast<std::uint64_t>(n));
  CHECK(r.report.stages[2].items_in == static_cast<std::uint64_t>(n));
}

TEST_CASE("a replica idle at the end of the stream counts that wait as starved") {
  CleanupCheck cleanup;
  constexpr i64 n = 100;
  // The last item costs 400 ms in whichever replica gets it; the other replica has nothing left
  // and waits for the end of the stream all that time.
  auto r = pf::pipeline("idle_at_end", pf::fusion(false), pf::max_latency(std::chrono::milliseconds(0)))
               .source("gen",
                       [i = i64{0}]() mutable -> std::optional<i64> {
                         if (i >= n) return std::nullopt;
                         spin_us(500);
                         return i++;
                       })
               .map("work", [](i64 x) {
                 spin_us(x == n - 1 ? 400'000 : 100);
                 return x;
               }, pf::replicas(2))
               .sink("drop", [](i64) {})
               .run();
  check_accounting(r.report);
  INFO(r.report.to_string(true));
  const auto& a = replica_of(r.report, "work", 0);
  const auto& b = replica_of(r.report, "work", 1);
  const auto& idle = a.busy_s < b.busy_s ? a : b;
  CHECK(idle.starved_s > 0.3);
}

TEST_CASE("a stage burning a known time per item shows that busy time") {
  CleanupCheck cleanup;
  constexpr i64 n = 2'000;
  constexpr int cost_us = 250;
  auto r = pf::pipeline("known_cost", pf::batch_bytes(256))
               .source("numbers", pf::iota<i64>(0, n))
               .map("burn", [](i64 x) {
                 burn_cpu_us(cost_us);
                 return x;
               }, pf::replicas(2), pf::own_process)
               .reduce("sum", i64{0}, std::plus<>{}, std::plus<>{}, pf::replicas(2))
               .run();
  CHECK(r.value == n * (n - 1) / 2);
  check_accounting(r.report);
  const double want = n * cost_us * 1e-6;
  const auto& burn = r.report.stages[1];
  INFO(r.report.to_string(true));
  // Busy time is wall time in the stage: at least the CPU time it burnt, and on a quiet machine
  // close to it (a loaded one preempts the stage: the CPU time then stays, the busy time grows).
  CHECK(burn.busy_s >= want);
  CHECK(burn.cpu_s >= want);
  // The group's CPU also holds the runtime's own work (runtime_s of its replicas: several times
  // more under ASan) and the fused sum's busy time; a busy count that missed part of the stage's
  // work still fails this.
  double runtime_s = 0;
  for (const auto& row : r.report.replica_rows) runtime_s += row.process_group == burn.process_group ? row.runtime_s : 0;
  CHECK(burn.cpu_s <= burn.busy_s + r.report.stages[2].busy_s + runtime_s + 0.05);
  CHECK(burn.items_in == static_cast<std::uint64_t>(n));
  CHECK(burn.items_out == static_cast<std::uint64_t>(n));
  CHECK(r.report.bottleneck()->name == "burn");
  // Per-replica rows: both replicas of burn, their items adding up to the stage's.
  std::uint64_t items = 0;
  for (std::uint32_t k = 0; k < 2; ++k) items += replica_of(r.report, "burn+sum", k).items_in;
  CHECK(items == static_cast<std::uint64_t>(n));
}

TEST_CASE("counters_off: items still exact at the end, no times or samples; refused with what needs live counters") {
  CleanupCheck cleanup;
  constexpr i64 n = 50'000;
  auto r = pf::pipeline("quiet", pf::counters_off)
               .source("numbers", pf::iota<i64>(0, n))
               .map("square", [](i64 x) { return x * x; }, pf::replicas(2))
               .filter("even", [](i64 x) { return x % 2 == 0; }, pf::own_process)
               .reduce("sum", i64{0}, std::plus<>{}, std::plus<>{})
               .run();
  INFO(r.report.to_string(true));
  CHECK(r.report.stages[1].items_in == static_cast<std::uint64_t>(n));
  CHECK(r.report.stages[2].items_in == static_cast<std::uint64_t>(n));
  CHECK(r.report.stages[2].items_out == static_cast<std::uint64_t>(n / 2));
  CHECK(r.report.samples.empty());
  for (const auto& s : r.report.stages) CHECK(s.busy_s == 0);
  auto refused = [](auto option, const char* what) {
    try {
      pf::pipeline("refused", pf::counters_off, option).source("numbers", pf::iota<i64>(0, 10)).reduce("sum", i64{0}, std::plus<>{}, std::plus<>{}).run();
      FAIL("counters_off with " << what << " was accepted");
    } catch (const std::invalid_argument& e) {
      CHECK(std::string(e.what()).find(std::string("counters_off cannot be combined with ") + what) != std::string::npos);
    }
  };
  refused(pf::progress(true), "progress");
  refused(pf::trace("/tmp/never-written.json"), "trace");
  refused(pf::auto_scale, "auto_scale");
}

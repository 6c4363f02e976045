// Checks pf::pinning (include/procflow/options.hpp, issue 6): every replica process runs on one
// CPU of the budget, replicas spread round robin over the CPUs the caller may run on (the first n
// under pf::cores(n)); without the option a replica keeps the caller's affinity; the caller's own
// affinity is never changed. Each case runs in a child under a watchdog (support/isolated.hpp).
#include "support/isolated.hpp"

#include <procflow/procflow.hpp>

#include <doctest/doctest.h>

#include <sched.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <set>
#include <tuple>
#include <vector>

namespace pf = procflow;
using procflow::test::run_isolated;

namespace {

// The CPUs this process may run on; empty if they cannot be read (which no case accepts). Called
// in the test and in the stage's replicas alike, so it throws nothing.
std::vector<int> cpus_of_this_process() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> cpus;
  if (sched_getaffinity(0, sizeof set, &set) != 0) return cpus;
  for (std::size_t c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &set)) cpus.push_back(static_cast<int>(c));
  return cpus;
}

// Per replica index: the CPUs its process may run on, seen from a map over 4000 items.
using Where = std::tuple<std::uint32_t, std::vector<int>>;

template <class... Opts>
std::vector<Where> where_replicas_run(std::uint32_t replicas, const Opts&... opts) {
  auto res = pf::pipeline("pin", opts...)
                 .source("n", pf::iota<std::int64_t>(0, 4000))
                 .map("where", [](std::int64_t) { return Where{pf::this_replica().index, cpus_of_this_process()}; },
                      pf::replicas(replicas))
                 .collect()
                 .run();
  REQUIRE(res.value.size() == 4000);
  return res.value;
}

constexpr auto timeout = std::chrono::seconds(60);

}  // namespace

TEST_CASE("pinning: each replica runs on one CPU of the caller's, spread over them; the caller keeps its affinity") {
  run_isolated(timeout, [] {
    const std::vector<int> caller = cpus_of_this_process();
    REQUIRE_FALSE(caller.empty());
    const std::uint32_t replicas = 3;
    std::set<int> used;
    std::set<std::uint32_t> seen;
    for (const auto& [replica, cpus] : where_replicas_run(replicas, pf::pinning(true))) {
      CAPTURE(replica);
      REQUIRE(cpus.size() == 1);
      CHECK(std::find(caller.begin(), caller.end(), cpus.front()) != caller.end());
      used.insert(cpus.front());
      seen.insert(replica);
    }
    // Round robin over the caller's CPUs: as many distinct CPUs as replicas allow.
    if (seen.size() == replicas) CHECK(used.size() == std::min<std::size_t>(replicas, caller.size()));
    CHECK(cpus_of_this_process() == caller);
  });
}

TEST_CASE("pinning: under pf::cores(1) every replica shares the first CPU of the caller's") {
  run_isolated(timeout, [] {
    const std::vector<int> caller = cpus_of_this_process();
    REQUIRE_FALSE(caller.empty());
    for (const auto& [replica, cpus] : where_replicas_run(2, pf::pinning(true), pf::cores(1))) {
      CAPTURE(replica);
      CHECK(cpus == std::vector<int>{caller.front()});
    }
    CHECK(cpus_of_this_process() == caller);
  });
}

TEST_CASE("pinning: off by default and with pinning(false), a replica keeps the caller's CPUs") {
  run_isolated(timeout, [] {
    const std::vector<int> caller = cpus_of_this_process();
    REQUIRE_FALSE(caller.empty());
    for (const auto& [replica, cpus] : where_replicas_run(2)) CHECK(cpus == caller);
    for (const auto& [replica, cpus] : where_replicas_run(2, pf::pinning(false))) CHECK(cpus == caller);
  });
}

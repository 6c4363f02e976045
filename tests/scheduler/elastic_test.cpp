// Elastic membership (lib/scheduler/elastic.hpp, SPEC §2 Scheduler): replicas started and retired
// while a pipeline runs lose and duplicate nothing. Scale-ups and scale-downs are forced by the
// test hook at fixed points of the input (scheduler::force_next_run), and every result is checked
// against the multiset of item ids; the policy-driven run checks that the slow stage ends with
// more replicas and the same result as the sequential loop.
#include "scheduler/elastic.hpp"
#include "support/cleanup_check.hpp"

#include <procflow/procflow.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <numeric>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <vector>

namespace pf = procflow;
namespace pt = procflow::test;
namespace sch = procflow::scheduler;
using i64 = std::int64_t;

namespace {

using CleanupCheck = pt::CleanupCheck;

// About `us` microseconds of CPU work; returns x so the compiler keeps it.
i64 burn(i64 x, int us) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(us);
  volatile i64 sink = x;
  while (std::chrono::steady_clock::now() < until) sink = sink + 1;
  return x;
}

auto counter_source(i64 n) {
  return [i = i64{0}, n]() mutable -> std::optional<i64> {
    if (i == n) return std::nullopt;
    return i++;
  };
}

std::vector<i64> iota_vector(i64 n) {
  std::vector<i64> v(static_cast<std::size_t>(n));
  std::iota(v.begin(), v.end(), i64{0});
  return v;
}

std::uint32_t peak_of(const pf::run_report& r, const std::string& stage) {
  for (const auto& s : r.stages)
    if (s.name == stage) return s.peak_replicas;
  return 0;
}

std::size_t forced_changes(const pf::run_report& r) {
  return static_cast<std::size_t>(std::count_if(r.decisions.begin(), r.decisions.end(),
                                                 [](const pf::scheduler_decision& d) { return d.forced && d.from != d.to; }));
}

constexpr i64 n = 24'000;
constexpr int work_us = 20;

// generator -> map a (own processes, auto) -> map b (own processes, auto) -> collect, on a budget of
// `cores`; checks that every item came through both maps once.
pf::result<std::vector<i64>> run_chain(const std::string& name, std::uint32_t cores) {
  auto r = pf::pipeline(name, pf::cores(cores), pf::batch_bytes(1024), pf::ring_slots(4))
               .source("gen", counter_source(n))
               .map("a", [](i64 x) { return burn(x, work_us / 2) * 2; }, pf::replicas(pf::auto_scale), pf::own_process)
               .map("b", [](i64 x) { return burn(x, work_us / 2) + 1; }, pf::replicas(pf::auto_scale), pf::own_process)
               .collect()
               .run();
  auto got = r.value;
  std::sort(got.begin(), got.end());
  std::vector<i64> want;
  for (i64 x = 0; x < n; ++x) want.push_back(2 * x + 1);
  CHECK(got == want);
  return r;
}

}  // namespace

TEST_CASE("unordered: a map scaled 1 -> 3 -> 1 mid-run loses and duplicates no item") {
  CleanupCheck cleanup;
  // groups: 0 generator, 1 map (auto, own processes) -> collect
  sch::force_next_run({{0, n / 5, 1, 3}, {0, n / 2, 1, 1}});
  auto r = pf::pipeline("elastic_map", pf::cores(2), pf::batch_bytes(1024), pf::ring_slots(4))
               .source("gen", counter_source(n))
               .map("work", [](i64 x) { return burn(x, work_us); }, pf::replicas(pf::auto_scale), pf::own_process)
               .collect()
               .run();
  auto got = r.value;
  std::sort(got.begin(), got.end());
  CHECK(got == iota_vector(n));
  CHECK(forced_changes(r.report) == 2);
  CHECK(peak_of(r.report, "work") == 3);
  CHECK(r.report.processes == 1 + 1 + 2);  // generator, first map replica, two started later
  CHECK(r.report.to_string().find("(forced)") != std::string::npos);
}

TEST_CASE("two adjacent scalable groups: retiring producers and consumers at one boundary") {
  CleanupCheck cleanup;
  // groups: 0 generator, 1 map a, 2 map b -> collect
  sch::force_next_run({{0, n / 6, 1, 3}, {0, n / 6, 2, 3}, {0, n / 3, 1, 1}, {0, n / 2, 2, 1}, {0, 2 * n / 3, 1, 2}});
  const auto r = run_chain("elastic_chain", 2);
  CHECK(forced_changes(r.report) == 5);
  CHECK(peak_of(r.report, "a") == 3);
  CHECK(peak_of(r.report, "b") == 3);
}

TEST_CASE("a replica moved between groups starts once the retiring one exited: never more processes than the budget") {
  CleanupCheck cleanup;
  // groups: 0 generator, 1 map a, 2 map b -> collect; budget 4 processes. At n/2 one replica moves
  // from a to b: the retiring replica of a still runs while it drains, so b's new one waits for its
  // exit instead of making 5 processes for those milliseconds.
  sch::force_next_run({{0, n / 6, 1, 2}, {0, n / 2, 1, 1}, {0, n / 2, 2, 2}});
  const auto r = run_chain("elastic_move", 4);
  CHECK(forced_changes(r.report) == 3);
  CHECK(peak_of(r.report, "a") == 2);
  CHECK(peak_of(r.report, "b") == 2);  // the deferred start did happen
  CHECK(r.report.processes == 1 + 1 + 1 + 1 + 1);  // generator, a, b, a's second, b's second
  CHECK(r.report.peak_processes == 4);
  CHECK(r.report.to_string().find("5 processes (at most 4 at once)") != std::string::npos);
}

TEST_CASE("reduce: a retiring replica sends its partial before it exits") {
  CleanupCheck cleanup;
  using Sums = std::tuple<i64, i64, i64>;  // count, sum, sum of squares: a lost or doubled id shows
  auto fold = [](Sums s, i64 x) { return Sums{std::get<0>(s) + 1, std::get<1>(s) + x, std::get<2>(s) + x * x}; };
  auto combine = [](Sums a, const Sums& b) {
    return Sums{std::get<0>(a) + std::get<0>(b), std::get<1>(a) + std::get<1>(b), std::get<2>(a) + std::get<2>(b)};
  };
  Sums want{};
  for (i64 x = 0; x < n; ++x) want = fold(want, x);
  // groups: 0 generator, 1 map + reduce fused (both auto)
  sch::force_next_run({{0, n / 5, 1, 3}, {0, n / 2, 1, 1}});
  auto r = pf::pipeline("elastic_reduce", pf::cores(2), pf::batch_bytes(1024), pf::ring_slots(4))
               .source("gen", counter_source(n))
               .map("work", [](i64 x) { return burn(x, work_us); }, pf::replicas(pf::auto_scale), pf::own_process)
               .reduce("sums", Sums{}, fold, combine)
               .run();
  CHECK(r.value == want);
  CHECK(forced_changes(r.report) == 2);
  CHECK(peak_of(r.report, "sums") == 3);
}

TEST_CASE("chunk-claiming group (splittable source fused in): new replicas claim chunks, retiring ones stop") {
  CleanupCheck cleanup;
  // groups: 0 iota chunks + map (auto) -> collect
  sch::force_next_run({{0, n / 5, 0, 4}, {0, n / 2, 0, 1}});
  auto r = pf::pipeline("elastic_chunks", pf::cores(2), pf::auto_scale)
               .source("n", pf::iota<i64>(0, n))
               .map("work", [](i64 x) { return burn(x, work_us); })
               .collect()
               .run();
  auto got = r.value;
  std::sort(got.begin(), got.end());
  CHECK(got == iota_vector(n));
  CHECK(forced_changes(r.report) == 2);
  CHECK(peak_of(r.report, "work") == 4);  // started with the budget's 2
}

TEST_CASE("keyed: the producers of a reduce_by_key scale, its key-owning replicas stay fixed") {
  CleanupCheck cleanup;
  // groups: 0 generator, 1 map (auto), 2 reduce_by_key (auto requested, not scalable: keyed input)
  sch::force_next_run({{0, n / 5, 1, 3}, {0, n / 2, 1, 1}, {0, n / 2, 2, 3}});
  auto r = pf::pipeline("elastic_keyed", pf::cores(2), pf::batch_bytes(1024), pf::ring_slots(4), pf::auto_scale)
               .source("gen", counter_source(n))
               .map("work", [](i64 x) { return burn(x, work_us); }, pf::own_process)
               .reduce_by_key("by_mod", [](i64 x) { return x % 7; }, i64{0}, std::plus<>{}, std::plus<>{}, pf::own_process)
               .run();
  std::vector<i64> want(7, 0);
  for (i64 x = 0; x < n; ++x) want[static_cast<std::size_t>(x % 7)] += x;
  REQUIRE(r.value.size() == 7);
  for (const auto& [k, v] : r.value) CHECK(v == want[static_cast<std::size_t>(k)]);
  CHECK(peak_of(r.report, "work") == 3);
  // group 2 refused to change: the forced step is recorded with from == to
  const auto keyed = std::find_if(r.report.decisions.begin(), r.report.decisions.end(),
                                  [](const pf::scheduler_decision& d) { return d.process_group == 2; });
  REQUIRE(keyed != r.report.decisions.end());
  CHECK(keyed->from == keyed->to);
}

TEST_CASE("ordered pipelines with auto_scale keep their order (counts stay fixed)") {
  CleanupCheck cleanup;
  sch::force_next_run({{0, n / 5, 1, 3}});
  auto r = pf::pipeline("elastic_ordered", pf::cores(2), pf::auto_scale, pf::ordered, pf::batch_bytes(1024))
               .source("gen", counter_source(n))
               .map("work", [](i64 x) { return x * 3; }, pf::own_process)
               .collect()
               .run();
  std::vector<i64> want;
  for (i64 x = 0; x < n; ++x) want.push_back(3 * x);
  CHECK(r.value == want);
  CHECK(r.report.decisions.empty());
}

TEST_CASE("auto_scale: the slow stage ends with more replicas, same result as the sequential loop") {
  CleanupCheck cleanup;
  constexpr i64 items = 20'000;
  auto r = pf::pipeline("auto", pf::cores(6), pf::auto_scale, pf::batch_bytes(2048), pf::ring_slots(8))
               .source("gen", counter_source(items))
               .map("cheap", [](i64 x) { return x + 1; }, pf::own_process)
               .map("slow", [](i64 x) { return burn(x, 40); }, pf::own_process)
               .reduce("sum", i64{0}, std::plus<>{}, std::plus<>{}, pf::own_process)
               .run();
  i64 want = 0;
  for (i64 x = 0; x < items; ++x) want += x + 1;
  CHECK(r.value == want);
  INFO(r.report.to_string());
  CHECK(peak_of(r.report, "slow") > peak_of(r.report, "cheap"));
  CHECK(!r.report.decisions.empty());
  for (const auto& d : r.report.decisions) CHECK(!d.forced);
}

// Checks run_report::verdict() (include/procflow/verdict.hpp): it names the stage that limits
// throughput and why (its own work, or waiting for room downstream), shows what its neighbours
// do, and its prediction for more replicas holds when the suggestion is run (within 25%).
//
// The stages' costs are sleeps (a stage waiting on a remote service or a disk): adding replicas
// of such a stage scales on any number of cores, also on a loaded 2-core machine, so the
// prediction can be checked against a second run without depending on the machine's load.
#include "support/cleanup_check.hpp"

#include <procflow/procflow.hpp>

#include <nlohmann/json.hpp>

#include <doctest/doctest.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <thread>

namespace pf = procflow;
namespace pt = procflow::test;
using i64 = std::int64_t;

namespace {

using CleanupCheck = pt::CleanupCheck;

// Every 10th item sleeps `ten_items_us`: on average ten_items_us / 10 per item (one sleep per
// ten items keeps the sleep's own slack small against its length).
void cost_per_ten(i64 x, int ten_items_us) {
  if (x % 10 == 0) std::this_thread::sleep_for(std::chrono::microseconds(ten_items_us));
}

// generator -> feed (100 us/item) -> slow (250 us/item, `slow_replicas`) -> sum, each stage in
// its own processes: feed can take 1e4 items/s, one replica of slow 4e3 items/s.
pf::run_report two_costs(i64 n, std::uint32_t slow_replicas) {
  auto r = pf::pipeline("two_costs", pf::fusion(false), pf::batch_bytes(256))
               .source("gen",
                       [i = i64{0}, n]() mutable -> std::optional<i64> {
                         if (i >= n) return std::nullopt;
                         return i++;
                       })
               .map("feed", [](i64 x) {
                 cost_per_ten(x, 1000);
                 return x;
               })
               .map("slow", [](i64 x) {
                 cost_per_ten(x, 2500);
                 return x;
               }, pf::replicas(slow_replicas))
               .reduce("sum", i64{0}, std::plus<>{}, std::plus<>{}, pf::replicas(1))
               .run();
  CHECK(r.value == n * (n - 1) / 2);
  return std::move(r.report);
}

}  // namespace

TEST_CASE("the verdict names the busy stage, its neighbours, and a prediction that a second run confirms") {
  CleanupCheck cleanup;
  constexpr i64 n = 5'000;
  const pf::run_report first = two_costs(n, 1);
  const pf::bottleneck_verdict v = first.verdict();
  INFO(first.to_string(true));
  INFO(v.to_string());
  CHECK(v.stage == "slow");
  CHECK(v.why == pf::bottleneck_verdict::cause::busy);
  CHECK(v.busy_share > 0.8);
  CHECK(v.replicas == 1);
  // Its producer waits for room in its input; its consumer waits for items.
  CHECK(v.evidence.find("'feed' blocked") != std::string::npos);
  CHECK(v.evidence.find("'sum' starved") != std::string::npos);
  // True rate: items per busy second, ~4000 (250 us each, plus the sleeps' slack).
  CHECK(v.true_rate > 2000);
  CHECK(v.true_rate < 4400);
  // feed takes ~1e4 items/s: 2 more replicas of slow (3 x 4e3 >= 1e4) until feed limits.
  CHECK(v.add_replicas == 2);
  CHECK(v.next_limit == "feed");
  CHECK(v.predicted_speedup > 1.8);
  CHECK(v.predicted_speedup < 3.0);
  CHECK(v.predicted_items_per_s == doctest::Approx(v.items_per_s * v.predicted_speedup));
  // The report's other outputs carry it.
  CHECK(first.bottleneck()->name == "slow");
  CHECK(first.to_string().find("verdict: slow: ") != std::string::npos);
  const auto j = nlohmann::json::parse(first.to_json());
  CHECK(j.at("verdict").at("stage") == "slow");
  CHECK(j.at("verdict").at("why") == "busy");
  CHECK(j.at("verdict").at("add_replicas") == 2);
  CHECK(j.at("verdict").at("next_limit") == "feed");
  CHECK(first.to_html().find("2 more replicas of slow") != std::string::npos);

  // Run the suggestion. The costs are sleeps, but a loaded machine stretches wake-ups (CI saw one
  // run at 0.66x of the prediction while the next ones matched): the prediction must hold in one of
  // three runs, and the next limit must be the one announced in each.
  bool confirmed = false;
  for (int attempt = 0; attempt < 3 && !confirmed; ++attempt) {
    const pf::run_report second = two_costs(n, v.replicas + v.add_replicas);
    const pf::bottleneck_verdict after = second.verdict();
    INFO(second.to_string(true));
    INFO(after.to_string());
    MESSAGE("predicted ", v.predicted_items_per_s, " items/s, measured ", after.items_per_s, " items/s (first run ", v.items_per_s, ")");
    CHECK(after.stage == "feed");
    confirmed = after.items_per_s > 0.75 * v.predicted_items_per_s && after.items_per_s < 1.25 * v.predicted_items_per_s;
  }
  CHECK_MESSAGE(confirmed, "no run with 3 replicas of slow came within 25% of the predicted rate");
}

TEST_CASE("a stage waiting on a slow sink in the caller's process is blocked, the cause downstream") {
  CleanupCheck cleanup;
  constexpr i64 n = 3'000;
  i64 seen = 0;
  auto r = pf::pipeline("slow_sink", pf::batch_bytes(256))
               .source("numbers", pf::iota<i64>(0, n))
               .map("double", [](i64 x) { return 2 * x; })
               .sink("store", [&seen](i64 x) {
                 cost_per_ten(x, 1000);
                 ++seen;
               })
               .run();
  CHECK(seen == n);
  const pf::bottleneck_verdict v = r.report.verdict();
  INFO(r.report.to_string(true));
  INFO(v.to_string());
  CHECK(v.why == pf::bottleneck_verdict::cause::blocked);
  CHECK(v.cause_stage == "store");
  CHECK(v.blocked_share > 0.5);
  CHECK(v.add_replicas == 0);  // more replicas would not help
  CHECK(v.to_string().find("waits for room downstream ('store')") != std::string::npos);
}

TEST_CASE("no verdict without a replica process") {
  pf::run_report empty;
  CHECK(empty.verdict().why == pf::bottleneck_verdict::cause::none);
  CHECK(empty.bottleneck() == nullptr);
  CHECK(empty.verdict().to_string() == "no stage ran in a replica process");
}

// Batches sized for balance (issue 6; channel/outbox.hpp SlotWork): a slot holds about 1 ms of
// its consumer's measured work, so the replicas of a slow stage fed by a ring share its items
// evenly however few there are, while a cheap stage keeps full slots.
//
// Without it, a fast generator packs 4000 items of 200 us into one 64 KiB slot: one replica does
// all of them while the other idles.
#include "support/cleanup_check.hpp"

#include <procflow/procflow.hpp>

#include <doctest/doctest.h>

#include <chrono>
#include <cstdint>
#include <numeric>
#include <optional>

namespace pf = procflow;
namespace pt = procflow::test;
using i64 = std::int64_t;
using namespace std::chrono_literals;

namespace {

// Burns `d` of CPU (a sleep would not count as busy time, and the cost model counts busy time).
void spin_for(std::chrono::microseconds d) {
  const auto end = std::chrono::steady_clock::now() + d;
  while (std::chrono::steady_clock::now() < end) {
  }
}

}  // namespace

TEST_CASE("a slow stage's replicas share a short ring-fed stream evenly") {
  pt::CleanupCheck cleanup;
  constexpr i64 n = 4000;
  const auto r = pf::pipeline("balance")
                     .source("numbers", pf::generate([i = i64{0}]() mutable -> std::optional<i64> {
                       if (i == n) return std::nullopt;
                       return i++;
                     }))
                     .map("slow", [](i64 x) {
                       spin_for(200us);
                       return x;
                     }, pf::replicas(2))
                     .reduce("sum", i64{0}, std::plus<>{}, std::plus<>{})
                     .run();
  CHECK(r.value == n * (n - 1) / 2);
  const auto& slow = r.report.stages[1];
  INFO(r.report.to_string(true));
  REQUIRE(slow.replica_items_in.size() == 2);
  CHECK(slow.items_in == static_cast<std::uint64_t>(n));
  // An even share is 2000 each; a loaded machine may slow one replica down, so allow 25-75%.
  for (const std::uint64_t items : slow.replica_items_in) {
    CHECK(items >= n / 4);
    CHECK(items <= 3 * n / 4);
  }
}

TEST_CASE("a cheap stage still gets full slots: few batches for many items") {
  pt::CleanupCheck cleanup;
  constexpr i64 n = 2'000'000;
  const auto r = pf::pipeline("cheap")
                     .source("numbers", pf::generate([i = i64{0}]() mutable -> std::optional<i64> {
                       if (i == n) return std::nullopt;
                       return i++;
                     }))
                     .map("inc", [](i64 x) { return x + 1; }, pf::replicas(2))
                     .reduce("sum", i64{0}, std::plus<>{}, std::plus<>{})
                     .run();
  CHECK(r.value == n * (n + 1) / 2);
  const auto& inc = r.report.stages[1];
  INFO(r.report.to_string(true));
  // Full 64 KiB slots hold 8192 8-byte items: 245 slots. Slots of 1 ms of a ~ns-per-item stage
  // are full too; allow the slow start and partly filled slots (latency bound) a wide margin,
  // but not one slot per few items.
  CHECK(inc.batches_in < 2'000);
}

// Checks the per-replica memory figures (metrics::ReplicaStats): a large read-only table captured
// by a stage (a lookup join) is shared copy-on-write with the forked replicas — each replica's
// private memory stays far below the table's size, while its peak RSS, which counts shared pages,
// shows the table.
#include "support/child_process.hpp"

#include <procflow/procflow.hpp>

#include <doctest/doctest.h>

#include <chrono>
#include <cstdint>
#include <numeric>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace pf = procflow;
namespace pt = procflow::test;
using i64 = std::int64_t;

TEST_CASE("a large read-only table captured by a stage is shared copy-on-write, not copied per replica") {
  const std::set<std::string> shm_before = pt::dev_shm_entries();
  constexpr std::size_t table_items = 16 * 1024 * 1024;  // 128 MiB of i64, every page touched
  std::vector<i64> table(table_items);
  std::iota(table.begin(), table.end(), i64{0});
  constexpr i64 n = 200'000;
  // Each replica lives at least half a second (its first item waits): long enough for the read of
  // its private bytes to pay (metrics::private_read_pays: at ~135 MiB resident, from ~0.3 s).
  auto r = pf::pipeline("lookup_join")
               .source("keys", pf::iota<i64>(0, n))
               .map("join",
                    [&table](i64 k) {
                      static bool waited = false;  // once per replica process
                      if (!std::exchange(waited, true)) std::this_thread::sleep_for(std::chrono::milliseconds(500));
                      return table[static_cast<std::size_t>(k * 83) % table.size()];
                    },
                    pf::replicas(2))
               .reduce("sum", i64{0}, std::plus<>{}, std::plus<>{})
               .run();
  i64 want = 0;
  for (i64 k = 0; k < n; ++k) want += table[static_cast<std::size_t>(k * 83) % table.size()];
  CHECK(r.value == want);
  INFO(r.report.to_string(true));
  const std::uint64_t table_bytes = table_items * sizeof(i64);
  REQUIRE(r.report.replica_rows.size() == 2);
  for (const auto& rep : r.report.replica_rows) {
    CHECK(rep.private_bytes > 0);                   // the figure was read
    CHECK(rep.private_bytes < table_bytes / 8);     // not a copy of the table
    CHECK(rep.peak_rss_bytes >= table_bytes / 2);   // RSS counts the shared pages it inherited
  }

  // A short run in the same large caller: reading its replicas' private bytes would cost them more
  // than 1% of their life (~2.5 ms each here), so they are not read: 0, shown as "-" in the report.
  auto quick = pf::pipeline("quick lookup")
                   .source("keys", pf::iota<i64>(0, 1000))
                   .map("join", [&table](i64 k) { return table[static_cast<std::size_t>(k)]; }, pf::replicas(2))
                   .reduce("sum", i64{0}, std::plus<>{}, std::plus<>{})
                   .run();
  CHECK(quick.value == 999 * 1000 / 2);
  INFO(quick.report.to_string(true));
  REQUIRE(quick.report.replica_rows.size() == 2);
  for (const auto& rep : quick.report.replica_rows) {
    CHECK(rep.peak_rss_bytes >= table_bytes / 2);
    // The rule: read when 1% of the life covers 0.1 ms + 20 us per MiB of peak RSS (~2.8 ms
    // here, so from ~0.28 s of life). A loaded machine may stretch this run's replicas past
    // that: then the figure is read, as the rule says.
    const double cost_s = 1e-4 + 2e-5 * static_cast<double>(rep.peak_rss_bytes >> 20);
    if (rep.wall_s < 0.9 * 100 * cost_s) CHECK(rep.private_bytes == 0);  // not measured
    if (rep.wall_s > 1.1 * 100 * cost_s) CHECK(rep.private_bytes > 0);
    if (rep.private_bytes == 0) CHECK(quick.report.to_string(true).find("-\n") != std::string::npos);  // shown as "-"
  }
  CHECK(pt::count_children() == 0);
  CHECK(pt::dev_shm_entries() == shm_before);
}

// Checks the per-replica memory figures (metrics::ReplicaStats): a large read-only table captured
// by a stage (a lookup join) is shared copy-on-write with the forked replicas — each replica's
// private memory stays far below the table's size, while its peak RSS, which counts shared pages,
// shows the table.
#include "metrics/replica_stats.hpp"
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

namespace {

// What the rule (metrics::private_read_pays) says of a replica that lived `wall_s` with
// `peak_rss` bytes resident: 1 read, -1 not read, 0 too near the boundary to tell (the report's
// wall time is the replica's life rounded to a double).
int rule_says(double wall_s, std::uint64_t peak_rss) {
  const auto ns = [](double s) { return static_cast<std::uint64_t>(s * 1e9); };
  if (procflow::metrics::private_read_pays(ns(wall_s * 0.99), peak_rss)) return 1;
  if (!procflow::metrics::private_read_pays(ns(wall_s * 1.01), peak_rss)) return -1;
  return 0;
}

}  // namespace

TEST_CASE("a large read-only table captured by a stage is shared copy-on-write, not copied per replica") {
  const std::set<std::string> shm_before = pt::dev_shm_entries();
  constexpr std::size_t table_items = 16 * 1024 * 1024;  // 128 MiB of i64, every page touched
  std::vector<i64> table(table_items);
  std::iota(table.begin(), table.end(), i64{0});
  constexpr i64 n = 200'000;
  // A replica that gets an item lives at least half a second (its first item waits): long enough
  // for the read of its private bytes to pay (metrics::private_read_pays: at ~135 MiB resident,
  // from ~0.3 s). A replica forked so late that its sibling took every item may live less.
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
  int read = 0;
  for (const auto& rep : r.report.replica_rows) {
    CHECK(rep.peak_rss_bytes >= table_bytes / 2);  // RSS counts the shared pages it inherited
    const int says = rule_says(rep.wall_s, rep.peak_rss_bytes);
    if (rep.items_in > 0) CHECK(says == 1);        // its first item waited half a second
    if (says == 1) CHECK(rep.private_bytes > 0);   // the figure was read
    if (says == -1) CHECK(rep.private_bytes == 0); // not measured
    if (rep.private_bytes == 0) continue;
    ++read;
    CHECK(rep.private_bytes < table_bytes / 8);    // not a copy of the table
  }
  CHECK(read >= 1);

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
    // Not read, unless a loaded machine stretched this replica's life past ~0.28 s: then the
    // figure is read, as the rule says.
    const int says = rule_says(rep.wall_s, rep.peak_rss_bytes);
    if (says == -1) CHECK(rep.private_bytes == 0);  // not measured
    if (says == 1) CHECK(rep.private_bytes > 0);
    if (rep.private_bytes == 0) CHECK(quick.report.to_string(true).find("-\n") != std::string::npos);  // shown as "-"
  }
  CHECK(pt::count_children() == 0);
  CHECK(pt::dev_shm_entries() == shm_before);
}

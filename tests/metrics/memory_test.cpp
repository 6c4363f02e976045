// Checks the per-replica memory figures (metrics::ReplicaStats): a large read-only table captured
// by a stage (a lookup join) is shared copy-on-write with the forked replicas — each replica's
// private memory stays far below the table's size, while its peak RSS, which counts shared pages,
// shows the table.
#include "support/child_process.hpp"

#include <procflow/procflow.hpp>

#include <doctest/doctest.h>

#include <cstdint>
#include <numeric>
#include <set>
#include <string>
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
  auto r = pf::pipeline("lookup_join")
               .source("keys", pf::iota<i64>(0, n))
               .map("join", [&table](i64 k) { return table[static_cast<std::size_t>(k * 83) % table.size()]; }, pf::replicas(2))
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
  CHECK(pt::count_children() == 0);
  CHECK(pt::dev_shm_entries() == shm_before);
}

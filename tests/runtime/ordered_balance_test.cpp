// Checks SPEC §2 (dispatch) for ordered streams: a generator of a few expensive items, ordered,
// feeding 2 replicas, gets both replicas working (per-replica counts in the report) and keeps
// source order; a long ordered stream stays complete and ordered after the slots grow to full
// size.
#include <procflow/procflow.hpp>

#include <doctest/doctest.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <thread>
#include <vector>

namespace pf = procflow;
using i64 = std::int64_t;

namespace {

const pf::stage_report& stage(const pf::run_report& r, const std::string& name) {
  for (const auto& s : r.stages)
    if (s.name == name) return s;
  FAIL("no stage " << name);
  throw std::logic_error("unreachable");
}

}  // namespace

TEST_CASE("ordered: a generator of 8 expensive items spreads them over both replicas") {
  for (const int bytes : {8, 16, 4096}) {
    CAPTURE(bytes);
    int i = 0;
    auto gen = [&i, bytes]() -> std::optional<std::vector<char>> {
      if (i == 8) return std::nullopt;
      return std::vector<char>(static_cast<std::size_t>(bytes) - 7, static_cast<char>(i++));
    };
    auto r = pf::pipeline("coarse", pf::ordered)
                 .source("gen", gen)
                 .map("work",
                      [](std::vector<char> v) {
                        std::this_thread::sleep_for(std::chrono::milliseconds(20));  // an expensive item
                        return static_cast<i64>(v.empty() ? -1 : v[0]);
                      },
                      pf::replicas(2))
                 .collect()
                 .run();
    CHECK(r.value == std::vector<i64>{0, 1, 2, 3, 4, 5, 6, 7});
    const auto& work = stage(r.report, "work");
    REQUIRE(work.replica_items_in.size() == 2);
    CHECK(work.replica_items_in[0] > 0);
    CHECK(work.replica_items_in[1] > 0);
    CHECK(work.replica_items_in[0] + work.replica_items_in[1] == 8);
  }
}

TEST_CASE("ordered: 267 coarse items split about evenly over 2 replicas") {
  int i = 0;
  auto gen = [&i]() -> std::optional<std::pair<i64, i64>> {
    if (i == 267) return std::nullopt;
    ++i;
    return std::pair<i64, i64>{i, i};
  };
  auto r = pf::pipeline("dedup shape", pf::ordered)
               .source("chunks", gen)
               .map("compress", [](std::pair<i64, i64> p) { return p.first; }, pf::replicas(2))
               .collect()
               .run();
  std::vector<i64> expected(267);
  for (i64 k = 0; k < 267; ++k) expected[static_cast<std::size_t>(k)] = k + 1;
  CHECK(r.value == expected);
  const auto& c = stage(r.report, "compress");
  REQUIRE(c.replica_items_in.size() == 2);
  CHECK(c.replica_items_in[0] >= 100);
  CHECK(c.replica_items_in[1] >= 100);
}

TEST_CASE("ordered: a long fine-grained stream after slow start stays complete and in order") {
  i64 i = 0;
  const i64 n = 2'000'000;
  auto gen = [&i, n]() -> std::optional<i64> {
    if (i == n) return std::nullopt;
    return i++;
  };
  auto got = pf::pipeline("long", pf::ordered)
                 .source("gen", gen)
                 .map("inc", [](i64 x) { return x + 1; }, pf::replicas(2))
                 .collect()
                 .run()
                 .value;
  REQUIRE(got.size() == static_cast<std::size_t>(n));
  bool in_order = true;
  for (i64 k = 0; k < n; ++k) in_order = in_order && got[static_cast<std::size_t>(k)] == k + 1;
  CHECK(in_order);
}

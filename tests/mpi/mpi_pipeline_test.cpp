// procflow::mpi (include/procflow/mpi.hpp) across the ranks of `mpirun -np 2` and `-np 4`: the
// same declarations give the sequential result; the source's items are split across ranks; the
// reports merge. Run by ctest through mpirun (tests/mpi/CMakeLists.txt).
#include "mpi/mpi_main.hpp"

#include <procflow/procflow.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace pf = procflow;

namespace {

// About `us` microseconds of CPU per call (so that every rank gets a share of the chunks).
std::int64_t burn(std::int64_t x, int us) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(us);
  auto h = static_cast<std::uint64_t>(x);  // unsigned: the LCG wraps by design
  while (std::chrono::steady_clock::now() < until) h = h * 6364136223846793005ULL + 1442695040888963407ULL;
  return x + static_cast<std::int64_t>(h & 0);  // h used, x unchanged
}

}  // namespace

TEST_CASE("source -> map -> filter -> reduce across ranks equals the sequential loop, on every rank") {
  const std::int64_t n = 3'000'000;
  auto job = pf::pipeline("squares")
                 .source("n", pf::iota<std::int64_t>(0, n))
                 .map("square", [](std::int64_t x) { return x * x % 1000003; }, pf::replicas(2))
                 .filter("div3", [](std::int64_t x) { return x % 3 == 0; })
                 .reduce("sum", std::int64_t{0}, std::plus<>{}, std::plus<>{});
  std::int64_t expected = 0;
  for (std::int64_t x = 0; x < n; ++x)
    if (const std::int64_t y = x * x % 1000003; y % 3 == 0) expected += y;
  const auto r = pf::mpi::run(job);
  CHECK(r.value == expected);  // a reduce's value is broadcast
  CHECK(r.rank == world_rank());
  CHECK(r.size == world_size());
  if (r.rank == 0) {
    REQUIRE(r.ranks.size() == static_cast<std::size_t>(world_size()));
    REQUIRE(r.report.stages.size() == 4);
    CHECK(r.report.stages[0].items_out == static_cast<std::uint64_t>(n));  // every item once, over all ranks
    CHECK(r.report.stages[1].items_in == static_cast<std::uint64_t>(n));
    std::uint64_t per_rank = 0;
    for (const auto& rr : r.ranks) per_rank += rr.report.stages[0].items_out;
    CHECK(per_rank == static_cast<std::uint64_t>(n));
    CHECK(r.sent.messages > 0);
    const std::string table = pf::mpi::rank_table(r.ranks);
    CHECK(table.find("rank") != std::string::npos);
    CHECK(table.find("square") != std::string::npos);
  }
}

TEST_CASE("a CPU-bound map's items are shared by every rank (dynamic claims)") {
  const std::int64_t n = 3000;
  auto job = pf::pipeline("cpu")
                 .source("n", pf::iota<std::int64_t>(0, n))
                 .map("work", [](std::int64_t x) { return burn(x, 100); })
                 .reduce("sum", std::int64_t{0}, std::plus<>{}, std::plus<>{});
  const auto r = pf::mpi::run(job);
  CHECK(r.value == n * (n - 1) / 2);
  if (r.rank == 0) {
    int ranks_with_items = 0;
    for (const auto& rr : r.ranks) ranks_with_items += rr.report.stages[0].items_out > 0 ? 1 : 0;
    CHECK(ranks_with_items == world_size());
  }
}

TEST_CASE("ordered collect across ranks gives the source order on rank 0") {
  const std::int64_t n = 500'000;
  auto job = pf::pipeline("ordered", pf::ordered)
                 .source("n", pf::iota<std::int64_t>(0, n))
                 .map("triple", [](std::int64_t x) { return x * 3; }, pf::replicas(2))
                 .filter("odd", [](std::int64_t x) { return x % 2 != 0; })
                 .collect();
  const auto r = pf::mpi::run(job);
  if (r.rank == 0) {
    std::vector<std::int64_t> expected;
    for (std::int64_t x = 0; x < n; ++x)
      if ((x * 3) % 2 != 0) expected.push_back(x * 3);
    REQUIRE(r.value.size() == expected.size());
    CHECK(r.value == expected);
  } else {
    CHECK(r.value.empty());  // collect's value is on rank 0
  }
}

TEST_CASE("ordered reduce with a non-commutative combine across ranks") {
  const std::int64_t n = 20'000;
  auto job = pf::pipeline("concat", pf::ordered)
                 .source("n", pf::iota<std::int64_t>(0, n))
                 .map("digit", [](std::int64_t x) { return std::string(1, static_cast<char>('a' + x % 26)); })
                 .reduce("concat", std::string{}, [](std::string acc, const std::string& s) { return acc + s; },
                         [](std::string a, const std::string& b) { return a + b; });
  std::string expected;
  for (std::int64_t x = 0; x < n; ++x) expected += static_cast<char>('a' + x % 26);
  const auto r = pf::mpi::run(job);
  CHECK(r.value == expected);
}

TEST_CASE("strings through flat_map and an unordered collect: the same multiset") {
  std::vector<std::string> words;
  for (int i = 0; i < 40'000; ++i) words.push_back("w" + std::to_string(i % 1777));
  auto job = pf::pipeline("words")
                 .source("words", pf::from(words))
                 .flat_map("twice", [](const std::string& w) { return std::vector<std::string>{w, w + "!"}; }, pf::replicas(2))
                 .collect();
  const auto r = pf::mpi::run(job);
  if (r.rank == 0) {
    std::vector<std::string> expected;
    for (const auto& w : words) {
      expected.push_back(w);
      expected.push_back(w + "!");
    }
    auto got = r.value;
    std::sort(got.begin(), got.end());
    std::sort(expected.begin(), expected.end());
    CHECK(got == expected);
  }
}

TEST_CASE("reduce_by_key across ranks: every key once, with the sequential accumulator") {
  const std::int64_t n = 1'000'000;
  auto job = pf::pipeline("groups")
                 .source("n", pf::iota<std::int64_t>(0, n))
                 .map("mix", [](std::int64_t x) { return x * 2654435761LL % 100003; })
                 .reduce_by_key("by_key", [](std::int64_t x) { return x % 4099; }, std::int64_t{0},
                                [](std::int64_t acc, std::int64_t x) { return acc + x; }, std::plus<>{}, pf::replicas(2));
  const auto r = pf::mpi::run(job);
  if (r.rank == 0) {
    std::map<std::int64_t, std::int64_t> expected;
    for (std::int64_t x = 0; x < n; ++x) {
      const std::int64_t y = x * 2654435761LL % 100003;
      expected[y % 4099] += y;
    }
    REQUIRE(r.value.size() == expected.size());
    for (const auto& [k, v] : expected) CHECK(r.value.at(k) == v);
  }
}

TEST_CASE("reduce_by_key with keyed_value::owned: each rank holds the groups of the partitions it owns; together the sequential result") {
  const std::int64_t n = 1'000'000;
  auto job = pf::pipeline("owned")
                 .source("n", pf::iota<std::int64_t>(0, n))
                 .map("mix", [](std::int64_t x) { return x * 2654435761LL % 100003; })
                 .reduce_by_key("by_key", [](std::int64_t x) { return std::to_string(x % 4099); }, std::int64_t{0},
                                [](std::int64_t acc, std::int64_t x) { return acc + x; }, std::plus<>{}, pf::replicas(2));
  pf::mpi::run_options options;
  options.keys = pf::mpi::keyed_value::owned;
  const auto r = pf::mpi::run(job, options);
  std::map<std::string, std::int64_t> expected;
  for (std::int64_t x = 0; x < n; ++x) {
    const std::int64_t y = x * 2654435761LL % 100003;
    expected[std::to_string(y % 4099)] += y;
  }
  // Only the partitions this rank owns, each group complete.
  const auto parts = r.value.partitions();
  for (std::size_t p = 0; p < parts.size(); ++p)
    if (static_cast<int>(p % static_cast<std::size_t>(world_size())) != world_rank()) CHECK(parts[p].size() == 0);
  std::int64_t wrong = 0;
  for (const auto& [k, v] : r.value) wrong += expected.count(k) == 0 || expected.at(k) != v ? 1 : 0;
  CHECK(wrong == 0);
  // Disjoint across ranks, and every key somewhere.
  std::int64_t held = static_cast<std::int64_t>(r.value.size());
  std::int64_t total = 0;
  MPI_Allreduce(&held, &total, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
  CHECK(total == static_cast<std::int64_t>(expected.size()));
  if (world_size() > 1) CHECK(held < total);
}

// Runs `job`, whose combine throws on rank `failing` only: every rank must throw the same
// stage_error, naming `stage`, that rank and `what`; the next run then works on every rank.
template <class Job>
void check_combine_failure(const Job& job, const std::string& stage, int failing, const std::string& what) {
  bool threw = false;
  try {
    (void)pf::mpi::run(job);
  } catch (const pf::stage_error& e) {
    threw = true;
    CHECK(e.stage() == stage);
    CHECK(std::string(e.what()).find(fmt::format("on MPI rank {} of", failing)) != std::string::npos);
    CHECK(std::string(e.what()).find(what) != std::string::npos);
  }
  CHECK(threw);
  auto next = pf::pipeline("after").source("n", pf::iota<std::int64_t>(0, 1000)).reduce("sum", std::int64_t{0}, std::plus<>{}, std::plus<>{});
  CHECK(pf::mpi::run(next).value == 999 * 1000 / 2);
}

TEST_CASE("a combine failing on one rank ends the run on every rank with the same stage_error") {
  const int me = world_rank();
  // reduce_by_key: rank 1 merges the partitions it owns (before keys were routed, only rank 0 merged).
  check_combine_failure(pf::pipeline("keyed_combine_fails")
                            .source("n", pf::iota<std::int64_t>(0, 400'000))
                            .reduce_by_key("by_key", [](std::int64_t x) { return x % 1000; }, std::int64_t{0},
                                           [](std::int64_t acc, std::int64_t x) { return acc + x; },
                                           [me](std::int64_t a, std::int64_t b) {
                                             if (me == 1) throw std::runtime_error("boom in combine");
                                             return a + b;
                                           },
                                           pf::replicas(2)),
                        "by_key", 1, "boom in combine");
  // reduce: rank 0 combines every rank's partials.
  check_combine_failure(pf::pipeline("reduce_combine_fails")
                            .source("n", pf::iota<std::int64_t>(0, 100'000))
                            .reduce("sum", std::int64_t{0}, std::plus<>{},
                                    [me](std::int64_t a, std::int64_t b) {
                                      if (me == 0) throw std::runtime_error("boom in reduce");
                                      return a + b;
                                    },
                                    pf::replicas(2)),
                        "sum", 0, "boom in reduce");
}

TEST_CASE("a source in a process of its own (fusion(false)) produces its rank's chunks; under pf::ordered it is refused by name") {
  const std::int64_t n = 300'000;
  auto job = pf::pipeline("unfused", pf::fusion(false))
                 .source("n", pf::iota<std::int64_t>(0, n))
                 .map("twice", [](std::int64_t x) { return 2 * x; }, pf::replicas(2))
                 .reduce("sum", std::int64_t{0}, std::plus<>{}, std::plus<>{});
  const auto r = pf::mpi::run(job);
  CHECK(r.value == n * (n - 1));  // threw before: the source had to be fused
  if (r.rank == 0) CHECK(r.report.stages.at(0).items_out == static_cast<std::uint64_t>(n));  // merged on rank 0
  auto ordered = pf::pipeline("unfused_ordered", pf::fusion(false), pf::ordered)
                     .source("n", pf::iota<std::int64_t>(0, 1000))
                     .map("twice", [](std::int64_t x) { return 2 * x; })
                     .collect();
  bool refused = false;
  try {
    (void)pf::mpi::run(ordered);
  } catch (const pf::stage_error& e) {
    refused = std::string(e.what()).find("under pf::ordered a splittable source must run fused") != std::string::npos;
  }
  CHECK(refused);
}

TEST_CASE("a generator source: rank 0 feeds the stages on the other ranks; the result is complete") {
  auto job = pf::pipeline("gen")
                 .source("gen", [i = 0]() mutable -> std::optional<int> {
                   if (i == 10'000) return std::nullopt;
                   return i++;
                 })
                 .map("plus1", [](int x) { return std::int64_t{x} + 1; })
                 .reduce("sum", std::int64_t{0}, std::plus<>{}, std::plus<>{});
  const auto r = pf::mpi::run(job);
  CHECK(r.value == std::int64_t{10'000} * 10'001 / 2);
}

TEST_CASE("a sink runs on every rank over that rank's items") {
  const std::int64_t n = 200'000;
  std::int64_t local_sum = 0;
  std::int64_t local_count = 0;
  auto job = pf::pipeline("sink")
                 .source("n", pf::iota<std::int64_t>(0, n))
                 .map("id", [](std::int64_t x) { return x; })
                 .sink("add", [&](std::int64_t x) {
                   local_sum += x;
                   ++local_count;
                 });
  pf::mpi::run(job);
  std::int64_t totals[2] = {0, 0};
  std::int64_t mine[2] = {local_sum, local_count};
  MPI_Allreduce(mine, totals, 2, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
  CHECK(totals[0] == n * (n - 1) / 2);
  CHECK(totals[1] == n);
}

TEST_CASE("pf::mpi::rank() is the rank inside stage code, -1 outside a run") {
  CHECK(pf::mpi::rank() == -1);
  auto job = pf::pipeline("whoami")
                 .source("n", pf::iota<std::int64_t>(0, 100'000))
                 .map("rank", [](std::int64_t) { return std::int64_t{pf::mpi::rank()}; })
                 .reduce("max", std::int64_t{-1}, [](std::int64_t a, std::int64_t b) { return std::max(a, b); },
                         [](std::int64_t a, std::int64_t b) { return std::max(a, b); });
  const auto r = pf::mpi::run(job);
  CHECK(r.value >= 0);
  CHECK(r.value < world_size());
  CHECK(pf::mpi::rank() == -1);
}

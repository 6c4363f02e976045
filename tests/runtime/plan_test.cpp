// Checks lib/runtime/plan.hpp's chunking of a splittable source (issue 13, point 10): for every
// integral type, the full range iota(min, max) is planned into chunks that cover exactly its
// size() items, up to iota<uint64_t>(0, UINT64_MAX) and iota<int64_t>(INT64_MIN, INT64_MAX)
// (2^64 - 1 items), without running them: the chunk count, the first and the last chunk's
// range, and that claiming past the last chunk yields nothing.
#include "runtime/plan.hpp"

#include <procflow/procflow.hpp>

#include <doctest/doctest.h>

#include <cstdint>
#include <functional>
#include <limits>
#include <optional>
#include <tuple>
#include <vector>

namespace pf = procflow;
using procflow::runtime::chunk_range;
using procflow::runtime::make_plan;

namespace {

template <class T>
pf::detail::pipeline_def iota_pipeline(T first, T last, std::uint32_t replicas) {
  return pf::pipeline("limits")
      .source("numbers", pf::iota<T>(first, last))
      .map("id", [](T x) { return x; }, pf::replicas(replicas))
      .reduce("count", std::uint64_t{0}, [](std::uint64_t n, T) { return n + 1; }, std::plus<>{})
      .definition();
}

// The plan covers [0, size) with chunks: every item in exactly one chunk, none past the end.
void check_chunks(const pf::detail::pipeline_def& def, std::uint64_t size) {
  CAPTURE(size);
  const auto plan = make_plan(def);
  REQUIRE(plan.chunk_items >= 1);
  const std::uint64_t want = size / plan.chunk_items + (size % plan.chunk_items != 0 ? 1 : 0);
  CHECK(plan.chunks == want);
  if (size == 0) return;
  REQUIRE(plan.chunks >= 1);
  const auto first = chunk_range(plan, 0, size);
  CHECK(first.first == 0);
  CHECK(first.last == std::min(size, plan.chunk_items));
  const auto last = chunk_range(plan, plan.chunks - 1, size);
  CHECK(last.first == (plan.chunks - 1) * plan.chunk_items);  // no wrap: (chunks-1)*chunk_items < size
  CHECK(last.first < size);
  CHECK(last.last == size);
  CHECK(last.last - last.first <= plan.chunk_items);
  if (plan.chunks >= 2) {
    const auto before = chunk_range(plan, plan.chunks - 2, size);
    CHECK(before.last == last.first);  // contiguous
    CHECK(before.last - before.first == plan.chunk_items);
  }
  // A replica claiming past the end gets nothing (the counter keeps counting up).
  const auto past = chunk_range(plan, plan.chunks, size);
  CHECK(past.first == past.last);
  const auto far = chunk_range(plan, std::numeric_limits<std::uint64_t>::max(), size);
  CHECK(far.first == far.last);
}

}  // namespace

TEST_CASE_TEMPLATE("plan: iota over the full range of every integral type is chunked exactly", T, char,
                   signed char, unsigned char, wchar_t, char16_t, char32_t, std::int8_t, std::uint8_t,
                   std::int16_t, std::uint16_t, std::int32_t, std::uint32_t, std::int64_t, std::uint64_t, long,
                   unsigned long, long long, unsigned long long) {
  constexpr T lo = std::numeric_limits<T>::min();
  constexpr T hi = std::numeric_limits<T>::max();
  // [lo, hi) has hi - lo items, computed without overflow in 64-bit unsigned arithmetic.
  const std::uint64_t full = static_cast<std::uint64_t>(hi) - static_cast<std::uint64_t>(lo);
  for (std::uint32_t replicas : {1u, 2u, 7u}) {
    CAPTURE(replicas);
    check_chunks(iota_pipeline<T>(lo, hi, replicas), full);
    check_chunks(iota_pipeline<T>(lo, lo, replicas), 0);
    check_chunks(iota_pipeline<T>(static_cast<T>(hi - 1), hi, replicas), 1);
  }
}

TEST_CASE("plan: the two ranges of the report have 2^64 - 1 items, not 0 chunks") {
  constexpr auto u64_max = std::numeric_limits<std::uint64_t>::max();
  const auto u = make_plan(iota_pipeline<std::uint64_t>(0, u64_max, 2));
  CHECK(u.chunks > 0);
  CHECK(u.chunks == u64_max / u.chunk_items + (u64_max % u.chunk_items != 0));
  const auto s = make_plan(iota_pipeline<std::int64_t>(std::numeric_limits<std::int64_t>::min(),
                                                        std::numeric_limits<std::int64_t>::max(), 2));
  CHECK(s.chunks == u.chunks);
  // Chunk sizes that do not divide 2^64 - 1 evenly still end exactly at the last item.
  for (std::uint32_t replicas : {1u, 3u, 5u, 256u}) check_chunks(iota_pipeline<std::uint64_t>(0, u64_max, replicas), u64_max);
}

namespace {
template <class... Opts>
pf::detail::pipeline_def busy_pipeline(pf::replicas replicas, const Opts&... opts) {
  return pf::pipeline("busy", opts...)
      .source("numbers", pf::iota<std::int64_t>(0, 1000))
      .map("id", [](std::int64_t x) { return x; }, replicas)
      .reduce("sum", std::int64_t{0}, std::plus<>{}, std::plus<>{})
      .definition();
}
}  // namespace

TEST_CASE("plan: an idle port spins only while no more processes may be busy than this process has CPUs") {
  using procflow::runtime::available_cores;
  constexpr auto spins = procflow::channel::default_spin_iterations;
  const std::uint32_t hw = available_cores();
  CHECK(make_plan(busy_pipeline(pf::replicas(hw))).spin == spins);
  CHECK(make_plan(busy_pipeline(pf::replicas(hw + 1))).spin == 0);
  // Under auto_scale the scheduler may fill the budget: it counts, not the replicas started with.
  CHECK(make_plan(busy_pipeline(pf::replicas(pf::auto_scale), pf::cores(hw))).spin == spins);
  CHECK(make_plan(busy_pipeline(pf::replicas(pf::auto_scale), pf::cores(hw + 4))).spin == 0);
  // A generator in its own process is one more.
  const auto generated = pf::pipeline("gen")
                             .source("g", [i = 0]() mutable -> std::optional<int> { return i < 10 ? std::optional<int>(i++) : std::nullopt; })
                             .map("id", [](int x) { return x; }, pf::replicas(hw))
                             .reduce("sum", 0, std::plus<>{}, std::plus<>{})
                             .definition();
  CHECK(make_plan(generated).spin == 0);
}

TEST_CASE("plan: pinning lists the budget's CPUs, the first n of the caller's under cores(n); none without it") {
  using procflow::runtime::available_cpus;
  const std::vector<int> cpus = available_cpus();
  REQUIRE(!cpus.empty());
  CHECK(make_plan(busy_pipeline(pf::replicas(2))).pin_cpus.empty());
  CHECK(make_plan(busy_pipeline(pf::replicas(2), pf::pinning(false))).pin_cpus.empty());
  CHECK(make_plan(busy_pipeline(pf::replicas(2), pf::pinning(true))).pin_cpus == cpus);
  CHECK(make_plan(busy_pipeline(pf::replicas(2), pf::pinning(true), pf::cores(1))).pin_cpus == std::vector<int>{cpus.front()});
  CHECK(make_plan(busy_pipeline(pf::replicas(2), pf::pinning(true), pf::cores(static_cast<std::uint32_t>(cpus.size()) + 3))).pin_cpus == cpus);
}

namespace {

// Each group's [first, end) stages and replicas started with, in order.
std::vector<std::tuple<std::size_t, std::size_t, std::uint32_t>> groups_of(const pf::detail::pipeline_def& def) {
  std::vector<std::tuple<std::size_t, std::size_t, std::uint32_t>> out;
  for (const auto& g : make_plan(def).groups) out.emplace_back(g.first_stage, g.end_stage, g.replicas);
  return out;
}

using Groups = std::vector<std::tuple<std::size_t, std::size_t, std::uint32_t>>;

auto is_even = [](std::int64_t x) { return x % 2 == 0; };
auto twice = [](std::int64_t x) { return 2 * x; };

}  // namespace

TEST_CASE("plan: stateless stages before the first count take it and run in its processes, with the source's chunks") {
  // iota -> filter -> map(replicas(3)): one group of 3 reading chunks (it was 1 + 3 with a hop).
  CHECK(groups_of(pf::pipeline("p").source("n", pf::iota<std::int64_t>(0, 100)).filter("even", is_even)
                      .map("x2", twice, pf::replicas(3)).collect().definition()) == Groups{{0, 3, 3}});
  CHECK(groups_of(pf::pipeline("p").source("n", pf::iota<std::int64_t>(0, 100)).filter("even", is_even).map("x2", twice)
                      .map("x4", twice, pf::replicas(3)).collect().definition()) == Groups{{0, 4, 3}});
  // A generator stays one process; the stages after it take the count together.
  const auto gen = [i = std::int64_t{0}]() mutable -> std::optional<std::int64_t> {
    return i < 10 ? std::optional<std::int64_t>(i++) : std::nullopt;
  };
  CHECK(groups_of(pf::pipeline("p").source("g", gen).map("x2", twice).map("x4", twice, pf::replicas(2)).collect().definition()) ==
        Groups{{0, 1, 1}, {1, 3, 2}});
  // Stages after the counted one inherit it as before.
  CHECK(groups_of(pf::pipeline("p").source("n", pf::iota<std::int64_t>(0, 100)).filter("even", is_even)
                      .map("x2", twice, pf::replicas(2)).map("x4", twice).collect().definition()) == Groups{{0, 4, 2}});
}

TEST_CASE("plan: a stage before the first count keeps one process when it holds state, asks for its own, or fusion is off") {
  const auto source = [] { return pf::pipeline("p").source("n", pf::iota<std::int64_t>(0, 100)); };
  // A mutable lambda holds state: never replicated by accident.
  CHECK(groups_of(source().map("count", [n = 0](std::int64_t x) mutable { return x + n++; })
                      .map("x2", twice, pf::replicas(3)).collect().definition()) == Groups{{0, 2, 1}, {2, 3, 3}});
  CHECK(groups_of(source().filter("even", is_even, pf::own_process).map("x2", twice, pf::replicas(3)).collect().definition()) ==
        Groups{{0, 1, 1}, {1, 2, 1}, {2, 3, 3}});
  // The counted stage in its own processes: nothing to fuse with.
  CHECK(groups_of(source().filter("even", is_even).map("x2", twice, pf::replicas(3), pf::own_process).collect().definition()) ==
        Groups{{0, 2, 1}, {2, 3, 3}});
  CHECK(groups_of(pf::pipeline("p", pf::fusion(false)).source("n", pf::iota<std::int64_t>(0, 100)).filter("even", is_even)
                      .map("x2", twice, pf::replicas(3)).collect().definition()) == Groups{{0, 1, 1}, {1, 2, 1}, {2, 3, 3}});
}

TEST_CASE("plan: a sink with replicas runs in the processes of the stages before it when the counts match") {
  const auto mapped = [] { return pf::pipeline("p").source("n", pf::iota<std::int64_t>(0, 100)).map("x2", twice, pf::replicas(2)); };
  const auto drop = [](std::int64_t) {};
  // The same count: one group of 2 (before, a sink always had processes of its own: 2 + 2 and a ring).
  CHECK(groups_of(mapped().sink("s", drop, pf::replicas(2)).definition()) == Groups{{0, 3, 2}});
  // Another count, or own_process: its own group. In the caller (the default): no group.
  CHECK(groups_of(mapped().sink("s", drop, pf::replicas(3)).definition()) == Groups{{0, 2, 2}, {2, 3, 3}});
  CHECK(groups_of(mapped().sink("s", drop, pf::own_process).definition()) == Groups{{0, 2, 2}, {2, 3, 1}});
  CHECK(groups_of(mapped().sink("s", drop).definition()) == Groups{{0, 2, 2}});
  // Straight after the source: the sink's count is the chunk readers'.
  CHECK(groups_of(pf::pipeline("p").source("n", pf::iota<std::int64_t>(0, 100)).sink("s", drop, pf::replicas(2)).definition()) ==
        Groups{{0, 1, 1}, {1, 2, 2}});
}

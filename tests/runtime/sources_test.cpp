// Checks include/procflow/sources.hpp end to end (issue 13, point 10): pf::iota at the limits of
// every integral type runs through real pipelines. Small ranges at both extremes (and the whole
// range of the 8- and 16-bit types) are collected in order and compared item by item, chunked
// into replicas and from a source in its own process; the 2^64 - 1 item ranges, which cannot be
// run to the end, must deliver items (a stage that stops at its first item reports it).
#include <procflow/procflow.hpp>

#include <doctest/doctest.h>

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace pf = procflow;

namespace {

template <class T>
std::vector<T> expected(T first, T last) {
  std::vector<T> v;
  for (T x = first; x != last; ++x) v.push_back(x);
  return v;
}

// iota(first, last) through 2 chunk-claiming replicas and through a source process of its own.
template <class T>
void check_range(T first, T last) {
  CAPTURE(static_cast<long long>(first));
  CAPTURE(static_cast<unsigned long long>(last));
  const auto want = expected(first, last);
  {
    auto r = pf::pipeline("iota chunks", pf::ordered, pf::batch_bytes(256))
                 .source("numbers", pf::iota<T>(first, last))
                 .map("id", [](T x) { return x; }, pf::replicas(2))
                 .collect()
                 .run();
    CHECK(r.value == want);
  }
  {
    auto r = pf::pipeline("iota own process", pf::ordered, pf::fusion(false))
                 .source("numbers", pf::iota<T>(first, last))
                 .map("id", [](T x) { return x; }, pf::replicas(2))
                 .collect()
                 .run();
    CHECK(r.value == want);
  }
}

}  // namespace

TEST_CASE_TEMPLATE("iota: small ranges at both limits of every integral type arrive complete and in order", T,
                   char, signed char, unsigned char, wchar_t, char16_t, char32_t, std::int8_t, std::uint8_t,
                   std::int16_t, std::uint16_t, std::int32_t, std::uint32_t, std::int64_t, std::uint64_t, long,
                   unsigned long, long long, unsigned long long) {
  constexpr T lo = std::numeric_limits<T>::min();
  constexpr T hi = std::numeric_limits<T>::max();
  if constexpr (sizeof(T) <= 2) {
    check_range<T>(lo, hi);  // the whole range: at most 65 535 items
  } else {
    check_range<T>(static_cast<T>(hi - 1000), hi);
    check_range<T>(lo, static_cast<T>(lo + 1000));
  }
  check_range<T>(static_cast<T>(hi - 1), hi);
  check_range<T>(hi, hi);
}

TEST_CASE("iota: iota(INT64_MAX - 1000, INT64_MAX) sums as a plain loop does") {
  constexpr auto i64_max = std::numeric_limits<std::int64_t>::max();
  auto r = pf::pipeline("top")
               .source("numbers", pf::iota<std::int64_t>(i64_max - 1000, i64_max))
               .map("offset", [](std::int64_t x) { return static_cast<std::uint64_t>(i64_max - x); }, pf::replicas(3))
               .reduce("sum", std::uint64_t{0}, std::plus<>{}, std::plus<>{})
               .run();
  CHECK(r.value == 1000ull * 1001ull / 2);  // offsets 1..1000
  CHECK(r.report.stages.front().items_out == 1000);
}

TEST_CASE("iota: the 2^64 - 1 item ranges deliver items (they used to plan 0 chunks and return nothing)") {
  // A stage that throws on its first item: the run must fail naming it, proving items flowed.
  auto stop = [](auto x) -> decltype(x) { throw std::runtime_error("first item reached"); };
  SUBCASE("uint64_t, chunked") {
    CHECK_THROWS_WITH_AS(pf::pipeline("u64").source("numbers", pf::iota<std::uint64_t>(0, std::numeric_limits<std::uint64_t>::max()))
                             .map("stop", stop, pf::replicas(2))
                             .reduce("sum", std::uint64_t{0}, std::plus<>{}, std::plus<>{})
                             .run(),
                         doctest::Contains("first item reached"), pf::stage_error);
  }
  SUBCASE("int64_t, chunked") {
    CHECK_THROWS_WITH_AS(pf::pipeline("i64").source("numbers", pf::iota<std::int64_t>(std::numeric_limits<std::int64_t>::min(),
                                                                                         std::numeric_limits<std::int64_t>::max()))
                             .map("stop", stop, pf::replicas(2))
                             .reduce("sum", std::int64_t{0}, std::plus<>{}, std::plus<>{})
                             .run(),
                         doctest::Contains("first item reached"), pf::stage_error);
  }
  SUBCASE("int64_t, source in its own process") {
    CHECK_THROWS_WITH_AS(pf::pipeline("i64 own", pf::fusion(false))
                             .source("numbers", pf::iota<std::int64_t>(std::numeric_limits<std::int64_t>::min(),
                                                                       std::numeric_limits<std::int64_t>::max()))
                             .map("stop", stop, pf::replicas(2))
                             .reduce("sum", std::int64_t{0}, std::plus<>{}, std::plus<>{})
                             .run(),
                         doctest::Contains("first item reached"), pf::stage_error);
  }
}

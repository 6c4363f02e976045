// Checks the iota fill fused into the first map (source_base::fill_into,
// stage_instance::take_index_range): the map computes a chunk's items first + i in its own loop
// instead of reading a filled buffer. The items, their order, the item a throw names, and the
// report's per-stage counts must be those of the filled path, in processes and in threads, for
// several arithmetic types, trivially and non-trivially copyable outputs, and ranges that do not
// start at 0. Under pf::skip / pf::retry the dead letters' items, the retries and the item a
// failure names must be those of the filled path (pf::fusion(false)). Every case runs in a child of the test under a
// watchdog (support/isolated.hpp).
#include "support/isolated.hpp"

#include <procflow/procflow.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <compare>
#include <cstdint>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace pf = procflow;
namespace pt = procflow::test;
using namespace std::chrono_literals;

namespace {

void isolated(const char* what, const std::function<void()>& body) { CHECK(pt::run_isolated(what, 60s, body)); }

const pf::stage_report& stage(const pf::run_report& r, const std::string& name) {
  for (const auto& s : r.stages)
    if (s.name == name) return s;
  throw std::runtime_error("no stage " + name);
}

// iota<T>(first, last) -> map(fn) -> ordered collect, in processes and in threads, against the
// plain loop over the same range.
template <class T, class F>
void same_items(T first, T last, F fn) {
  using Out = std::decay_t<std::invoke_result_t<F&, T>>;
  std::vector<Out> want;
  for (T x = first; x != last; ++x) want.push_back(fn(x));
  auto p = pf::pipeline("fused fill", pf::ordered)
               .source("n", pf::iota<T>(first, last))
               .map("m", fn, pf::replicas(2))
               .collect();
  const auto in_processes = p.run();
  CHECK(in_processes.value == want);
  CHECK(stage(in_processes.report, "n").items_out == want.size());
  CHECK(stage(in_processes.report, "m").items_in == want.size());
  CHECK(stage(in_processes.report, "m").items_out == want.size());
  const auto in_threads = p.run(pf::in_threads);
  CHECK(in_threads.value == want);
  CHECK(stage(in_threads.report, "n").items_out == want.size());
  CHECK(stage(in_threads.report, "m").items_in == want.size());
  CHECK(stage(in_threads.report, "m").items_out == want.size());
}

}  // namespace

TEST_CASE("an iota's first map computes the items the fill would have written, in order, in both modes") {
  isolated("int64 from a negative start",
           [] { same_items<std::int64_t>(-70001, 130003, [](std::int64_t x) { return x * 3 + 1; }); });
  isolated("uint32 to uint64", [] {
    same_items<std::uint32_t>(4000000000u, 4000100000u, [](std::uint32_t x) { return std::uint64_t{x} * x; });
  });
  isolated("int16 over its whole range",
           [] { same_items<std::int16_t>(-32768, 32767, [](std::int16_t x) { return static_cast<int>(x) - 1; }); });
  isolated("to a string (the non-trivial output path)",
           [] { same_items<std::int64_t>(5, 40005, [](std::int64_t x) { return std::to_string(x); }); });
  isolated("a map that takes its item by reference",
           [] { same_items<std::int64_t>(0, 50000, [](const std::int64_t& x) { return x ^ 0x5555; }); });
}

TEST_CASE("a throw in a computed item names its source position and the stage, in both modes") {
  isolated("throw at item 123457", [] {
    auto p = pf::pipeline("fused fill throw")
                 .source("n", pf::iota<std::int64_t>(1000, 301000))
                 .map(
                     "m",
                     [](std::int64_t x) {
                       if (x == 124457) throw std::runtime_error("bad " + std::to_string(x));
                       return x;
                     },
                     pf::replicas(2))
                 .reduce("sum", std::int64_t{0}, std::plus<>{}, std::plus<>{});
    for (const bool threads : {false, true}) {
      std::optional<pf::stage_error> error;
      try {
        if (threads) {
          (void)p.run(pf::in_threads);
        } else {
          (void)p.run();
        }
      } catch (const pf::stage_error& e) {
        error = e;
      }
      REQUIRE(error.has_value());
      CHECK(error->stage() == "m");
      CHECK(error->item_seq() == 123457);  // the position in the source, not the value
      CHECK(error->message() == "bad 124457");
    }
  });
}

TEST_CASE("skip and retry on a map fed by an iota: exact results and counts as with a filled buffer") {
  isolated("skip", [] {
    const auto r = pf::pipeline("fused fill skip")
                       .source("n", pf::iota<std::int64_t>(0, 100000))
                       .map(
                           "m",
                           [](std::int64_t x) {
                             if (x % 1000 == 7) throw std::runtime_error("skip me");
                             return x;
                           },
                           pf::replicas(2), pf::skip)
                       .reduce("sum", std::int64_t{0}, std::plus<>{}, std::plus<>{})
                       .run();
    std::int64_t want = 0;
    for (std::int64_t x = 0; x < 100000; ++x)
      if (x % 1000 != 7) want += x;
    CHECK(r.value == want);
    CHECK(stage(r.report, "m").items_skipped == 100);
    CHECK(stage(r.report, "m").items_out == 100000 - 100);
    for (const auto& d : r.report.dead_letters) CHECK(d.item_seq % 1000 == 7);
  });
  isolated("retry", [] {
    const auto r = pf::pipeline("fused fill retry")
                       .source("n", pf::iota<std::int64_t>(0, 100000))
                       .map(
                           "m",
                           [tries = std::vector<int>(100000, 0)](std::int64_t x) mutable {
                             if (x % 5000 == 0 && tries[static_cast<std::size_t>(x)]++ == 0)
                               throw std::runtime_error("flaky");
                             return x;
                           },
                           pf::replicas(2), pf::retry(2, 1ms))
                       .reduce("sum", std::int64_t{0}, std::plus<>{}, std::plus<>{})
                       .run();
    CHECK(r.value == std::int64_t{99999} * 100000 / 2);
    CHECK(stage(r.report, "m").retries == 20);
  });
}

// Under an error policy the fused fill must leave what a policy reads exactly as the filled path
// leaves it: a skip's dead letter encodes the failing item from the map's input buffer, and a retry
// calls the function again on the item as the failed try left it. Each case runs the pipeline as
// declared (the iota's chunks offered to the map as index ranges) and with pf::fusion(false) (the
// map decodes filled batches from a ring) and compares both with the expected letters and sums.
namespace {

constexpr std::int64_t first_x = 1000;  // item_seq = x - first_x: a position, never the value
constexpr std::int64_t last_x = 201000;
bool fails(std::int64_t x) { return x % 25000 == 1007; }  // 8 items, within 2 replicas' letters

struct letter {
  std::uint64_t item_seq;
  std::int64_t item;
  std::string message;
  auto operator<=>(const letter&) const = default;
};

std::vector<letter> letters_of(const pf::run_report& report) {
  std::vector<letter> out;
  for (const auto& d : report.dead_letters) {
    INFO("stage ", d.stage, " item ", d.item_seq, ": ", d.item_note);
    REQUIRE(d.item_kept);
    out.push_back({d.item_seq, d.decode_item<std::int64_t>(), d.message});
  }
  std::sort(out.begin(), out.end());
  return out;
}

template <class Map, class... Policy>
auto skipping_run(bool fused, Map fn, Policy... policy) {
  auto p = fused ? pf::pipeline("fused fill dead letters") : pf::pipeline("filled dead letters", pf::fusion(false));
  return p.source("n", pf::iota<std::int64_t>(first_x, last_x))
      .map("m", fn, pf::replicas(2), policy...)
      .reduce("sum", std::int64_t{0}, std::plus<>{}, std::plus<>{})
      .run();
}

}  // namespace

TEST_CASE("skip on a map fed by an iota: each dead letter holds the item that failed, as with a filled buffer") {
  isolated("by value", [] {
    const auto fn = [](std::int64_t x) {
      if (fails(x)) throw std::runtime_error("bad " + std::to_string(x));
      return x;
    };
    std::vector<letter> want;
    std::int64_t sum = 0;
    for (std::int64_t x = first_x; x < last_x; ++x) {
      if (fails(x)) {
        want.push_back({static_cast<std::uint64_t>(x - first_x), x, "bad " + std::to_string(x)});
      } else {
        sum += x;
      }
    }
    REQUIRE(want.size() == 8);
    for (const bool fused : {true, false}) {
      INFO("fused: ", fused);
      const auto r = skipping_run(fused, fn, pf::skip);
      CHECK(r.value == sum);
      CHECK(stage(r.report, "m").items_skipped == want.size());
      CHECK(letters_of(r.report) == want);
    }
  });
  isolated("a function that changes its item through a reference before it throws", [] {
    // The letter keeps the item as the function left it (dead_letter.hpp), in both paths.
    const auto fn = [](std::int64_t& x) {
      if (fails(x)) {
        x += 1'000'000'000;
        throw std::runtime_error("changed");
      }
      return x;
    };
    std::vector<letter> want;
    for (std::int64_t x = first_x; x < last_x; ++x)
      if (fails(x)) want.push_back({static_cast<std::uint64_t>(x - first_x), x + 1'000'000'000, "changed"});
    const auto fused = skipping_run(true, fn, pf::skip);
    const auto filled = skipping_run(false, fn, pf::skip);
    CHECK(letters_of(fused.report) == want);
    CHECK(letters_of(filled.report) == want);
    CHECK(fused.value == filled.value);
  });
}

TEST_CASE(
    "retry on a map fed by an iota: the retry sees the item the failed try left, and retry-then-fail names its "
    "position") {
  isolated("retry of an item changed through a reference", [] {
    // The first try negates the item and throws; the retry gets the negated item (as from a filled
    // buffer), which does not fail. A retry on a freshly computed item would fail again.
    const auto fn = [](std::int64_t& x) {
      if (x > 0 && fails(x)) {
        x = -x;
        throw std::runtime_error("flaky");
      }
      return x;
    };
    std::int64_t want = 0;
    for (std::int64_t x = first_x; x < last_x; ++x) want += fails(x) ? -x : x;
    for (const bool fused : {true, false}) {
      INFO("fused: ", fused);
      const auto r = skipping_run(fused, fn, pf::retry(1, 0ms));
      CHECK(r.value == want);
      CHECK(stage(r.report, "m").retries == 8);
      CHECK(stage(r.report, "m").items_skipped == 0);
    }
  });
  isolated("retry then fail", [] {
    const auto fn = [](std::int64_t x) {
      if (x == 151007) throw std::runtime_error("always " + std::to_string(x));
      return x;
    };
    for (const bool fused : {true, false}) {
      INFO("fused: ", fused);
      std::optional<pf::stage_error> error;
      try {
        (void)skipping_run(fused, fn, pf::retry(2, 0ms));
      } catch (const pf::stage_error& e) {
        error = e;
      }
      REQUIRE(error.has_value());
      CHECK(error->stage() == "m");
      CHECK(error->item_seq() == 150007);
      CHECK(error->message() == "always 151007");
    }
  });
}

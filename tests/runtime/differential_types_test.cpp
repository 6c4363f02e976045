// Checks SPEC §1's codec promise through whole pipelines: item kinds beyond the core ones travel
// through the same random pipelines as differential_core_test and agree with a sequential run —
// fixed-size raw items (array<int32,4>, and a plain struct opted in with PROCFLOW_CODEC), a trivially copyable type with a codec of its own (its
// codec must win on every path), a user-codec type holding a string (empty ones included), a type
// that encodes to zero bytes, alone and converted to and from int64 in the same pipeline. And
// iota of every integral type at the limits of its range. See differential_support.hpp.
#include "runtime/differential_support.hpp"

#include <limits>

namespace {

using namespace difftest;

using CaseFn = void (*)(Rng&, std::uint64_t, const Features&);
// Each kind alone, and converted from / to int64 part way (a pipeline mixing it with 8-byte items).
constexpr CaseFn cases[] = {
    &run_case<Raw, Raw>,         &run_case<Tagged, Tagged>, &run_case<Labeled, Labeled>, &run_case<Empty, Empty>,
    &run_case<i64, Raw>,         &run_case<Tagged, i64>,    &run_case<i64, Labeled>,     &run_case<Empty, i64>,
    &run_case<i64, Empty>,       &run_case<Record, Record>, &run_case<Labeled, Record>,
};

void run_seed(std::uint64_t seed) {
  Rng rng(seed);
  cases[std::uniform_int_distribution<std::size_t>(0, std::size(cases) - 1)(rng)](rng, seed, Features{});
}

// iota<T>(first, last) over `n` items at one end of T's range, through a map in replicas and a
// collect: exactly the sequential items.
template <class T>
void check_iota_edge(T first, T last) {
  CAPTURE(first);
  CAPTURE(last);
  auto r = pf::pipeline("iota_limits").source("n", pf::iota<T>(first, last)).map("id", [](T x) { return x; }, pf::replicas(3)).collect(pf::ordered).run();
  std::vector<T> want;
  for (T x = first; x != last; ++x) want.push_back(x);
  CHECK(r.value.size() == want.size());
  CHECK(r.value == want);
}

// The whole range of T: for 8- and 16-bit types run it and compare every item; wider ones
// cannot run to the end, so a map throws at the 1000th item: run() must report that item, not
// return early with nothing.
template <class T>
void check_iota_limits() {
  using L = std::numeric_limits<T>;
  INFO("type ", fmt::format("{}{}", L::is_signed ? "int" : "uint", sizeof(T) * 8));
  check_iota_edge<T>(L::min(), static_cast<T>(L::min() + 100));
  check_iota_edge<T>(static_cast<T>(L::max() - 100), L::max());
  if constexpr (sizeof(T) <= 2) {
    check_iota_edge<T>(L::min(), L::max());
  } else {
    const T stop = static_cast<T>(L::min() + 1000);
    try {
      pf::pipeline("iota_limits")
          .source("n", pf::iota<T>(L::min(), L::max()))
          .map("stop", [stop](T x) {
            if (x == stop) throw std::runtime_error("reached the 1000th item");
            return x;
          }, pf::replicas(2))
          .reduce("count", std::uint64_t{0}, [](std::uint64_t a, T) { return a + 1; }, std::plus<>{})
          .run();
      FAIL_CHECK("iota over the whole range returned instead of reaching its 1000th item");
    } catch (const pf::stage_error& e) {
      INFO("what(): ", std::string(e.what()));
      CHECK(e.stage() == "stop");
      CHECK(e.message() == "reached the 1000th item");
    }
  }
}

}  // namespace

TEST_CASE("random pipelines of raw, user-codec and zero-byte items agree with a sequential loop") {
  run_seeds(seeds_for("differential_types", 0x7e9e0000, 300, 100), run_seed);
}

TEST_CASE("iota of every integral type at the limits of its range") {
  pt::run_isolated(std::chrono::seconds(120), [] {
    check_iota_limits<std::int8_t>();
    check_iota_limits<std::uint8_t>();
    check_iota_limits<std::int16_t>();
    check_iota_limits<std::uint16_t>();
    check_iota_limits<std::int32_t>();
    check_iota_limits<std::uint32_t>();
    check_iota_limits<std::int64_t>();
    check_iota_limits<std::uint64_t>();
    check_iota_limits<long long>();
    check_iota_limits<unsigned long long>();
  });
}

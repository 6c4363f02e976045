// Checks reduce_by_key's keyed dispatch and hashing (include/procflow/hash.hpp, issue 13 point 9
// and issue 9's composite keys): in processes of its own, with 4 replicas and 4000 keys, no
// replica owns more than 1.25x its fair share for structured key sets (multiples of 2^k, strings
// with a long common prefix, pairs and tuples of such); every key meets one replica; std::pair
// and std::tuple keys work without a user hasher; an explicit hasher drives dispatch and is the
// result map's hasher; the result type without one stays std::unordered_map<K, Acc>.
//
// Per-replica load is read from the result itself: each key's accumulator is the pid of the
// replica that folded it, and a combine that sees two pids for one key fails the run.
#include <procflow/procflow.hpp>

#include <doctest/doctest.h>

#include <unistd.h>

#include <cstdint>
#include <map>
#include <string>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <utility>

namespace pf = procflow;
using i64 = std::int64_t;

namespace {

constexpr i64 key_count = 4000;
constexpr std::uint32_t reducers = 4;

// (Built with +=: GCC 12 warns falsely (-Wrestrict) on "literal" + std::string.)
std::string tagged(const char* tag, i64 n) {
  std::string s = tag;
  s += std::to_string(n);
  return s;
}

std::pair<std::string, std::string> route(i64 i) { return {tagged("o", i % 7), tagged("d", i % 5)}; }

i64 owner(i64 acc, const auto&) { return acc != 0 ? acc : static_cast<i64>(::getpid()); }
i64 same_owner(i64 a, i64 b) {
  if (a != 0 && b != 0 && a != b) throw std::logic_error("one key was folded by two replicas");
  return a != 0 ? a : b;
}

// Runs key(i) for i in [0, 4000) through 2 mappers into 4 reduce_by_key replicas of their own
// and returns how many keys each replica owns.
template <class MakeKey, class... Hash>
std::map<i64, i64> owners(MakeKey make_key, const Hash&... hash) {
  auto r = pf::pipeline("keys")
               .source("numbers", pf::iota<i64>(0, key_count))
               .map("key", make_key, pf::replicas(2))
               .reduce_by_key("own", [](const auto& k) { return k; }, i64{0},
                              [](i64 acc, const auto& k) { return owner(acc, k); }, same_owner, hash...,
                              pf::replicas(reducers), pf::own_process)
               .run();
  CHECK(r.value.size() == static_cast<std::size_t>(key_count));
  std::map<i64, i64> per_replica;
  for (const auto& [k, pid] : r.value) ++per_replica[pid];
  return per_replica;
}

void check_balanced(const std::map<i64, i64>& per_replica) {
  const double fair = static_cast<double>(key_count) / reducers;
  CHECK(per_replica.size() == reducers);
  for (const auto& [pid, n] : per_replica) {
    CAPTURE(n);
    CHECK(static_cast<double>(n) <= 1.25 * fair);
  }
}

}  // namespace

TEST_CASE("reduce_by_key: integer keys that are multiples of 2^k spread over 4 replicas") {
  for (int shift : {1, 2, 4, 8, 16, 32, 40}) {
    CAPTURE(shift);
    check_balanced(owners([shift](i64 i) { return static_cast<std::uint64_t>(i) << shift; }));
    check_balanced(owners([shift](i64 i) { return static_cast<std::int32_t>(i << (shift % 20)); }));
  }
  check_balanced(owners([](i64 i) { return i * 4; }));  // the report's case: 0, 4, 8, ...
}

TEST_CASE("reduce_by_key: strings with a long common prefix spread over 4 replicas") {
  const std::string prefix(200, 'p');
  check_balanced(owners([prefix](i64 i) { return tagged(prefix.c_str(), i * 4); }));
  check_balanced(owners([](i64 i) { return tagged("customer/", i << 8); }));
}

TEST_CASE("reduce_by_key: std::pair and std::tuple keys work without a hasher and spread") {
  check_balanced(owners([](i64 i) { return std::pair<i64, i64>{(i / 64) * 4, (i % 64) * 4}; }));
  check_balanced(owners([](i64 i) { return std::pair<std::string, int>{"origin", static_cast<int>(i) * 4}; }));
  check_balanced(owners([](i64 i) { return std::tuple<int, std::string, i64>{0, "x", i << 12}; }));
  check_balanced(owners([](i64 i) { return std::pair<std::pair<int, int>, std::tuple<>>{{0, static_cast<int>(i) * 8}, {}}; }));

  // Composite keys group correctly, fused and in processes of their own.
  for (bool own : {false, true}) {
    CAPTURE(own);
    auto flow = pf::pipeline("routes")
                    .source("numbers", pf::iota<i64>(0, 10'000))
                    .map("route", route,
                         pf::replicas(2));
    auto count = [](i64 n, const auto&) { return n + 1; };
    auto key = [](const std::pair<std::string, std::string>& p) { return p; };
    auto r = own ? flow.reduce_by_key("count", key, i64{0}, count, std::plus<>{}, pf::replicas(3), pf::own_process).run()
                 : flow.reduce_by_key("count", key, i64{0}, count, std::plus<>{}).run();
    static_assert(std::is_same_v<decltype(r.value), std::unordered_map<std::pair<std::string, std::string>, i64,
                                                                         pf::hash<std::pair<std::string, std::string>>>>);
    std::map<std::pair<std::string, std::string>, i64> want;
    for (i64 i = 0; i < 10'000; ++i) ++want[route(i)];
    CHECK(std::map<std::pair<std::string, std::string>, i64>(r.value.begin(), r.value.end()) == want);
  }
}

namespace {
struct constant_hash {
  std::size_t operator()(i64) const noexcept { return 42; }
};
}  // namespace

TEST_CASE("reduce_by_key: an explicit hasher drives dispatch and is the result map's hasher") {
  // Every key hashes alike: one replica owns them all (dispatch used the hasher given).
  const auto per_replica = owners([](i64 i) { return i; }, constant_hash{});
  CHECK(per_replica.size() == 1);
  CHECK(per_replica.begin()->second == key_count);

  auto r = pf::pipeline("h")
               .source("numbers", pf::iota<i64>(0, 100))
               .reduce_by_key("mod", [](i64 i) { return i % 10; }, i64{0}, std::plus<>{}, std::plus<>{}, constant_hash{},
                              pf::replicas(2))
               .run();
  static_assert(std::is_same_v<decltype(r.value), std::unordered_map<i64, i64, constant_hash>>);
  CHECK(r.value.size() == 10);
  CHECK(r.value.at(3) == 3 + 13 + 23 + 33 + 43 + 53 + 63 + 73 + 83 + 93);
}

TEST_CASE("reduce_by_key: without a hasher the result type is still std::unordered_map<K, Acc>") {
  auto r = pf::pipeline("plain")
               .source("numbers", pf::iota<i64>(0, 100))
               .reduce_by_key("mod", [](i64 i) { return std::to_string(i % 3); }, i64{0}, std::plus<>{}, std::plus<>{})
               .run();
  std::unordered_map<std::string, i64> m = r.value;  // existing code keeps compiling
  CHECK(m.size() == 3);
  CHECK(m.at("0") == 1683);  // 0 + 3 + ... + 99
}

TEST_CASE("procflow::hash: pairs and tuples differ by element and by order") {
  const pf::hash<std::pair<int, int>> h;
  CHECK(h({1, 2}) != h({2, 1}));
  CHECK(h({0, 4}) != h({0, 8}));
  const pf::hash<std::tuple<int, std::string>> t;
  CHECK(t({1, "a"}) != t({1, "b"}));
  CHECK(pf::mix_hash(0) != pf::mix_hash(4));
  static_assert(pf::hashable_v<std::tuple<int, std::pair<std::string, long>>>);
  static_assert(!pf::hashable_v<std::pair<int, std::vector<int>>>);
}

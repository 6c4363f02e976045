// Checks reduce_by_key with a key function that returns a std::string_view into its item
// (include/procflow/detail/stored_key.hpp, issue 9: the per-row key cost): the groups are keyed by
// std::string (the keyed_result's key type), every placement (fused / processes of its own,
// unordered / ordered) gives the sequential answer, also past the windowed-probe threshold
// (2^14 keys), in thread mode, and with user hashers (transparent, and one callable only with
// const std::string&);
// flat_table finds an existing key from a view without allocating and builds the std::string only
// for a new key; a view hashes like its string.
#include <procflow/procflow.hpp>
#include <procflow/detail/flat_table.hpp>
#include <procflow/detail/stored_key.hpp>

#include <doctest/doctest.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <new>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <vector>

// Allocations made by this process (the flat_table checks run in the test process itself; thread
// mode allocates from oneTBB's threads too, hence atomic).
namespace {
std::atomic<std::size_t> allocations{0};
}  // namespace

[[gnu::noinline]] void* operator new(std::size_t n) {
  allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
[[gnu::noinline]] void operator delete(void* p) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace pf = procflow;
using i64 = std::int64_t;

namespace {

// "key<k>|payload<i>": the key is the text before '|' (long enough to defeat the small-string buffer).
std::string row(i64 i, i64 keys) {
  std::string s = "a-key-longer-than-sso-";
  s += std::to_string((i * 7919) % keys);
  s += "|payload-";
  s += std::to_string(i);
  return s;
}

std::string_view key_of(const std::string& line) { return std::string_view(line).substr(0, line.find('|')); }

std::unordered_map<std::string, i64> expected(i64 n, i64 keys) {
  std::unordered_map<std::string, i64> want;
  for (i64 i = 0; i < n; ++i) want[std::string(key_of(row(i, keys)))] += i;
  return want;
}

template <class... Hash>
auto sum_by_view(i64 n, i64 keys, bool own, bool ordered, const Hash&... hash) {
  auto flow = (ordered ? pf::pipeline("views", pf::ordered) : pf::pipeline("views"))
                  .source("numbers", pf::iota<i64>(0, n))
                  .map("row", [keys](i64 i) { return row(i, keys); }, pf::replicas(2));
  auto key = [](const std::string& line) { return key_of(line); };
  auto fold = [](i64 acc, const std::string& line) { return acc + std::stoll(line.substr(line.rfind('-') + 1)); };
  return own ? flow.reduce_by_key("sum", key, i64{0}, fold, std::plus<>{}, hash..., pf::replicas(2), pf::own_process).run()
             : flow.reduce_by_key("sum", key, i64{0}, fold, std::plus<>{}, hash...).run();
}

struct transparent_hash {
  std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s) ^ 0x5bd1e995u; }
};
struct string_only_hash {
  std::size_t operator()(const std::string& s) const noexcept { return std::hash<std::string>{}(s) * 31u; }
};

}  // namespace

TEST_CASE("reduce_by_key: a std::string_view key groups by std::string, in every placement") {
  using result = decltype(sum_by_view(1, 1, false, false));
  static_assert(std::is_same_v<typename std::decay_t<decltype(std::declval<result>().value)>::key_type, std::string>);
  for (const i64 keys : {i64{1}, i64{37}, i64{20000}}) {  // 20000: past the windowed probes' 2^14 keys
    const i64 n = keys == 20000 ? 40000 : 5000;
    const auto want = expected(n, keys);
    for (bool own : {false, true})
      for (bool ordered : {false, true}) {
        CAPTURE(keys);
        CAPTURE(own);
        CAPTURE(ordered);
        const auto got = sum_by_view(n, keys, own, ordered).value.to_unordered_map();
        CHECK(got.size() == want.size());
        CHECK(std::unordered_map<std::string, i64>(got.begin(), got.end()) == want);
      }
  }
}

TEST_CASE("reduce_by_key: a std::string_view key in thread mode (run(pf::in_threads)) gives the same groups") {
  const auto want = expected(8000, 300);
  auto flow = pf::pipeline("views in threads")
                  .source("numbers", pf::iota<i64>(0, 8000))
                  .map("row", [](i64 i) { return row(i, 300); }, pf::replicas(2))
                  .reduce_by_key("sum", [](const std::string& line) { return key_of(line); }, i64{0},
                                 [](i64 acc, const std::string& line) { return acc + std::stoll(line.substr(line.rfind('-') + 1)); },
                                 std::plus<>{}, pf::replicas(2));
  const auto got = flow.run(pf::in_threads).value.to_unordered_map();
  CHECK(std::unordered_map<std::string, i64>(got.begin(), got.end()) == want);
}

TEST_CASE("reduce_by_key: a std::string_view key with a transparent hasher or one taking const std::string&") {
  const auto want = expected(6000, 500);
  for (bool own : {false, true}) {
    CAPTURE(own);
    const auto a = sum_by_view(6000, 500, own, false, transparent_hash{}).value;
    const auto b = sum_by_view(6000, 500, own, false, string_only_hash{}).value;
    CHECK(a.size() == want.size());
    CHECK(b.size() == want.size());
    for (const auto& [k, v] : want) {
      REQUIRE(a.contains(k));
      REQUIRE(b.contains(k));
      CHECK(a.at(k) == v);
      CHECK(b.at(k) == v);
    }
  }
}

TEST_CASE("stored_key: a view hashes like its string under std::hash<std::string> and a user hasher") {
  static_assert(std::is_same_v<pf::detail::stored_key_t<std::string_view>, std::string>);
  static_assert(std::is_same_v<pf::detail::stored_key_t<std::string>, std::string>);
  static_assert(std::is_same_v<pf::detail::stored_key_t<i64>, i64>);
  const std::string s = "origin/destination";
  const std::string_view v = s;
  using std_table = pf::detail::flat_table<std::string, i64, std::hash<std::string>>;
  using user_table = pf::detail::flat_table<std::string, i64, string_only_hash>;
  CHECK(std_table::hash_of(v) == std_table::hash_of(s));
  CHECK(user_table::hash_of(v) == user_table::hash_of(s));
}

TEST_CASE("flat_table: a std::string_view finds an existing key without allocating; a new key builds its string") {
  using table = pf::detail::flat_table<std::string, i64, std::hash<std::string>>;
  table t;
  std::string text;
  for (int k = 0; k < 300; ++k) text += "a-key-longer-than-sso-" + std::to_string(k) + ";";
  std::vector<std::string_view> keys;
  for (std::size_t from = 0; from < text.size();) {
    const std::size_t end = text.find(';', from);
    keys.push_back(std::string_view(text).substr(from, end - from));
    from = end + 1;
  }
  for (const std::string_view k : keys) t.find_or_insert(k, table::hash_of(k), 0) += 1;
  REQUIRE(t.size() == keys.size());
  t.reserve(t.size());  // no growth below
  const std::size_t before = allocations;
  for (int round = 0; round < 10; ++round)
    for (const std::string_view k : keys) t.find_or_insert(k, table::hash_of(k), 0) += 1;
  CHECK(allocations == before);  // 3000 lookups of existing keys: no std::string built
  for (const std::string_view k : keys) {
    const table::entry* e = t.find(std::string(k), table::hash_of(k));
    REQUIRE(e != nullptr);
    CHECK(e->first == k);
    CHECK(e->second == 11);
  }
  const std::string_view fresh = "a-brand-new-key-longer-than-sso";
  const std::size_t before_new = allocations;
  t.find_or_insert(fresh, table::hash_of(fresh), 5);
  CHECK(allocations > before_new);  // the new key's std::string
  CHECK(t.size() == keys.size() + 1);
  CHECK(t.find(std::string(fresh), table::hash_of(fresh))->second == 5);
}

TEST_CASE("keys_equal: stored strings against views of every length to 40, differing at each byte, as ==") {
  for (std::size_t n = 0; n <= 40; ++n) {
    std::string stored(n, 'a');
    for (std::size_t i = 0; i < n; ++i) stored[i] = static_cast<char>('a' + (i * 7) % 26);
    CHECK(pf::detail::keys_equal(stored, std::string_view(stored)));
    CHECK(pf::detail::keys_equal(stored, stored));
    std::string longer = stored + "x";
    CHECK_FALSE(pf::detail::keys_equal(stored, std::string_view(longer)));
    CHECK_FALSE(pf::detail::keys_equal(longer, std::string_view(stored)));
    for (std::size_t i = 0; i < n; ++i) {  // each byte alone decides
      std::string other = stored;
      other[i] = static_cast<char>(other[i] ^ 0x40);
      CAPTURE(n);
      CAPTURE(i);
      CHECK_FALSE(pf::detail::keys_equal(stored, std::string_view(other)));
    }
  }
  CHECK(pf::detail::keys_equal(std::string("ab\0c", 4), std::string_view("ab\0c", 4)));  // bytes, not C strings
  CHECK_FALSE(pf::detail::keys_equal(std::string("ab\0c", 4), std::string_view("ab\0d", 4)));
  CHECK(pf::detail::keys_equal(42, 42L));  // other keys: their ==
}

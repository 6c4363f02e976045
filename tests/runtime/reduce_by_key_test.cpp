// Checks reduce_by_key's keyed dispatch and hashing (include/procflow/hash.hpp, issue 13 point 9
// and issue 9's composite keys): in processes of its own, with 4 replicas and 4000 keys, no
// replica owns more than 1.25x its fair share for structured key sets (multiples of 2^k, strings
// with a long common prefix, pairs and tuples of such); every key meets one replica; std::pair
// and std::tuple keys work without a user hasher; an explicit hasher drives dispatch and is the
// keyed result's hasher; the result converts to std::unordered_map<K, Acc>. Issue 16: the
// pf::keyed_result from 1 key to more keys than items with int, string and pair keys, fused and in
// own processes, ordered and unordered; a non-commutative ordered fold; one replica per partition
// with keyed dispatch; an exception in combine; a throwing key function or fold names its item
// (the replica probes a window of items at a time); flat_table itself.
//
// Per-replica load is read from the result itself: each key's accumulator is the pid of the
// replica that folded it, and a combine that sees two pids for one key fails the run.
#include <procflow/procflow.hpp>
#include <procflow/detail/flat_table.hpp>
#include <procflow/detail/keyed_partial.hpp>
#include <procflow/detail/table_memory.hpp>

#include <doctest/doctest.h>

#include <unistd.h>

#include <cstdint>
#include <map>
#include <stdexcept>
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
    static_assert(std::is_same_v<decltype(r.value), pf::keyed_result<std::pair<std::string, std::string>, i64,
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

TEST_CASE("reduce_by_key: an explicit hasher drives dispatch and is the keyed result's hasher") {
  // Every key hashes alike: one replica owns them all (dispatch used the hasher given).
  const auto per_replica = owners([](i64 i) { return i; }, constant_hash{});
  CHECK(per_replica.size() == 1);
  CHECK(per_replica.begin()->second == key_count);

  auto r = pf::pipeline("h")
               .source("numbers", pf::iota<i64>(0, 100))
               .reduce_by_key("mod", [](i64 i) { return i % 10; }, i64{0}, std::plus<>{}, std::plus<>{}, constant_hash{},
                              pf::replicas(2))
               .run();
  static_assert(std::is_same_v<decltype(r.value), pf::keyed_result<i64, i64, constant_hash>>);
  CHECK(r.value.size() == 10);
  CHECK(r.value.at(3) == 3 + 13 + 23 + 33 + 43 + 53 + 63 + 73 + 83 + 93);
}

TEST_CASE("reduce_by_key: the keyed result converts to std::unordered_map<K, Acc> (implicitly or by to_unordered_map())") {
  auto r = pf::pipeline("plain")
               .source("numbers", pf::iota<i64>(0, 100))
               .reduce_by_key("mod", [](i64 i) { return std::to_string(i % 3); }, i64{0}, std::plus<>{}, std::plus<>{})
               .run();
  std::unordered_map<std::string, i64> m = r.value;  // existing code keeps compiling
  CHECK(m.size() == 3);
  CHECK(m.at("0") == 1683);  // 0 + 3 + ... + 99
  CHECK(r.value.to_unordered_map() == m);
}

TEST_CASE("keyed_result::take_partitions moves every group out by partition and leaves the result empty") {
  auto r = pf::pipeline("take")
               .source("numbers", pf::iota<i64>(0, 10'000))
               .reduce_by_key("mod", [](i64 i) { return i % 517; }, i64{0}, std::plus<>{}, std::plus<>{}, pf::replicas(2))
               .run();
  const auto expected = r.value.to_unordered_map();
  auto parts = std::move(r.value).take_partitions();
  REQUIRE(parts.size() == pf::keyed_partition_count);
  std::unordered_map<i64, i64> got;
  for (std::size_t p = 0; p < parts.size(); ++p)
    for (const auto& [k, v] : parts[p]) {
      CHECK(pf::keyed_partition_of(decltype(r.value)::partition::hash_of(k)) == p);
      got.emplace(k, v);
    }
  CHECK(got == expected);
  CHECK(r.value.size() == 0);  // NOLINT(bugprone-use-after-move): left empty, by contract
  CHECK(r.value.partitions().size() == pf::keyed_partition_count);
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

// ------------------------------------------------------------------ keyed_result (issue 16)

namespace {

// Checks a keyed_result against the sequential answer: same groups (==), size(), find()/at() for
// every key, iteration visits size() entries, and each key sits in the partition its hash names.
template <class K, class V, class H, class Map>
void check_keyed(const pf::keyed_result<K, V, H>& got, const Map& want) {
  if constexpr (std::is_same_v<Map, std::unordered_map<K, V>>) CHECK(got == want);
  REQUIRE(got.size() == want.size());
  std::size_t visited = 0;
  for (const auto& [k, v] : got) {
    ++visited;
    (void)v;
  }
  CHECK(visited == want.size());
  for (const auto& [k, v] : want) {
    REQUIRE(got.contains(k));
    CHECK(got.at(k) == v);
    CHECK(got.find(k)->second == v);
  }
  REQUIRE(got.partitions().size() == pf::keyed_partition_count);
  for (std::size_t p = 0; p < got.partitions().size(); ++p)
    for (const auto& e : got.partitions()[p])
      CHECK(pf::keyed_partition_of(pf::keyed_result<K, V, H>::partition::hash_of(e.first)) == p);
  if constexpr (std::is_same_v<std::decay_t<decltype(want.begin()->first)>, K>) {
    CHECK(got.to_unordered_map() == std::unordered_map<K, V, H>(want.begin(), want.end()));
  }
}

constexpr i64 items = 3000;

i64 spread(i64 i, i64 keys) { return static_cast<i64>((static_cast<std::uint64_t>(i) * 2654435761ULL) % static_cast<std::uint64_t>(keys)); }

// Every placement the builder offers for a reduce_by_key after 2 mappers: fused, in 3 processes
// of its own (keyed dispatch), each unordered and ordered.
template <class Run>
void for_each_placement(Run run) {
  for (bool own : {false, true})
    for (bool ordered : {false, true}) {
      CAPTURE(own);
      CAPTURE(ordered);
      run(own, ordered);
    }
}

template <class KeyFn, class... Opts>
auto count_by(i64 keys, KeyFn key, bool own, bool ordered) {
  auto flow = (ordered ? pf::pipeline("keyed", pf::ordered) : pf::pipeline("keyed"))
                  .source("numbers", pf::iota<i64>(0, items))
                  .map("spread", [keys](i64 i) { return spread(i, keys); }, pf::replicas(2));
  auto count = [](i64 n, i64) { return n + 1; };
  return own ? flow.reduce_by_key("count", key, i64{0}, count, std::plus<>{}, pf::replicas(3), pf::own_process).run()
             : flow.reduce_by_key("count", key, i64{0}, count, std::plus<>{}).run();
}

}  // namespace

TEST_CASE("keyed_result: from 1 key to more keys than items, int, string and pair keys, every placement") {
  for (const i64 keys : {i64{1}, i64{2}, i64{7}, i64{1000}, items, 4 * items}) {
    CAPTURE(keys);
    for_each_placement([&](bool own, bool ordered) {
      std::unordered_map<i64, i64> want_int;
      std::unordered_map<std::string, i64> want_str;
      std::map<std::pair<i64, std::string>, i64> want_pair;
      for (i64 i = 0; i < items; ++i) {
        const i64 k = spread(i, keys);
        ++want_int[k];
        ++want_str[tagged("key/", k)];
        ++want_pair[{k % 10, tagged("p", k)}];
      }
      check_keyed(count_by(keys, [](i64 k) { return k; }, own, ordered).value, want_int);
      check_keyed(count_by(keys, [](i64 k) { return tagged("key/", k); }, own, ordered).value, want_str);
      auto pairs = count_by(keys, [](i64 k) { return std::pair<i64, std::string>{k % 10, tagged("p", k)}; }, own, ordered);
      CHECK(std::map<std::pair<i64, std::string>, i64>(pairs.value.begin(), pairs.value.end()) == want_pair);
      check_keyed(pairs.value, want_pair);
    });
  }
}

TEST_CASE("keyed_result: an empty stream gives an empty result with every partition empty") {
  for_each_placement([](bool own, bool ordered) {
    auto flow = (ordered ? pf::pipeline("empty", pf::ordered) : pf::pipeline("empty"))
                    .source("numbers", pf::iota<i64>(0, 0))
                    .map("id", [](i64 i) { return i; }, pf::replicas(2));
    auto r = own ? flow.reduce_by_key("g", [](i64 i) { return i; }, i64{0}, std::plus<>{}, std::plus<>{}, pf::replicas(2), pf::own_process).run()
                 : flow.reduce_by_key("g", [](i64 i) { return i; }, i64{0}, std::plus<>{}, std::plus<>{}).run();
    CHECK(r.value.empty());
    CHECK(r.value.begin() == r.value.end());
    CHECK_FALSE(r.value.contains(0));
    CHECK_THROWS_AS((void)r.value.at(0), std::out_of_range);
  });
}

TEST_CASE("keyed_result: ordered, a non-commutative fold and combine see each key's items in source order") {
  // Concatenation is associative, not commutative: any reordering of a key's items shows.
  for (bool own : {false, true}) {
    CAPTURE(own);
    auto flow = pf::pipeline("concat", pf::ordered, pf::batch_bytes(256))
                    .source("numbers", pf::iota<i64>(0, 2000))
                    .map("id", [](i64 i) { return i; }, pf::replicas(2));
    auto fold = [](std::string acc, i64 i) { return acc + std::to_string(i) + ","; };
    auto combine = [](std::string a, const std::string& b) { return a + b; };
    auto key = [](i64 i) { return i % 13; };
    auto r = own ? flow.reduce_by_key("concat", key, std::string{}, fold, combine, pf::replicas(2), pf::own_process).run()
                 : flow.reduce_by_key("concat", key, std::string{}, fold, combine).run();
    std::unordered_map<i64, std::string> want;
    for (i64 i = 0; i < 2000; ++i) want[i % 13] += std::to_string(i) + ",";
    check_keyed(r.value, want);
  }
}

TEST_CASE("reduce_by_key: past 2^17 keys a replica folds a batch partition by partition: groups exact, each key's items in order") {
  // A replica whose table holds 2^17 keys or more sorts each batch by partition before it folds
  // (stages.hpp, apply_by_partition). The sort must be stable: the fold counts the items of a key
  // that arrive after a larger one (none may), and keeps the key's count and its largest item.
  // Runs of 4 consecutive items share a key, so a batch holds several items of a key; each
  // replica sees ~800 000 items over all 200 000 keys, past the threshold after about half.
  constexpr i64 n = 1'600'000;
  constexpr i64 keys = 200'000;
  auto key = [](i64 i) { return (i / 4) % keys; };
  using acc = std::tuple<i64, i64, i64>;  // the largest item so far, items out of order, items
  auto fold = [](acc a, i64 i) {
    auto& [last, out_of_order, count] = a;
    if (i < last) ++out_of_order;
    last = i;
    ++count;
    return a;
  };
  auto combine = [](acc a, const acc& b) {
    return acc{std::max(std::get<0>(a), std::get<0>(b)), std::get<1>(a) + std::get<1>(b), std::get<2>(a) + std::get<2>(b)};
  };
  std::unordered_map<i64, acc> want;
  for (i64 i = 0; i < n; ++i) want[key(i)] = acc{i, 0, std::get<2>(want[key(i)]) + 1};
  for (bool ordered : {false, true}) {
    CAPTURE(ordered);
    auto r = (ordered ? pf::pipeline("by_partition", pf::ordered) : pf::pipeline("by_partition"))
                 .source("numbers", pf::iota<i64>(0, n))
                 .map("id", [](i64 i) { return i; }, pf::replicas(2))
                 .reduce_by_key("groups", key, acc{-1, 0, 0}, fold, combine)
                 .run();
    check_keyed(r.value, want);
  }
}

TEST_CASE("keyed_result: with reduce_by_key in processes of its own, each partition comes from one replica") {
  // The accumulator is the pid of the replica that folded the key (same_owner fails the run if a
  // key met two replicas); every entry of a partition must name the same pid.
  auto r = pf::pipeline("owners")
               .source("numbers", pf::iota<i64>(0, 5000))
               .map("id", [](i64 i) { return i * 4; }, pf::replicas(2))
               .reduce_by_key("own", [](i64 k) { return k; }, i64{0}, [](i64 acc, i64 k) { return owner(acc, k); }, same_owner,
                              pf::replicas(reducers), pf::own_process)
               .run();
  REQUIRE(r.value.size() == 5000);
  std::map<i64, std::size_t> partitions_per_pid;
  for (const auto& part : r.value.partitions()) {
    if (part.empty()) continue;
    const i64 pid = part.begin()->second;
    for (const auto& e : part) CHECK(e.second == pid);
    ++partitions_per_pid[pid];
  }
  CHECK(partitions_per_pid.size() == reducers);
  for (const auto& [pid, n] : partitions_per_pid) CHECK(n == pf::keyed_partition_count / reducers);
}

TEST_CASE("keyed_result: an exception in combine fails run() with a stage_error naming the stage and the cause") {
  // Ordered with small batches, every batch sends its partial and the caller combines them (in
  // its merge threads); the throw must come back as a stage_error, not terminate or hang.
  auto run = [] {
    return pf::pipeline("boom", pf::ordered, pf::batch_bytes(512))
        .source("numbers", pf::iota<i64>(0, 4000))
        .map("id", [](i64 i) { return i; }, pf::replicas(2))
        .reduce_by_key("groups", [](i64 i) { return i % 100; }, i64{0}, std::plus<>{},
                       [](i64 a, i64 b) -> i64 {
                         if (a + b > 0) throw std::runtime_error("combine refused");
                         return a + b;
                       })
        .run();
  };
  try {
    (void)run();
    FAIL("run() should have thrown");
  } catch (const pf::stage_error& e) {
    CHECK(e.stage() == "groups");
    CHECK(std::string(e.what()).find("combine refused") != std::string::npos);
  }
}

TEST_CASE("reduce_by_key: a throwing key function or fold names its item (windowed probes keep the position)") {
  // A replica whose table holds 2^14 keys or more probes it a window of items at a time (keys
  // first, then folds), one of 2^17 keys or more sorts each batch by partition first; a smaller
  // one goes item by item. Each way the error must name the item that threw, whether the key
  // function or the fold threw: 1000 keys stay item by item, 100 000 keys are windowed long before
  // the bad item, and with 400 000 keys each replica holds ~175 000 when it meets the bad item.
  for (const i64 keys : {i64{1000}, i64{100'000}, i64{400'000}}) {
    CAPTURE(keys);
    const i64 bad = keys == 400'000 ? 350'001 : 123'457;
    const i64 n = keys == 400'000 ? 400'000 : 300'000;
    auto expect_item = [bad](auto run) {
      try {
        (void)run();
        FAIL("run() should have thrown");
      } catch (const pf::stage_error& e) {
        CHECK(e.stage() == "groups");
        CHECK(e.has_item());
        CHECK(e.item_seq() == static_cast<std::uint64_t>(bad));
        CHECK(e.message() == "bad item");
      }
    };
    {
      INFO("key function");
      expect_item([keys, bad, n] {
        return pf::pipeline("throwing_key")
            .source("numbers", pf::iota<i64>(0, n))
            .reduce_by_key(
                "groups",
                [keys, bad](i64 i) {
                  if (i == bad) throw std::runtime_error("bad item");
                  return i % keys;
                },
                i64{0}, std::plus<>{}, std::plus<>{}, pf::replicas(2))
            .run();
      });
    }
    {
      INFO("fold");
      expect_item([keys, bad, n] {
        return pf::pipeline("throwing_fold")
            .source("numbers", pf::iota<i64>(0, n))
            .reduce_by_key(
                "groups", [keys](i64 i) { return i % keys; }, i64{0},
                [bad](i64& acc, i64 i) {
                  if (i == bad) throw std::runtime_error("bad item");
                  acc += i;
                },
                std::plus<>{}, pf::replicas(2))
            .run();
      });
    }
  }
}

TEST_CASE("keyed_piece codec: round trip of raw and string entries; a partition index, mode or count out of range is refused") {
  auto round_trip = [](const auto& piece) {
    using piece_type = std::decay_t<decltype(piece)>;
    std::vector<std::byte> bytes(pf::codec<piece_type>::encoded_size(piece));
    CHECK(pf::codec<piece_type>::encode(piece, bytes.data()) == bytes.data() + bytes.size());
    pf::decoder in(bytes);
    const piece_type back = pf::codec<piece_type>::decode(in);
    CHECK(in.empty());
    CHECK(back.partition == piece.partition);
    CHECK(back.mode == piece.mode);
    CHECK(back.keys_at_switch == piece.keys_at_switch);
    CHECK(back.items_at_switch == piece.items_at_switch);
    CHECK(back.entries == piece.entries);
    return bytes;
  };
  using mode = pf::detail::aggregation_mode;
  // Bytes: partition, mode, keys at the switch, items at the switch, entry count, entries.
  pf::detail::keyed_piece<i64, i64> raw{63, mode::shuffled, 5, 9, {{1, 10}, {2, 20}, {-3, 30}}};
  std::vector<std::byte> bytes = round_trip(raw);
  round_trip(pf::detail::keyed_piece<std::string, i64>{5, mode::key_partitioned, 0, 0, {{"a", 1}, {std::string(300, 'b'), 2}, {"", 3}}});
  round_trip(pf::detail::keyed_piece<std::string, i64>{0, mode::pre_aggregated, 1u << 20, 3u << 20, {}});

  bytes[0] = std::byte{64};  // partition index varint: 64 is out of range
  {
    pf::decoder in(bytes);
    CHECK_THROWS_AS(pf::codec<decltype(raw)>::decode(in), pf::codec_error);
  }
  bytes[0] = std::byte{63};
  bytes[1] = std::byte{3};  // no such aggregation mode
  {
    pf::decoder in(bytes);
    CHECK_THROWS_AS(pf::codec<decltype(raw)>::decode(in), pf::codec_error);
  }
  bytes[1] = std::byte{1};
  bytes[4] = std::byte{4};  // 4 entries announced, 3 present
  {
    pf::decoder in(bytes);
    CHECK_THROWS_AS(pf::codec<decltype(raw)>::decode(in), pf::codec_error);
  }
}

TEST_CASE("keyed_piece codec: a large pre-aggregated piece decodes onto the arena's huge pages; shuffled, keyed and wasteful ones do not") {
  // The caller keeps a replica's pre-aggregated partitions until the end of the run: each decodes
  // into arena memory (a fault per 2 MiB), unless the arena's power-of-two block would waste more
  // than a quarter of itself. Shuffled pieces are freed right after their merge and keyed ones
  // adopted whole: malloc's memory.
  using mode = pf::detail::aggregation_mode;
  using piece = pf::detail::keyed_piece<i64, i64>;
  namespace mem = pf::detail::table_memory;
  REQUIRE_FALSE(mem::arena_in_use());  // the caller's process: the arena only under a scope
  auto decoded = [](mode m, std::size_t n) {
    piece p{7, m, 0, 0, {}};
    for (std::size_t i = 0; i < n; ++i) p.entries.push_back({static_cast<i64>(i), 1});
    std::vector<std::byte> bytes(pf::codec<piece>::encoded_size(p));
    pf::codec<piece>::encode(p, bytes.data());
    pf::decoder in(bytes);
    piece back = pf::codec<piece>::decode(in);
    CHECK(back.entries == p.entries);
    return back;
  };
  const std::size_t exact = 8192;   // 128 KiB: a power of two
  const std::size_t wasteful = 5000;  // 80 000 bytes in a 128 KiB block: 39% unused
  const std::size_t snug = 7000;      // 112 000 bytes in 128 KiB: 15% unused
  const piece a = decoded(mode::pre_aggregated, exact);
  const piece b = decoded(mode::pre_aggregated, snug);
  const piece c = decoded(mode::pre_aggregated, wasteful);
  const piece d = decoded(mode::shuffled, exact);
  const piece e = decoded(mode::key_partitioned, exact);
  const piece small = decoded(mode::pre_aggregated, 1000);  // 16 000 bytes: below the arena's 64 KiB
  CHECK(mem::from_arena(a.entries.data()));
  CHECK(mem::from_arena(b.entries.data()));
  CHECK_FALSE(mem::from_arena(c.entries.data()));
  CHECK_FALSE(mem::from_arena(d.entries.data()));
  CHECK_FALSE(mem::from_arena(e.entries.data()));
  CHECK_FALSE(mem::from_arena(small.entries.data()));
}

TEST_CASE("flat_table: keys across the index's sparse (a quarter full) and dense (half) sizes") {
  // 20 000 keys in one table: its index grows from 16 slots through 2^13 (the last sparse size)
  // to 2^16. Every key is found once with its sum, after growth, after reserve() and after a
  // rebuild from decoded entries, and the rebuilt table still inserts.
  using table = pf::detail::flat_table<i64, i64, std::hash<i64>>;
  constexpr i64 keys = 20'000;
  auto check_all = [&](const table& t, i64 times) {
    REQUIRE(t.size() == static_cast<std::size_t>(keys));
    bool all = true;
    for (i64 k = 0; k < keys; ++k) {
      const auto* e = t.find(k * 7919, table::hash_of(k * 7919));
      all = all && e != nullptr && e->second == times * k;
    }
    CHECK(all);
    CHECK(t.find(-1, table::hash_of(-1)) == nullptr);
  };
  table grown;
  for (int round = 0; round < 2; ++round)
    for (i64 k = 0; k < keys; ++k) grown.find_or_insert(k * 7919, table::hash_of(k * 7919), 0) += k;
  check_all(grown, 2);
  for (const std::size_t n : {std::size_t{1}, std::size_t{2048}, std::size_t{2049}, std::size_t{8192}, std::size_t{keys}}) {
    CAPTURE(n);
    table reserved;
    reserved.reserve(n);
    for (std::size_t k = 0; k < n; ++k) reserved.find_or_insert(static_cast<i64>(k), table::hash_of(static_cast<i64>(k)), 0) = 1;
    CHECK(reserved.size() == n);
    CHECK(reserved.find(static_cast<i64>(n - 1), table::hash_of(static_cast<i64>(n - 1))) != nullptr);
  }
  table decoded;
  decoded.entries().assign(grown.begin(), grown.end());
  decoded.rebuild_after_decode();
  check_all(decoded, 2);
  decoded.find_or_insert(-1, table::hash_of(-1), 5);
  CHECK(decoded.size() == static_cast<std::size_t>(keys + 1));
  CHECK(decoded.find(-1, table::hash_of(-1))->second == 5);
}

TEST_CASE("flat_table: grows, finds, refuses a decoded duplicate") {
  using table = pf::detail::flat_table<std::string, i64, std::hash<std::string>>;
  table t;
  for (i64 i = 0; i < 10'000; ++i) t.find_or_insert(std::to_string(i % 3000), table::hash_of(std::to_string(i % 3000)), 0) += i;
  CHECK(t.size() == 3000);
  for (i64 k = 0; k < 3000; ++k) {
    const auto* e = t.find(std::to_string(k), table::hash_of(std::to_string(k)));
    REQUIRE(e != nullptr);
    CHECK(e->second == k + (k + 3000) + (k + 6000) + (k + 9000 < 10'000 ? k + 9000 : 0));
  }
  CHECK(t.find("nope", table::hash_of("nope")) == nullptr);
  t.entries().push_back({"7", 1});  // what a corrupt partial would decode to
  CHECK_THROWS_AS(t.rebuild_after_decode(), pf::codec_error);
}

// Checks include/procflow/detail/aggregation_switch.hpp and its use by reduce_by_key (issue 16:
// "pre-aggregate locally while it pays, switch to partitioned shuffle when the local table grows
// past what pays; the decision and the observed cardinality appear in the report"):
// - the switch's decision itself: never under pre_aggregate::always(), at the first batch under
//   off(), at until_keys(n) only with n keys or more and fewer than 2 items a key;
// - reduce_by_key with the switch forced on (off()), forced off (always()), at a threshold and by
//   default gives exactly the sequential std::unordered_map's groups, from 1 key to more keys than
//   items, with int, string and pair keys, fused (default placement) and unordered;
// - at the threshold: one replica, K = n - 1 keys never switch, K = n keys switch;
// - the report's note on the stage says which mode ran, why, and the distinct keys seen;
// - an exception in combine while the caller merges shuffled pieces is a stage_error;
// - ordered runs and keyed dispatch (own processes) keep their own modes;
// - replicas recycled (forked) while the caller's merge threads fold shuffled pieces: exact.
#include <procflow/procflow.hpp>
#include <procflow/detail/aggregation_switch.hpp>

#include <doctest/doctest.h>

#include <cstdint>
#include <functional>
#include <map>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>

namespace pf = procflow;
using i64 = std::int64_t;

namespace {

constexpr i64 items = 40000;

i64 spread(i64 i, i64 keys) { return static_cast<i64>((static_cast<std::uint64_t>(i) * 2654435761ULL) % static_cast<std::uint64_t>(keys)); }

std::string tagged(const char* tag, i64 n) {
  std::string s = tag;
  s += std::to_string(n);
  return s;
}

// Counts spread(i, keys) for i in [0, items) by key(k) through 2 fused mappers (small batches, so
// a switched replica sends several times) with the pre_aggregate setting `pre`.
template <class KeyFn>
auto count_by(i64 keys, KeyFn key, pf::pre_aggregate pre, std::uint32_t replicas = 2, i64 n = items) {
  return pf::pipeline("switch", pf::batch_bytes(4096))
      .source("numbers", pf::iota<i64>(0, n))
      .map("spread", [keys](i64 i) { return spread(i, keys); }, pf::replicas(replicas))
      .reduce_by_key("count", key, i64{0}, [](i64 c, i64) { return c + 1; }, std::plus<>{}, pre)
      .run();
}

const std::string& note_of(const pf::run_report& report, const std::string& stage) {
  for (const auto& s : report.stages)
    if (s.name == stage) return s.note;
  FAIL("no stage " << stage);
  static const std::string none;
  return none;
}

bool says(const std::string& note, const std::string& what) { return note.find(what) != std::string::npos; }

}  // namespace

TEST_CASE("aggregation_switch: always() never switches, off() at the first batch with items, until_keys(n) at n keys under 2 items a key") {
  pf::detail::aggregation_switch always(pf::pre_aggregate::never);
  always.folded(1'000'000);
  CHECK_FALSE(always.send_now(1'000'000));
  CHECK_FALSE(always.switched());

  pf::detail::aggregation_switch off(0);
  CHECK_FALSE(off.send_now(0));  // no item yet: nothing seen, nothing decided
  CHECK_FALSE(off.switched());
  off.folded(10);
  CHECK(off.send_now(3));  // every batch from now on
  CHECK(off.switched());
  CHECK(off.keys_at_switch() == 3);
  CHECK(off.items_at_switch() == 10);
  off.sent();
  off.folded(5);
  CHECK(off.send_now(1));

  pf::detail::aggregation_switch at(1000);
  at.folded(999);
  CHECK_FALSE(at.send_now(999));  // below the threshold
  at.folded(1001);
  CHECK_FALSE(at.send_now(1000));  // 1000 keys in 2000 items: pre-aggregation halves the data, it pays
  CHECK_FALSE(at.switched());
  at.folded(1);
  CHECK_FALSE(at.send_now(1000));  // 2001 items: still paying
  pf::detail::aggregation_switch at2(1000);
  at2.folded(1999);
  CHECK(at2.send_now(1000));  // 1000 keys in 1999 items: under 2 items a key
  CHECK(at2.keys_at_switch() == 1000);
  CHECK(at2.items_at_switch() == 1999);
  at2.sent();
  at2.folded(10);
  CHECK_FALSE(at2.send_now(999));  // after the switch: sent whenever it holds spill_keys() keys
  CHECK(at2.send_now(1000));

  CHECK(pf::detail::aggregation_switch(pf::pre_aggregate::default_switch_keys).spill_keys() ==
        pf::detail::aggregation_switch::shuffle_table_keys);
}

TEST_CASE("reduce_by_key: the same groups as a sequential map with the switch forced on, forced off, at a threshold and by default") {
  const std::pair<const char*, pf::pre_aggregate> settings[] = {
      {"off", pf::pre_aggregate::off()},
      {"always", pf::pre_aggregate::always()},
      {"until_keys(500)", pf::pre_aggregate::until_keys(500)},
      {"default", pf::pre_aggregate::until_keys(pf::pre_aggregate::default_switch_keys)},
  };
  for (const i64 keys : {i64{1}, i64{7}, i64{1000}, i64{30000}, 4 * items}) {
    std::unordered_map<i64, i64> want_int;
    std::unordered_map<std::string, i64> want_str;
    std::map<std::pair<i64, std::string>, i64> want_pair;
    for (i64 i = 0; i < items; ++i) {
      const i64 k = spread(i, keys);
      ++want_int[k];
      ++want_str[tagged("key/", k)];
      ++want_pair[{k % 10, tagged("p", k)}];
    }
    for (const auto& [name, pre] : settings) {
      CAPTURE(keys);
      const std::string setting = name;
      CAPTURE(setting);
      auto ints = count_by(keys, [](i64 k) { return k; }, pre);
      CHECK(ints.value == want_int);
      auto strings = count_by(keys, [](i64 k) { return tagged("key/", k); }, pre);
      CHECK(strings.value == want_str);
      auto pairs = count_by(keys, [](i64 k) { return std::pair<i64, std::string>{k % 10, tagged("p", k)}; }, pre);
      CHECK(std::map<std::pair<i64, std::string>, i64>(pairs.value.begin(), pairs.value.end()) == want_pair);

      const std::string& note = note_of(ints.report, "count");
      CAPTURE(note);
      CHECK(says(note, std::to_string(want_int.size()) + " distinct keys"));
      const bool off = std::string(name) == "off";
      const bool always = std::string(name) == "always";
      const bool should_switch = off || (std::string(name) == "until_keys(500)" && keys >= 1000);
      if (should_switch) {
        CHECK(says(note, "switched to partitioned shuffle"));
      } else {
        CHECK(says(note, "pre-aggregated in each replica"));
      }
      if (always) CHECK(says(note, "pre_aggregate::always()"));
      if (off) CHECK(says(note, "pre_aggregate::off()"));
    }
  }
}

TEST_CASE("reduce_by_key: at the threshold, one replica: n - 1 keys stay pre-aggregated, n keys switch") {
  constexpr i64 n = 5000;
  for (const i64 keys : {n - 1, n}) {
    CAPTURE(keys);
    // n items over `keys` keys: the partial reaches n keys (at one item a key) only when keys == n.
    auto r = count_by(keys, [](i64 k) { return k; }, pf::pre_aggregate::until_keys(n), 1, n);
    std::unordered_map<i64, i64> want;
    for (i64 i = 0; i < n; ++i) ++want[spread(i, keys)];
    CHECK(r.value == want);
    const std::string& note = note_of(r.report, "count");
    CAPTURE(note);
    if (keys == n) {
      CHECK(says(note, "switched to partitioned shuffle in 1 replica"));
      CHECK(says(note, "a partial held 5000 distinct keys after 5000 items"));
      CHECK(says(note, "threshold 5000 keys"));
    } else {
      CHECK(says(note, "pre-aggregated in each replica"));
      CHECK(says(note, "no replica's partial reached 5000 distinct keys"));
    }
  }
}

TEST_CASE("reduce_by_key: a replica that switched sends its partitions early: more groups received than keys, the result exact") {
  // 40000 items over 40000 keys with until_keys(1000): a replica switches at about 1000 keys and
  // then sends whenever its tables hold 1000 keys; the caller receives every group about once.
  // Dispatch is dynamic: under load one replica may take nearly every batch and the other never
  // reach 1000 keys, so the note may say 1 replica or 2; either way the pieces are many.
  auto r = count_by(items, [](i64 k) { return k; }, pf::pre_aggregate::until_keys(1000));
  CHECK(r.value.size() == static_cast<std::size_t>(items));
  for (const auto& [k, c] : r.value) CHECK(c == 1);
  const std::string& note = note_of(r.report, "count");
  CAPTURE(note);
  CHECK((says(note, "switched to partitioned shuffle in 1 replica,") || says(note, "switched to partitioned shuffle in 2 replicas")));
  const std::string received = "40000 distinct keys; 40000 groups received in ";
  const auto at = note.find(received);
  REQUIRE(at != std::string::npos);
  const long pieces = std::stol(note.substr(at + received.size()));
  // A send is one piece per non-empty partition (keyed_partition_count of them). Sent only at the
  // end, the pieces would be at most 2 replicas x 64; sent early, a send holds at most ~1000 keys
  // plus one batch (512 items), so 40000 groups take at least ~26 sends of ~64 pieces each.
  CHECK(pieces > static_cast<long>(4 * pf::keyed_partition_count));
}

TEST_CASE("reduce_by_key: ordered runs and keyed dispatch keep their modes; the note says so") {
  auto ordered = pf::pipeline("switch", pf::ordered, pf::batch_bytes(4096))
                     .source("numbers", pf::iota<i64>(0, items))
                     .map("id", [](i64 i) { return i; }, pf::replicas(2))
                     .reduce_by_key("count", [](i64 i) { return i; }, i64{0}, [](i64 c, i64) { return c + 1; }, std::plus<>{},
                                    pf::pre_aggregate::off())
                     .run();
  CHECK(ordered.value.size() == static_cast<std::size_t>(items));
  CHECK(says(note_of(ordered.report, "count"), "pre-aggregated"));  // per batch, in source order

  auto keyed = pf::pipeline("switch", pf::batch_bytes(4096))
                   .source("numbers", pf::iota<i64>(0, items))
                   .map("id", [](i64 i) { return i; }, pf::replicas(2))
                   .reduce_by_key("count", [](i64 i) { return i % 3000; }, i64{0}, [](i64 c, i64) { return c + 1; }, std::plus<>{},
                                  pf::pre_aggregate::off(), pf::replicas(2), pf::own_process)
                   .run();
  std::unordered_map<i64, i64> want;
  for (i64 i = 0; i < items; ++i) ++want[i % 3000];
  CHECK(keyed.value == want);
  CHECK(says(note_of(keyed.report, "count"), "keyed dispatch, each replica owns its keys"));
}

TEST_CASE("reduce_by_key: an exception in combine while the caller merges shuffled pieces is a stage_error naming the stage") {
  try {
    (void)pf::pipeline("boom", pf::batch_bytes(1024))
        .source("numbers", pf::iota<i64>(0, 20000))
        .map("id", [](i64 i) { return i; }, pf::replicas(2))
        .reduce_by_key("groups", [](i64 i) { return i % 100; }, i64{0}, std::plus<>{},
                       [](i64 a, i64 b) -> i64 {
                         if (a + b > 0) throw std::runtime_error("combine refused");
                         return a + b;
                       },
                       pf::pre_aggregate::off())
        .run();
    FAIL("run() should have thrown");
  } catch (const pf::stage_error& e) {
    CHECK(e.stage() == "groups");
    CHECK(std::string(e.what()).find("combine refused") != std::string::npos);
  }
}

TEST_CASE("reduce_by_key: replicas recycled while the caller's merge threads fold shuffled pieces: the groups exact") {
  // Every batch is sent early (off()), so the merge threads work through the whole run, and a
  // replacement is forked every 5000 items: the forks meet the merge threads at work.
  constexpr i64 n = 200000;
  constexpr i64 keys = 20000;
  const auto r = pf::pipeline("recycled", pf::batch_bytes(4096))
                     .source("numbers", pf::iota<i64>(0, n))
                     .map("spread", [](i64 i) { return spread(i, keys); }, pf::replicas(2), pf::recycle::after_items(5000))
                     .reduce_by_key("count", [](i64 k) { return k; }, i64{0}, [](i64 c, i64) { return c + 1; }, std::plus<>{},
                                    pf::pre_aggregate::off())
                     .run();
  std::unordered_map<i64, i64> want;
  for (i64 i = 0; i < n; ++i) ++want[spread(i, keys)];
  CHECK(r.value == want);
  for (const auto& s : r.report.stages)
    if (s.name == "spread") CHECK(s.recycles >= 10);
  CHECK(says(note_of(r.report, "count"), "switched to partitioned shuffle"));
}

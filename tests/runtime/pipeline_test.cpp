// Checks SPEC §1 (the user's experience: the typed builder, every terminal, pf::ordered, codecs
// for big items and user types, the report) and §2 (replicas, fusion, key-hash dispatch for
// reduce_by_key) on hand-written pipelines with known answers: order kept under replicas,
// an associative non-commutative ordered reduce, reduce_by_key grouping in own processes and
// fused, empty and one-item inputs for every terminal, a 10 MB item, a 10 000-fold flat_map,
// a user struct with its own procflow::codec<>, a sink writing a file, and per-stage report counts.
#include "support/cleanup_check.hpp"
#include "support/host_signals.hpp"

#include <procflow/detail/sanitizers.hpp>
#include <procflow/procflow.hpp>

#include <doctest/doctest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <ranges>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <numeric>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

namespace pf = procflow;
namespace pt = procflow::test;
using pt::reap_every_child;
using pt::SignalGuard;
using i64 = std::int64_t;

// ------------------------------------------------------------------ a user type with its own codec

namespace {

struct Reading {
  std::string sensor;
  std::vector<double> values;
  std::int32_t id = 0;
  friend bool operator==(const Reading&, const Reading&) = default;
};

}  // namespace

template <>
struct procflow::codec<Reading> {
  static std::size_t encoded_size(const Reading& r) noexcept {
    return codec<std::string>::encoded_size(r.sensor) + codec<std::vector<double>>::encoded_size(r.values) +
           sizeof(std::int32_t);
  }
  static std::byte* encode(const Reading& r, std::byte* out) noexcept {
    out = codec<std::string>::encode(r.sensor, out);
    out = codec<std::vector<double>>::encode(r.values, out);
    return codec<std::int32_t>::encode(r.id, out);
  }
  static Reading decode(procflow::decoder& in) {
    Reading r;
    r.sensor = codec<std::string>::decode(in);
    r.values = codec<std::vector<double>>::decode(in);
    r.id = codec<std::int32_t>::decode(in);
    return r;
  }
};

namespace {

// Compile-time checks of the builder's types (a mismatched stage is a static_assert inside the
// builder, a hard error that a requires-expression cannot observe, so only the positive side is
// checked here).
using int_flow = decltype(pf::pipeline("p").source("s", pf::iota(0, 1)));
static_assert(std::is_same_v<int_flow, pf::flow<int>>);
static_assert(std::is_same_v<decltype(std::declval<int_flow>().map("m", [](int x) { return std::to_string(x); })),
                             pf::flow<std::string>>);
static_assert(std::is_same_v<decltype(std::declval<int_flow>().flat_map("f", [](int x) { return std::vector<double>(2, x); })),
                             pf::flow<double>>);
static_assert(std::is_same_v<decltype(std::declval<int_flow>().collect()), pf::runnable<std::vector<int>>>);
static_assert(pf::encodable<Reading> && pf::encodable<std::vector<std::pair<std::string, Reading>>>);
static_assert(!pf::encodable<int*> && !pf::encodable<std::vector<const char*>>);

// Every test leaves no child and /dev/shm as it found it.
using CleanupCheck = pt::CleanupCheck;

std::vector<i64> expected_ordered_chain(i64 n) {
  std::vector<i64> want;
  for (i64 x = 0; x < n; ++x) {
    const i64 y = x * 7 + 1;
    if (y % 97 != 0) continue;
    for (i64 k = 0; k < 3; ++k) want.push_back(y * 10 + k);
  }
  return want;
}

// "prefix" + std::to_string(n) without GCC 12's false -Wrestrict on operator+(const char*, string&&).
std::string with_number(std::string prefix, long long n) {
  prefix += std::to_string(n);
  return prefix;
}

std::string temp_path(const std::string& tag) {
  return (std::filesystem::temp_directory_path() / ("procflow_pipeline_test_" + tag + "_" + std::to_string(::getpid()))).string();
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

TEST_CASE("pf::ordered: collect keeps source order through 3 replicas, a filter dropping most items and a flat_map") {
  CleanupCheck cleanup;
  constexpr i64 n = 200'000;
  const auto want = expected_ordered_chain(n);
  REQUIRE(want.size() > 1000);
  auto map = [](i64 x) { return x * 7 + 1; };
  auto keep = [](i64 y) { return y % 97 == 0; };
  auto fan = [](i64 y) { return std::vector<i64>{y * 10, y * 10 + 1, y * 10 + 2}; };

  SUBCASE("fused, ordered on the pipeline") {
    auto r = pf::pipeline("ordered", pf::ordered, pf::batch_bytes(1024))
                 .source("n", pf::iota<i64>(0, n))
                 .map("m", map, pf::replicas(3))
                 .filter("f", keep)
                 .flat_map("fan", fan)
                 .collect()
                 .run();
    CHECK(r.value == want);
  }
  SUBCASE("own processes, generator source, ordered on collect") {
    auto r = pf::pipeline("ordered", pf::batch_bytes(512), pf::ring_slots(4))
                 .source("n", [i = i64{0}]() mutable -> std::optional<i64> {
                   if (i >= n) return std::nullopt;
                   return i++;
                 })
                 .map("m", map, pf::replicas(3))
                 .filter("f", keep, pf::replicas(2), pf::own_process)
                 .flat_map("fan", fan, pf::replicas(3), pf::own_process)
                 .collect(pf::ordered)
                 .run();
    CHECK(r.value == want);
  }
  SUBCASE("fusion(false), ordered on the last stage before collect") {
    auto r = pf::pipeline("ordered", pf::fusion(false))
                 .source("n", pf::iota<i64>(0, n))
                 .map("m", map, pf::replicas(3))
                 .filter("f", keep)
                 .flat_map("fan", fan, pf::replicas(2), pf::ordered)
                 .collect()
                 .run();
    CHECK(r.value == want);
  }
}

TEST_CASE("pf::ordered reduce with an associative, non-commutative combine gives the sequential answer") {
  CleanupCheck cleanup;
  constexpr int n = 30'000;
  std::string want;
  for (int i = 0; i < n; ++i)
    if (i % 3 != 0) want += std::to_string(i) + ",";
  auto concat = [](std::string acc, const std::string& s) { return acc + s; };
  auto append = [](std::string& acc, std::string s) { acc += s; };

  SUBCASE("fused replicas(3)") {
    auto r = pf::pipeline("concat", pf::batch_bytes(4096))
                 .source("n", pf::iota(0, n))
                 .map("str", [](int i) { return std::to_string(i) + ","; }, pf::replicas(3))
                 .filter("skip3", [](const std::string& s) { return std::stoi(s) % 3 != 0; })
                 .reduce("cat", std::string{}, append, concat, pf::ordered)
                 .run();
    CHECK(r.value.size() == want.size());
    CHECK(r.value == want);
  }
  SUBCASE("reduce in processes of its own, replicas(3)") {
    auto r = pf::pipeline("concat", pf::ordered, pf::batch_bytes(256))
                 .source("n", pf::iota(0, n))
                 .map("str", [](int i) { return std::to_string(i) + ","; }, pf::replicas(2))
                 .filter("skip3", [](const std::string& s) { return std::stoi(s) % 3 != 0; })
                 .reduce("cat", std::string{}, append, concat, pf::replicas(3), pf::own_process)
                 .run();
    CHECK(r.value.size() == want.size());
    CHECK(r.value == want);
  }
}

TEST_CASE("reduce_by_key groups correctly; in processes of its own every key meets one accumulator") {
  CleanupCheck cleanup;
  constexpr i64 n = 100'000;
  // count, sum, and the replicas (pids) that folded into the group
  struct Tally {
    i64 count = 0;
    i64 sum = 0;
  };
  using Acc = std::tuple<i64, i64, std::vector<std::int32_t>>;
  auto fold = [](Acc& a, i64 x) {
    std::get<0>(a) += 1;
    std::get<1>(a) += x;
    auto& pids = std::get<2>(a);
    const auto me = static_cast<std::int32_t>(::getpid());
    if (std::find(pids.begin(), pids.end(), me) == pids.end()) pids.push_back(me);
  };
  auto combine = [](Acc& a, Acc b) {
    std::get<0>(a) += std::get<0>(b);
    std::get<1>(a) += std::get<1>(b);
    for (auto p : std::get<2>(b))
      if (std::find(std::get<2>(a).begin(), std::get<2>(a).end(), p) == std::get<2>(a).end()) std::get<2>(a).push_back(p);
  };
  auto key = [](i64 x) { return x % 13; };
  std::map<i64, Tally> want;
  for (i64 x = 0; x < n; ++x) {
    want[x % 13].count += 1;
    want[x % 13].sum += x;
  }
  auto check_groups = [&](const std::unordered_map<i64, Acc>& got) {
    REQUIRE(got.size() == want.size());
    for (const auto& [k, t] : want) {
      CAPTURE(k);
      REQUIRE(got.count(k) == 1);
      CHECK(std::get<0>(got.at(k)) == t.count);
      CHECK(std::get<1>(got.at(k)) == t.sum);
    }
  };

  SUBCASE("own processes, replicas(3): key-hash dispatch") {
    auto r = pf::pipeline("by_key", pf::batch_bytes(2048))
                 .source("n", pf::iota<i64>(0, n))
                 .map("id", [](i64 x) { return x; }, pf::replicas(2))
                 .reduce_by_key("groups", key, Acc{}, fold, combine, pf::replicas(3), pf::own_process)
                 .run();
    check_groups(r.value);
    std::set<std::int32_t> all_pids;
    for (const auto& [k, acc] : r.value) {
      CAPTURE(k);
      CHECK(std::get<2>(acc).size() == 1);  // the key always met the same replica
      all_pids.insert(std::get<2>(acc).begin(), std::get<2>(acc).end());
    }
    CHECK(all_pids.size() > 1);  // 13 keys over 3 replicas: more than one replica was used
    CHECK(r.report.stages.back().replicas == 3);
  }
  SUBCASE("fused with the map, replicas(3)") {
    auto r = pf::pipeline("by_key", pf::batch_bytes(2048))
                 .source("n", pf::iota<i64>(0, n))
                 .map("id", [](i64 x) { return x; }, pf::replicas(3))
                 .reduce_by_key("groups", key, Acc{}, fold, combine)
                 .run();
    check_groups(r.value);
    CHECK(r.report.stages[1].process_group == r.report.stages[2].process_group);
  }
  SUBCASE("pointer to member key, string keys") {
    auto r = pf::pipeline("by_member")
                 .source("n", pf::iota<i64>(0, 1000))
                 .map("pair", [](i64 x) { return std::pair<std::string, i64>{with_number("z", x % 4), x}; }, pf::replicas(2))
                 .reduce_by_key("zones", &std::pair<std::string, i64>::first, i64{0},
                                [](i64 acc, const std::pair<std::string, i64>& p) { return acc + p.second; }, std::plus<>{},
                                pf::replicas(2), pf::own_process)
                 .run();
    std::unordered_map<std::string, i64> expect;
    for (i64 x = 0; x < 1000; ++x) expect[with_number("z", x % 4)] += x;
    CHECK(r.value == expect);
  }
}

TEST_CASE("empty input reaches every terminal as an empty result") {
  CleanupCheck cleanup;
  const std::string path = temp_path("empty_sink");
  std::filesystem::remove(path);
  auto nothing = []() -> std::optional<i64> { return std::nullopt; };
  auto drop_all = [](i64) { return false; };

  // Three ways to have no items: an empty range, a generator ending at once, a filter dropping all.
  for (int way = 0; way < 3; ++way) {
    CAPTURE(way);
    auto start = [&](const std::string& name) {
      auto p = pf::pipeline(name);
      if (way == 0) return p.source("src", pf::iota<i64>(0, 0)).map("m", [](i64 x) { return x + 1; }, pf::replicas(2));
      if (way == 1) return p.source("src", nothing).map("m", [](i64 x) { return x + 1; }, pf::replicas(2));
      return p.source("src", pf::iota<i64>(0, 5000)).map("m", [](i64 x) { return x + 1; }, pf::replicas(2)).filter("none", drop_all);
    };
    auto collected = start("collect").collect().run();
    CHECK(collected.value.empty());
    auto ordered = start("ordered").collect(pf::ordered).run();
    CHECK(ordered.value.empty());
    auto sum = start("reduce").reduce("sum", i64{42}, std::plus<>{}, [](i64 a, i64 b) { return a + b - 42; }).run();
    CHECK(sum.value == 42);  // init is the identity of combine: nothing folded, init comes back
    auto sum_own = start("reduce_own").reduce("sum", i64{0}, std::plus<>{}, std::plus<>{}, pf::replicas(3), pf::own_process).run();
    CHECK(sum_own.value == 0);
    auto groups = start("by_key").reduce_by_key("g", [](i64 x) { return x % 3; }, i64{0}, std::plus<>{}, std::plus<>{}).run();
    CHECK(groups.value.empty());
    auto groups_own = start("by_key_own")
                          .reduce_by_key("g", [](i64 x) { return x % 3; }, i64{0}, std::plus<>{}, std::plus<>{}, pf::replicas(2),
                                         pf::own_process)
                          .run();
    CHECK(groups_own.value.empty());
    auto sunk = start("sink")
                    .sink("write", [path](i64 x) {
                      std::FILE* f = std::fopen(path.c_str(), "a");
                      if (f) {
                        std::fprintf(f, "%lld\n", static_cast<long long>(x));
                        std::fclose(f);
                      }
                    })
                    .run();
    CHECK_FALSE(std::filesystem::exists(path));
    CHECK(sunk.report.stages.back().items_in == 0);
  }
}

TEST_CASE("one item through every terminal") {
  CleanupCheck cleanup;
  auto one = [] {
    return pf::pipeline("one").source("src", pf::iota<i64>(41, 42)).map("inc", [](i64 x) { return x + 1; }, pf::replicas(3));
  };
  CHECK(one().collect().run().value == std::vector<i64>{42});
  CHECK(one().collect(pf::ordered).run().value == std::vector<i64>{42});
  CHECK(one().reduce("sum", i64{0}, std::plus<>{}, std::plus<>{}).run().value == 42);
  CHECK(one().reduce("sum", i64{0}, std::plus<>{}, std::plus<>{}, pf::ordered, pf::replicas(2)).run().value == 42);
  const auto groups = one().reduce_by_key("g", [](i64 x) { return x % 5; }, i64{0}, std::plus<>{}, std::plus<>{}, pf::own_process).run();
  CHECK(groups.value == std::unordered_map<i64, i64>{{2, 42}});
  auto generated = pf::pipeline("one_gen")
                       .source("src", [done = false]() mutable -> std::optional<std::string> {
                         if (done) return std::nullopt;
                         done = true;
                         return std::string("only");
                       })
                       .map("up", [](std::string s) { return s + "!"; }, pf::replicas(2))
                       .collect()
                       .run();
  CHECK(generated.value == std::vector<std::string>{"only!"});
}

TEST_CASE("collect() sizes its result once when the source's count reaches it unchanged") {
  // Many batches, so a vector grown batch by batch ends with room to spare; sized from the
  // source's count up front, its capacity is the count exactly (the values checked too).
  CleanupCheck cleanup;
  constexpr i64 n = 300'001;
  auto mapped = [](auto source) {
    return pf::pipeline("sized").source("src", std::move(source)).map("twice", [](i64 x) { return 2 * x; }, pf::replicas(2));
  };
  for (const bool threads : {false, true}) {
    CAPTURE(threads);
    auto run = [&](auto builder) { return threads ? builder.run(pf::in_threads).value : builder.run().value; };
    auto from_iota = run(mapped(pf::iota<i64>(0, n)).collect(pf::ordered));
    REQUIRE(from_iota.size() == static_cast<std::size_t>(n));
    CHECK(from_iota.capacity() == from_iota.size());
    CHECK(from_iota[n - 1] == 2 * (n - 1));
    std::vector<i64> values(n);
    std::iota(values.begin(), values.end(), i64{0});
    auto from_vector = run(mapped(pf::from(values)).map("inc", [](i64 x) { return x + 1; }).collect());
    REQUIRE(from_vector.size() == static_cast<std::size_t>(n));
    CHECK(from_vector.capacity() == from_vector.size());
    std::sort(from_vector.begin(), from_vector.end());
    CHECK(from_vector[n - 1] == 2 * (n - 1) + 1);
  }
  // Not when an item may be dropped (a filter, a skipping policy) or multiplied (flat_map): the
  // source's count says nothing then, and the result holds what came.
  const auto kept = mapped(pf::iota<i64>(0, n)).filter("some", [](i64 x) { return x % 3 == 0; }).collect().run().value;
  CHECK(kept.size() == static_cast<std::size_t>(n / 3 + 1));
  const auto skipped = pf::pipeline("skip")
                           .source("src", pf::iota<i64>(0, n))
                           .map("odd", [](i64 x) { return x % 2 ? x : throw std::runtime_error("even"); }, pf::skip)
                           .collect()
                           .run()
                           .value;
  CHECK(skipped.size() == static_cast<std::size_t>(n / 2));
  CHECK(skipped.capacity() < static_cast<std::size_t>(n));
}

TEST_CASE("a 10 MB string item crosses map and collect (larger than any ring slot)") {
  CleanupCheck cleanup;
  constexpr std::size_t size = 10u << 20;
  auto big = [] {
    std::string s(size, '\0');
    for (std::size_t i = 0; i < s.size(); ++i) s[i] = static_cast<char>('a' + (i * 7919) % 26);
    return s;
  };
  const std::string original = big();
  std::string want = original;
  std::reverse(want.begin(), want.end());

  SUBCASE("generator -> map(own processes, 2 replicas) -> collect, small slots") {
    auto r = pf::pipeline("big", pf::batch_bytes(4096), pf::ring_slots(2))
                 .source("gen", [n = 0, big]() mutable -> std::optional<std::string> {
                   if (n >= 3) return std::nullopt;
                   ++n;
                   return big();
                 })
                 .map("reverse", [](std::string s) { return std::string(s.rbegin(), s.rend()); }, pf::replicas(2))
                 .collect(pf::ordered)
                 .run();
    REQUIRE(r.value.size() == 3);
    for (const auto& s : r.value) CHECK((s == want));
  }
  SUBCASE("from(vector) with big and small items mixed, fused") {
    std::vector<std::string> items{"x", original, "y", "", original};
    auto r = pf::pipeline("big_from", pf::ordered)
                 .source("vec", pf::from(items))
                 .map("reverse", [](const std::string& s) { return std::string(s.rbegin(), s.rend()); }, pf::replicas(2))
                 .collect()
                 .run();
    REQUIRE(r.value.size() == 5);
    CHECK(r.value[0] == "x");
    CHECK((r.value[1] == want));
    CHECK(r.value[2] == "y");
    CHECK(r.value[3].empty());
    CHECK((r.value[4] == want));
  }
}

TEST_CASE("flat_map fans out 10 000 items per input") {
  CleanupCheck cleanup;
  constexpr i64 inputs = 40;
  constexpr i64 fan = 10'000;
  i64 want_sum = 0;
  for (i64 x = 0; x < inputs; ++x)
    for (i64 k = 0; k < fan; ++k) want_sum += x * fan + k;

  auto r = pf::pipeline("fan")
               .source("src", pf::iota<i64>(0, inputs))
               .flat_map<i64>("fan", [](const i64& x, pf::emitter<i64>& emit) {
                 for (i64 k = 0; k < fan; ++k) emit(x * fan + k);
               }, pf::replicas(2))
               .map("id", [](i64 x) { return x; }, pf::replicas(2), pf::own_process)
               .collect()
               .run();
  CHECK(r.value.size() == static_cast<std::size_t>(inputs * fan));
  std::sort(r.value.begin(), r.value.end());
  std::vector<i64> want(static_cast<std::size_t>(inputs * fan));
  std::iota(want.begin(), want.end(), i64{0});
  CHECK(r.value == want);
  CHECK(r.report.stages[1].items_in == static_cast<std::uint64_t>(inputs));
  CHECK(r.report.stages[1].items_out == static_cast<std::uint64_t>(inputs * fan));

  auto ordered = pf::pipeline("fan_ordered", pf::ordered)
                     .source("src", pf::iota<i64>(0, inputs))
                     .flat_map("fan", [](i64 x) {
                       std::vector<i64> out(fan);
                       std::iota(out.begin(), out.end(), x * fan);
                       return out;
                     }, pf::replicas(3))
                     .reduce("sum", i64{0}, std::plus<>{}, std::plus<>{}, pf::own_process)
                     .run();
  CHECK(ordered.value == want_sum);
}

TEST_CASE("a user struct with its own procflow::codec<> crosses processes intact") {
  CleanupCheck cleanup;
  auto make = [](int i) {
    Reading r;
    r.sensor = with_number("sensor-", i % 17);
    r.values.assign(static_cast<std::size_t>(i % 5), i * 0.5);
    r.id = i;
    return r;
  };
  std::vector<Reading> want;
  for (int i = 0; i < 5000; ++i) {
    Reading r = make(i);
    r.values.push_back(static_cast<double>(r.values.size()));
    r.id = -r.id;
    want.push_back(r);
  }
  auto r = pf::pipeline("readings", pf::ordered, pf::batch_bytes(128))
               .source("n", pf::iota(0, 5000))
               .map("make", make, pf::replicas(2))
               .map("annotate", [](Reading x) {
                 x.values.push_back(static_cast<double>(x.values.size()));
                 x.id = -x.id;
                 return x;
               }, pf::replicas(3), pf::own_process)
               .collect()
               .run();
  CHECK(r.value.size() == want.size());
  CHECK(r.value == want);

  auto groups = pf::pipeline("readings_by_sensor")
                    .source("n", pf::iota(0, 5000))
                    .map("make", make, pf::replicas(2))
                    .reduce_by_key("by_sensor", &Reading::sensor, Reading{}, [](Reading& acc, const Reading& x) { acc.id += 1; (void)x; },
                                   [](Reading& acc, const Reading& other) { acc.id += other.id; }, pf::replicas(2), pf::own_process)
                    .run();
  REQUIRE(groups.value.size() == 17);
  std::int32_t total = 0;
  for (const auto& [sensor, acc] : groups.value) total += acc.id;
  CHECK(total == 5000);
}

TEST_CASE("sink consumes every item and can write a file") {
  CleanupCheck cleanup;
  constexpr int n = 20'000;
  std::string want;
  for (int i = 0; i < n; ++i)
    if (i % 2 == 0) want += std::to_string(i * 3) + "\n";

  SUBCASE("write(2) to a descriptor opened by the caller") {
    const std::string path = temp_path("sink_fd");
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0600);
    REQUIRE(fd >= 0);
    auto r = pf::pipeline("sink_fd", pf::ordered)
                 .source("n", pf::iota(0, n))
                 .filter("even", [](int i) { return i % 2 == 0; }, pf::replicas(3))
                 .map("triple", [](int i) { return std::to_string(i * 3) + "\n"; })
                 .sink("write", [fd](const std::string& line) {
                   if (::write(fd, line.data(), line.size()) != static_cast<ssize_t>(line.size())) throw std::runtime_error("short write");
                 })
                 .run();
    ::close(fd);
    CHECK(read_file(path) == want);  // one sink process, ordered: the file is in source order
    CHECK(r.report.stages.back().items_in == static_cast<std::uint64_t>(n / 2));
    CHECK(r.report.stages.back().replicas == 0);  // a single-replica sink runs in the caller's process
    std::filesystem::remove(path);
  }
  SUBCASE("std::FILE* opened by the caller (stdio buffers are flushed when the sink ends)") {
    const std::string path = temp_path("sink_stdio");
    std::FILE* f = std::fopen(path.c_str(), "w");
    REQUIRE(f);
    pf::pipeline("sink_stdio", pf::ordered)
        .source("n", pf::iota(0, n))
        .filter("even", [](int i) { return i % 2 == 0; }, pf::replicas(2))
        .map("triple", [](int i) { return std::to_string(i * 3) + "\n"; })
        .sink("write", [f](const std::string& line) { std::fputs(line.c_str(), f); })
        .run();
    std::fclose(f);  // the supervisor's copy of the FILE buffered nothing
    CHECK(read_file(path) == want);
    std::filesystem::remove(path);
  }
  SUBCASE("std::ofstream opened inside the sink process") {
    const std::string path = temp_path("sink_ofstream");
    pf::pipeline("sink_ofstream", pf::ordered)
        .source("n", pf::iota(0, n))
        .filter("even", [](int i) { return i % 2 == 0; }, pf::replicas(2))
        .map("triple", [](int i) { return std::to_string(i * 3) + "\n"; })
        .sink("write", [path, out = std::shared_ptr<std::ofstream>()](const std::string& line) mutable {
          if (!out) out = std::make_shared<std::ofstream>(path, std::ios::binary | std::ios::trunc);
          *out << line;
        })
        .run();
    CHECK(read_file(path) == want);
    std::filesystem::remove(path);
  }
}

// A sink runs in a process of its own, which leaves with _exit(): objects of the caller (say a
// std::ofstream captured by reference) are copies there and are never flushed. The supported way
// (documented on sink()): the sink owns what it writes through, opening it in its own process;
// each replica's copy of the callable is destroyed when its input ends, which closes the stream.
TEST_CASE("a sink that opens its own std::ofstream gets every line written") {
  CleanupCheck cleanup;
  const std::string path = temp_path("sink_ofstream_owned");
  std::string want;
  for (int i = 0; i < 1000; ++i) want += std::to_string(i) + "\n";
  pf::pipeline("sink_owned", pf::ordered)
      .source("n", pf::iota(0, 1000))
      .map("str", [](int i) { return std::to_string(i) + "\n"; }, pf::replicas(2))
      .sink("write", [path, out = std::shared_ptr<std::ofstream>()](const std::string& line) mutable {
        if (!out) out = std::make_shared<std::ofstream>(path, std::ios::binary);
        *out << line;
      })
      .run();
  const std::string got = read_file(path);
  CHECK(got.size() == want.size());
  CHECK((got == want));
  std::filesystem::remove(path);
}

TEST_CASE("the report counts items in and out of every stage") {
  CleanupCheck cleanup;
  constexpr i64 n = 10'000;
  auto r = pf::pipeline("counted")
               .source("numbers", pf::iota<i64>(0, n))
               .map("square", [](i64 x) { return x * x; }, pf::replicas(2))
               .filter("even", [](i64 x) { return x % 2 == 0; })
               .flat_map("twice", [](i64 x) { return std::vector<i64>{x, x}; }, pf::replicas(3), pf::own_process)
               .reduce("sum", i64{0}, std::plus<>{}, std::plus<>{}, pf::replicas(2))
               .run();
  i64 want = 0;
  for (i64 x = 0; x < n; ++x)
    if ((x * x) % 2 == 0) want += 2 * x * x;
  CHECK(r.value == want);
  const auto& s = r.report.stages;
  REQUIRE(s.size() == 5);
  CHECK(r.report.pipeline == "counted");
  CHECK(s[0].name == "numbers");
  CHECK(s[0].kind == "source");
  CHECK(s[0].items_out == static_cast<std::uint64_t>(n));
  CHECK(s[1].name == "square");
  CHECK(s[1].kind == "map");
  CHECK(s[1].replicas == 2);
  CHECK(s[1].items_in == static_cast<std::uint64_t>(n));
  CHECK(s[1].items_out == static_cast<std::uint64_t>(n));
  CHECK(s[2].kind == "filter");
  CHECK(s[2].replicas == 2);  // inherited from the previous stage
  CHECK(s[2].items_in == static_cast<std::uint64_t>(n));
  CHECK(s[2].items_out == static_cast<std::uint64_t>(n / 2));
  CHECK(s[3].kind == "flat_map");
  CHECK(s[3].replicas == 3);
  CHECK(s[3].items_in == static_cast<std::uint64_t>(n / 2));
  CHECK(s[3].items_out == static_cast<std::uint64_t>(n));
  CHECK(s[4].kind == "reduce");
  CHECK(s[4].replicas == 2);
  CHECK(s[4].items_in == static_cast<std::uint64_t>(n));
  // Fusion: source, map and filter share the first group; the flat_map asked for its own
  // processes, and the reduce (2 replicas) cannot fuse with it (3 replicas).
  CHECK(s[0].process_group == s[1].process_group);
  CHECK(s[1].process_group == s[2].process_group);
  CHECK(s[3].process_group != s[2].process_group);
  CHECK(s[4].process_group != s[3].process_group);
  CHECK(r.report.processes == 2 + 3 + 2);
  CHECK(r.report.wall_s > 0);
  CHECK(r.report.bottleneck() != nullptr);
  const std::string table = r.report.to_string();
  for (const char* name : {"numbers", "square", "even", "twice", "sum"}) CHECK(table.find(name) != std::string::npos);
  CHECK(r.report.to_json().find("\"square\"") != std::string::npos);

  auto collected = pf::pipeline("counted_collect", pf::fusion(false))
                       .source("gen", [i = i64{0}]() mutable -> std::optional<i64> {
                         if (i >= 777) return std::nullopt;
                         return i++;
                       })
                       .filter("odd", [](i64 x) { return x % 2 == 1; }, pf::replicas(2))
                       .collect()
                       .run();
  CHECK(collected.value.size() == 388);
  REQUIRE(collected.report.stages.size() == 3);
  CHECK(collected.report.stages[0].items_out == 777);
  CHECK(collected.report.stages[1].items_in == 777);
  CHECK(collected.report.stages[1].items_out == 388);
  CHECK(collected.report.stages[2].kind == "collect");
  CHECK(collected.report.stages[2].items_in == 388);
  CHECK(collected.report.processes == 1 + 2);
}

TEST_CASE("a declaration that cannot run is a clear error naming the stage") {
  CleanupCheck cleanup;
  auto too_many = pf::pipeline("huge").source("n", pf::iota(0, 10)).map("m", [](int x) { return x; }, pf::replicas(100000)).collect();
  CHECK_THROWS_WITH_AS(too_many.run(), doctest::Contains("stage 'm' asks for 100000 replicas"), std::invalid_argument);
  CHECK_THROWS_AS(pf::replicas(0), std::invalid_argument);
}

namespace {

}  // namespace

TEST_CASE("run() works when the program ignores SIGCHLD or reaps every child from a handler") {
  // Short-lived replicas, many runs: a replica can end before run() has looked at it, and its
  // exit status is then taken by the kernel (SIG_IGN) or by the handler. (Before the pidfd was
  // obtained race-free, about half of such runs failed.)
  CleanupCheck cleanup;
#if defined(PROCFLOW_ASAN) || defined(PROCFLOW_TSAN)
  constexpr int rounds = 25;  // under ASan a fork of this test process (large by now) costs ~0.1 s
#else
  constexpr int rounds = 200;
#endif
  auto runs = [](const char* what) {
    int failures = 0;
    for (int round = 0; round < rounds; ++round) {
      try {
        const auto r = pf::pipeline("sigchld")
                           .source("n", pf::iota(0, 100))
                           .map("m", [](int x) { return x + 1; }, pf::replicas(2))
                           .reduce("sum", 0, std::plus<>{}, std::plus<>{})
                           .run();
        failures += r.value == 5050 ? 0 : 1;
      } catch (const std::exception& e) {
        ++failures;
        MESSAGE(what, " round ", round, ": ", e.what());
      }
    }
    return failures;
  };
  SUBCASE("SIGCHLD ignored (children reaped by the kernel)") {
    const SignalGuard guard(SIGCHLD, SIG_IGN, 0);
    CHECK(runs("ignored") == 0);
  }
  SUBCASE("SIGCHLD handler reaping every child") {
    const SignalGuard guard(SIGCHLD, reap_every_child, SA_RESTART | SA_NOCLDSTOP);
    CHECK(runs("reaped") == 0);
  }
}

// Regressions found in review.
TEST_CASE("reduce_by_key straight after a source process (generator, or iota unfused)") {
  CleanupCheck cleanup;
  auto fold = [](long a, int x) { return a + x; };
  const auto from_generator = pf::pipeline("g")
                                  .source("gen", [i = 0]() mutable -> std::optional<int> {
                                    if (i < 1000) return i++;
                                    return std::nullopt;
                                  })
                                  .reduce_by_key("rbk", [](int x) { return x % 7; }, 0L, fold, std::plus<>{}, pf::replicas(2))
                                  .run();
  const auto from_iota = pf::pipeline("i")
                             .source("n", pf::iota(0, 1000))
                             .reduce_by_key("rbk", [](int x) { return x % 7; }, 0L, fold, std::plus<>{}, pf::replicas(2), pf::own_process)
                             .run();
  std::unordered_map<int, long> want;
  for (int x = 0; x < 1000; ++x) want[x % 7] += x;
  CHECK(from_generator.value == want);
  CHECK(from_iota.value == want);
}

TEST_CASE("trivially copyable items larger than a slot are split like any other") {
  CleanupCheck cleanup;
  const auto big = pf::pipeline("big")
                       .source("n", pf::iota(0, 10))
                       .map("array", [](int x) { std::array<char, 70000> a{}; a[0] = static_cast<char>(x); a[69999] = 7; return a; })
                       .collect()
                       .run();
  REQUIRE(big.value.size() == 10);
  int seen = 0;
  for (const auto& a : big.value) {
    seen += a[0];
    CHECK(a[69999] == 7);
  }
  CHECK(seen == 45);
  const auto small_slots = pf::pipeline("tiny", pf::batch_bytes(64))
                               .source("n", pf::iota(0, 10))
                               .map("array", [](int x) { std::array<char, 100> a{}; a[0] = static_cast<char>(x); return a; })
                               .collect()
                               .run();
  CHECK(small_slots.value.size() == 10);
}

TEST_CASE("flat_map accepts ranges that yield values (views)") {
  CleanupCheck cleanup;
  const auto r = pf::pipeline("views")
                     .source("n", pf::iota(0, 100))
                     .flat_map("upto", [](int x) { return std::views::iota(0, x); }, pf::replicas(2))
                     .reduce("sum", 0L, [](long a, int x) { return a + x; }, std::plus<>{})
                     .run();
  long want = 0;
  for (int x = 0; x < 100; ++x) want += static_cast<long>(x) * (x - 1) / 2;
  CHECK(r.value == want);
}

namespace {
long long cube(int x) { return static_cast<long long>(x) * x * x; }
bool is_odd(long long v) { return v % 2 != 0; }
struct Scaled {
  int factor;
  constexpr long long times(long long v) const { return v * factor; }
};
}  // namespace

TEST_CASE("pf::fn<&f>: functions given as constants work in every stage position, like function pointers") {
  CleanupCheck cleanup;
  const auto by_constant = pf::pipeline("fn")
                               .source("n", pf::iota(0, 1000))
                               .map("cube", pf::fn<&cube>, pf::replicas(2))
                               .filter("odd", pf::fn<&is_odd>)
                               .collect(pf::ordered)
                               .run();
  const auto by_pointer = pf::pipeline("fn pointer")
                              .source("n", pf::iota(0, 1000))
                              .map("cube", &cube, pf::replicas(2))
                              .filter("odd", &is_odd)
                              .collect(pf::ordered)
                              .run();
  std::vector<long long> want;
  for (int x = 0; x < 1000; ++x)
    if (is_odd(cube(x))) want.push_back(cube(x));
  CHECK(by_constant.value == want);
  CHECK(by_pointer.value == want);
  // A member function constant: called with the object first.
  static_assert(pf::fn<&Scaled::times>(Scaled{3}, 5) == 15);
  static_assert(std::is_empty_v<pf::fn_t<&cube>>);
}

// Checks SPEC §1's promise on item types end to end (pipeline.hpp, detail/stage.hpp, codec.hpp,
// lib/channel): items of every kind cross every kind of process boundary intact —
//   * items that encode to zero bytes (a marker type, an empty PROCFLOW_CODEC struct), from a
//     generator process through rings to replicas, from a chunked iota source fused into replicas,
//     through rings between process groups, and back to the supervisor for collect and reduce,
//     ordered and unordered;
//   * a user's own codec for a trivially copyable type is used on every path (its decode runs, its
//     transformation holds), never bypassed by the raw bulk copy;
//   * PROCFLOW_CODEC structs: with a std::string member (field by field), padded (field by field)
//     and unpadded (raw, bulk-copied).
// Every pipeline runs in a child of the test under a watchdog, so a hang fails the case by name.
#include "support/child_process.hpp"

#include <procflow/procflow.hpp>

#include <doctest/doctest.h>

#include <sys/mman.h>
#include <sys/wait.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace pf = procflow;
namespace pt = procflow::test;
using namespace std::chrono_literals;

// ------------------------------------------------------------------ item types

namespace {

// Encodes to zero bytes and is not trivially copyable (so no path can treat it as raw bytes).
struct Beacon {
  Beacon() = default;
  Beacon(const Beacon&) noexcept {}
  Beacon& operator=(const Beacon&) noexcept { return *this; }
};

// Trivially copyable, but its codec versions and transforms it: a version byte, the value with its
// bytes reversed, and a hop count that every decode increments. A raw copy on any path shows up as
// a wrong value, a wrong hop count, or a refused version.
struct Versioned {
  std::int32_t value = 0;
  std::int32_t hops = 0;
};
static_assert(std::is_trivially_copyable_v<Versioned>);

std::atomic<long> versioned_decodes{0};  // in the process that decodes (per process)

}  // namespace

template <>
struct procflow::codec<Beacon> {
  static std::size_t encoded_size(const Beacon&) noexcept { return 0; }
  static std::byte* encode(const Beacon&, std::byte* out) noexcept { return out; }
  static Beacon decode(procflow::decoder&) { return {}; }
};

template <>
struct procflow::codec<Versioned> {
  static constexpr std::uint8_t version = 2;
  static std::size_t encoded_size(const Versioned&) noexcept { return 6; }
  static std::byte* encode(const Versioned& v, std::byte* out) noexcept {
    out[0] = std::byte{version};
    const auto u = static_cast<std::uint32_t>(v.value);
    for (int i = 0; i < 4; ++i) out[1 + i] = static_cast<std::byte>(u >> (24 - 8 * i));
    out[5] = static_cast<std::byte>(v.hops);
    return out + 6;
  }
  static Versioned decode(procflow::decoder& in) {
    const std::byte* p = in.take(6);
    if (p[0] != std::byte{version})
      throw procflow::codec_error("Versioned: unknown version " + std::to_string(static_cast<int>(p[0])));
    std::uint32_t u = 0;
    for (int i = 0; i < 4; ++i) u = (u << 8) | static_cast<std::uint32_t>(p[1 + i]);
    versioned_decodes.fetch_add(1, std::memory_order_relaxed);
    return {static_cast<std::int32_t>(u), static_cast<std::int32_t>(p[5]) + 1};
  }
};

static_assert(!pf::is_raw_codec_v<Beacon>);
static_assert(!pf::is_raw_codec_v<Versioned>, "a user's codec for a trivially copyable type is not raw");

// ------------------------------------------------------------------ PROCFLOW_CODEC types

namespace {

struct Tag {};  // an empty struct: zero bytes
PROCFLOW_CODEC(Tag);

struct Trip {
  std::string origin;
  std::int32_t delay = 0;
  double miles = 0;
  char carrier[3] = {};
  friend bool operator==(const Trip&, const Trip&) = default;
};
PROCFLOW_CODEC(Trip, origin, delay, miles, carrier);

struct Sample {  // unpadded numbers: raw, bulk-copied
  std::int32_t id;
  float x;
  std::uint16_t flags[2];
  friend bool operator==(const Sample&, const Sample&) = default;
};
PROCFLOW_CODEC(Sample, id, x, flags);

struct Gappy {  // 3 bytes of padding after `a`: field by field (padding never travels)
  std::int8_t a;
  std::int32_t b;
  friend bool operator==(const Gappy&, const Gappy&) = default;
};
PROCFLOW_CODEC(Gappy, a, b);

static_assert(pf::encodable<Tag> && pf::codec<Tag>::encoded_size(Tag{}) == 0);
static_assert(!pf::is_raw_codec_v<Trip>);
static_assert(pf::is_raw_codec_v<Sample>);
static_assert(!pf::is_raw_codec_v<Gappy>);

// ------------------------------------------------------------------ watchdog

// Runs `body` (returning "" on success, else what went wrong) in a child of the test with a time
// limit; the failure text comes back through shared memory.
template <class Body>
void run_guarded(const char* what, Body body, std::chrono::seconds limit = 60s) {
  const std::set<std::string> shm_before = pt::dev_shm_entries();
  constexpr std::size_t message_bytes = 4096;
  void* mem = ::mmap(nullptr, message_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  REQUIRE(mem != MAP_FAILED);
  auto* message = static_cast<char*>(mem);
  message[0] = '\0';
  {
    pt::ChildProcess child([&] {
      std::string failure;
      try {
        failure = body();
      } catch (const std::exception& e) {
        failure = std::string("threw: ") + e.what();
      }
      std::strncpy(message, failure.c_str(), message_bytes - 1);
      return failure.empty() ? 0 : 1;
    });
    const auto status = child.wait_for(limit);
    INFO(what);
    CHECK_MESSAGE(status.has_value(), "hung: killed by the watchdog");
    if (status) {
      INFO("failure: ", std::string(message));
      CHECK((WIFEXITED(*status) && WEXITSTATUS(*status) == 0));
    }
  }
  ::munmap(mem, message_bytes);
  CHECK(pt::count_children() == 0);
  CHECK(pt::dev_shm_entries() == shm_before);
}

std::string expect_count(const char* what, std::size_t got, std::size_t want) {
  if (got == want) return {};
  return std::string(what) + ": " + std::to_string(got) + " items, expected " + std::to_string(want);
}

template <class T>
auto generator_of(int n) {
  return [i = 0, n]() mutable -> std::optional<T> {
    if (i == n) return std::nullopt;
    ++i;
    return T{};
  };
}

}  // namespace

// ------------------------------------------------------------------ zero-byte items

TEST_CASE("zero-byte items: generator process -> rings -> 2 replicas -> collect, unordered and ordered") {
  for (const bool ordered : {false, true}) {
    CAPTURE(ordered);
    run_guarded("generator -> map -> collect", [ordered] {
      constexpr int n = 1000;
      auto flow = pf::pipeline("zero_gen", pf::batch_bytes(256))
                      .source("gen", generator_of<Beacon>(n))
                      .map("same", [](Beacon b) { return b; }, pf::replicas(2));
      const auto r = ordered ? flow.collect(pf::ordered).run() : flow.collect().run();
      return expect_count("collected", r.value.size(), n);
    });
  }
}

TEST_CASE("zero-byte items: chunked iota fused into 2 replicas -> collect in the supervisor, unordered and ordered") {
  for (const bool ordered : {false, true}) {
    CAPTURE(ordered);
    run_guarded("iota -> map(to zero-byte) -> collect", [ordered] {
      constexpr int n = 5000;
      auto flow = pf::pipeline("zero_iota", pf::batch_bytes(256))
                      .source("n", pf::iota(0, n))
                      .map("beacon", [](int) { return Beacon{}; }, pf::replicas(2));
      const auto r = ordered ? flow.collect(pf::ordered).run() : flow.collect().run();
      return expect_count("collected", r.value.size(), n);
    });
  }
}

TEST_CASE("zero-byte items: between process groups, into a reduce, and as reduce partials") {
  run_guarded("iota -> map(to zero-byte) -> own-process reduce counting", [] {
    constexpr int n = 5000;
    const auto r = pf::pipeline("zero_groups", pf::batch_bytes(128))
                       .source("n", pf::iota(0, n))
                       .map("tag", [](int) { return Tag{}; }, pf::replicas(2))
                       .map("relay", [](Tag t) { return t; }, pf::replicas(2), pf::own_process)
                       .reduce("count", std::int64_t{0}, [](std::int64_t acc, Tag) { return acc + 1; }, std::plus<>{},
                               pf::own_process)
                       .run();
    return expect_count("counted", static_cast<std::size_t>(r.value), n);
  });
  run_guarded("ordered: generator -> own-process map -> collect", [] {
    constexpr int n = 3000;
    const auto r = pf::pipeline("zero_ordered", pf::ordered, pf::batch_bytes(128))
                       .source("gen", generator_of<Tag>(n))
                       .map("relay", [](Tag t) { return t; }, pf::replicas(3), pf::own_process)
                       .collect()
                       .run();
    return expect_count("collected", r.value.size(), n);
  });
  run_guarded("a zero-byte accumulator: every replica's partial reaches the supervisor", [] {
    static int merges = 0;  // combine runs in the supervisor (this child)
    merges = 0;
    pf::pipeline("zero_partials")
        .source("n", pf::iota(0, 1000))
        .map("beacon", [](int) { return Beacon{}; }, pf::replicas(2))
        .reduce("merge", Beacon{}, [](Beacon acc, const Beacon&) { return acc; },
                [](Beacon acc, Beacon) {
                  ++merges;
                  return acc;
                })
        .run();
    return merges == 2 ? std::string() : "merged " + std::to_string(merges) + " partials of 2 replicas";
  });
}

// ------------------------------------------------------------------ a user codec wins

TEST_CASE("a user codec for a trivially copyable type is used on every path") {
  constexpr int n = 1000;
  run_guarded("iota -> map -> collect (bulk encode in the replica, bulk decode in the supervisor)", [] {
    versioned_decodes = 0;
    const auto r = pf::pipeline("versioned_iota")
                       .source("n", pf::iota(0, n))
                       .map("make", [](int x) { return Versioned{x * 3 - 7, 0}; }, pf::replicas(2))
                       .collect(pf::ordered)
                       .run();
    if (auto bad = expect_count("collected", r.value.size(), n); !bad.empty()) return bad;
    for (int i = 0; i < n; ++i) {
      const Versioned& v = r.value[static_cast<std::size_t>(i)];
      if (v.value != i * 3 - 7 || v.hops != 1)
        return "item " + std::to_string(i) + " arrived as {" + std::to_string(v.value) + ", hops " + std::to_string(v.hops) + "}";
    }
    if (versioned_decodes.load() < n) return "the user's decode ran " + std::to_string(versioned_decodes.load()) + " times";
    return std::string();
  });
  run_guarded("generator -> map(2 replicas) -> collect", [] {
    versioned_decodes = 0;
    const auto r = pf::pipeline("versioned_gen", pf::batch_bytes(512))
                       .source("gen", [i = 0]() mutable -> std::optional<Versioned> {
                         if (i == n) return std::nullopt;
                         const int x = i++;
                         return Versioned{x, 0};
                       })
                       .map("double", [](Versioned v) { return Versioned{v.value * 2, v.hops}; }, pf::replicas(2))
                       .collect(pf::ordered)
                       .run();
    if (auto bad = expect_count("collected", r.value.size(), n); !bad.empty()) return bad;
    for (int i = 0; i < n; ++i) {
      const Versioned& v = r.value[static_cast<std::size_t>(i)];
      if (v.value != 2 * i || v.hops != 2)  // decoded in a replica, then in the supervisor
        return "item " + std::to_string(i) + " arrived as {" + std::to_string(v.value) + ", hops " + std::to_string(v.hops) + "}";
    }
    if (versioned_decodes.load() < n) return "the user's decode ran " + std::to_string(versioned_decodes.load()) + " times";
    return std::string();
  });
}

// ------------------------------------------------------------------ PROCFLOW_CODEC structs

TEST_CASE("PROCFLOW_CODEC structs cross processes intact: with a string, padded, unpadded (raw)") {
  constexpr int n = 4000;
  run_guarded("Trip: a std::string member, field by field", [] {
    auto make = [](int i) {
      Trip t;
      t.origin = std::string(static_cast<std::size_t>(i % 9), static_cast<char>('a' + i % 26));
      t.delay = i - 100;
      t.miles = i * 0.25;
      t.carrier[0] = 'U';
      t.carrier[1] = static_cast<char>('A' + i % 26);
      t.carrier[2] = static_cast<char>(i % 7);
      return t;
    };
    const auto r = pf::pipeline("trips", pf::ordered, pf::batch_bytes(512))
                       .source("n", pf::iota(0, n))
                       .map("make", make, pf::replicas(2))
                       .map("delay", [](Trip t) { t.delay += 1; return t; }, pf::replicas(2), pf::own_process)
                       .collect()
                       .run();
    if (auto bad = expect_count("collected", r.value.size(), n); !bad.empty()) return bad;
    for (int i = 0; i < n; ++i) {
      Trip want = make(i);
      want.delay += 1;
      if (!(r.value[static_cast<std::size_t>(i)] == want)) return "trip " + std::to_string(i) + " differs";
    }
    return std::string();
  });
  run_guarded("Sample (raw) and Gappy (padded) through a generator and a process group", [] {
    const auto samples = pf::pipeline("samples", pf::ordered, pf::batch_bytes(256))
                             .source("gen", [i = 0]() mutable -> std::optional<Sample> {
                               if (i == n) return std::nullopt;
                               const int x = i++;
                               return Sample{x, static_cast<float>(x) * 0.5f, {static_cast<std::uint16_t>(x), 7}};
                             })
                             .map("bump", [](Sample s) { s.flags[1] += 1; return s; }, pf::replicas(2))
                             .collect()
                             .run();
    if (auto bad = expect_count("samples", samples.value.size(), n); !bad.empty()) return bad;
    for (int i = 0; i < n; ++i)
      if (!(samples.value[static_cast<std::size_t>(i)] == Sample{i, static_cast<float>(i) * 0.5f, {static_cast<std::uint16_t>(i), 8}}))
        return "sample " + std::to_string(i) + " differs";
    const auto gappy = pf::pipeline("gappy", pf::ordered, pf::batch_bytes(256))
                           .source("n", pf::iota(0, n))
                           .map("make", [](int i) { return Gappy{static_cast<std::int8_t>(i % 100), i}; }, pf::replicas(2))
                           .map("relay", [](Gappy g) { return g; }, pf::replicas(2), pf::own_process)
                           .collect()
                           .run();
    if (auto bad = expect_count("gappy", gappy.value.size(), n); !bad.empty()) return bad;
    for (int i = 0; i < n; ++i)
      if (!(gappy.value[static_cast<std::size_t>(i)] == Gappy{static_cast<std::int8_t>(i % 100), i}))
        return "gappy " + std::to_string(i) + " differs";
    return std::string();
  });
}

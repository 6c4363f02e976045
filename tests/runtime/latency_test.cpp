// Checks SPEC §2 (channel): "a partly filled slot is published within a latency bound (an
// option), so a slow stream flows" — a generator that sleeps in user code still gets its items
// through a replicated stage to a stage in another process (the flusher beside the producer);
// slow and bursty streams deliver every item, in order with pf::ordered, for every setting of
// pf::max_latency (0, the default, a bound, off).
#include <procflow/procflow.hpp>

#include <doctest/doctest.h>

#include <poll.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <numeric>
#include <optional>
#include <thread>
#include <vector>

namespace pf = procflow;
using i64 = std::int64_t;
using namespace std::chrono_literals;

namespace {

// Both ends of a pipe, closed on every exit path.
struct Pipe {
  int fd[2] = {-1, -1};
  Pipe() { REQUIRE(::pipe(fd) == 0); }
  ~Pipe() {
    ::close(fd[0]);
    ::close(fd[1]);
  }
};

constexpr i64 saw_items_while_asleep = -1;
constexpr i64 woke_by_timeout = -2;

// A source that yields 3 items and then "sleeps" (in user code, as a generator waiting for a
// socket would) until the stage in the third process says it received them, or 10 s pass. Its
// last item records which came first: an ordering of events, not a wall-clock measurement.
std::vector<i64> run_sleeping_source(int timeout_ms, auto... latency) {
  Pipe arrived;
  const int read_end = arrived.fd[0];
  const int write_end = arrived.fd[1];
  i64 next = 0;
  auto source = [&next, read_end, timeout_ms]() -> std::optional<i64> {
    if (next < 3) return next++;
    if (next > 3) return std::nullopt;
    ++next;
    pollfd p{read_end, POLLIN, 0};
    const int ready = ::poll(&p, 1, timeout_ms);
    return ready == 1 ? saw_items_while_asleep : woke_by_timeout;
  };
  int seen = 0;  // per process: the third stage runs in one process of its own
  auto third = [&seen, write_end](i64 x) {
    if (x >= 0 && ++seen == 3) {
      const char byte = 1;
      if (::write(write_end, &byte, 1) != 1) throw std::runtime_error("write to the test pipe failed");
    }
    return x;
  };
  return pf::pipeline("sleeping source", latency...)
      .source("gen", source)
      .map("double", [](i64 x) { return x < 0 ? x : 2 * x; }, pf::replicas(2))
      .map("arrival", third, pf::own_process, pf::replicas(1))
      .collect()
      .run()
      .value;
}

std::vector<i64> sorted(std::vector<i64> v) {
  std::sort(v.begin(), v.end());
  return v;
}

}  // namespace

TEST_CASE("items reach a stage in another process while the generator sleeps (default bound)") {
  const auto got = sorted(run_sleeping_source(10'000));
  CHECK(got == std::vector<i64>{saw_items_while_asleep, 0, 2, 4});
}

TEST_CASE("items reach a stage in another process while the generator sleeps (bound 0 and 1 ms)") {
  CHECK(sorted(run_sleeping_source(10'000, pf::max_latency(0ms))) == std::vector<i64>{saw_items_while_asleep, 0, 2, 4});
  CHECK(sorted(run_sleeping_source(10'000, pf::max_latency(1ms))) == std::vector<i64>{saw_items_while_asleep, 0, 2, 4});
}

TEST_CASE("a per-stage bound applies to the port that stage writes") {
  Pipe arrived;
  const int read_end = arrived.fd[0];
  const int write_end = arrived.fd[1];
  i64 next = 0;
  auto source = [&next, read_end]() -> std::optional<i64> {
    if (next < 2) return next++;
    if (next > 2) return std::nullopt;
    ++next;
    pollfd p{read_end, POLLIN, 0};
    return ::poll(&p, 1, 10'000) == 1 ? saw_items_while_asleep : woke_by_timeout;
  };
  int seen = 0;
  auto got = pf::pipeline("per stage", pf::max_latency(pf::latency_off))
                 .source("gen", source, pf::max_latency(2ms))
                 .map("arrival",
                      [&seen, write_end](i64 x) {
                        if (x >= 0 && ++seen == 2 && ::write(write_end, "x", 1) != 1) throw std::runtime_error("write");
                        return x;
                      },
                      pf::replicas(1))
                 .collect()
                 .run()
                 .value;
  CHECK(sorted(got) == std::vector<i64>{saw_items_while_asleep, 0, 1});
}

TEST_CASE("with the bound off, a sleeping generator's items wait for the end of its stream") {
  // The control for the tests above: nothing publishes the partly filled slot while the
  // generator sleeps, so the third stage only sees the items once the source gives up.
  const auto got = sorted(run_sleeping_source(2'000, pf::max_latency(pf::latency_off)));
  CHECK(got == std::vector<i64>{woke_by_timeout, 0, 2, 4});
}

TEST_CASE("trickle and bursty streams deliver every item, in order when ordered") {
  struct Setting {
    const char* name;
    std::optional<pf::max_latency> bound;
  };
  const Setting settings[] = {{"default", std::nullopt}, {"0", pf::max_latency(0ms)}, {"1ms", pf::max_latency(1ms)},
                              {"off", pf::max_latency(pf::latency_off)}};
  for (const auto& s : settings) {
    for (const bool ordered : {false, true}) {
      CAPTURE(s.name);
      CAPTURE(ordered);
      i64 next = 0;
      // Bursts of 20 items, a 20 ms pause between bursts, 100 items.
      auto bursty = [&next]() -> std::optional<i64> {
        if (next == 100) return std::nullopt;
        if (next > 0 && next % 20 == 0) std::this_thread::sleep_for(20ms);
        return next++;
      };
      auto p = pf::pipeline("bursty", s.bound.value_or(pf::max_latency(5ms)))
                   .source("gen", bursty)
                   .map("double", [](i64 x) { return 2 * x; }, pf::replicas(2))
                   .map("inc", [](i64 x) { return x + 1; }, pf::own_process, pf::replicas(1));
      std::vector<i64> expected(100);
      for (i64 i = 0; i < 100; ++i) expected[static_cast<std::size_t>(i)] = 2 * i + 1;
      if (ordered) {
        CHECK(p.collect(pf::ordered).run().value == expected);
      } else {
        CHECK(sorted(p.collect().run().value) == expected);
      }
    }
  }
}

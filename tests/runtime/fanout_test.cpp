// Checks SPEC §2: "a flat_map's emitter is a producer like any other, so one item's fan-out is
// under back-pressure too" — one input fanning out to many items through a process boundary
// keeps the peak RSS of every process flat as the fan-out grows 20x and 200x (emitter and
// range forms); ordered mode keeps the order of outputs that span many slots.
#include "support/child_process.hpp"

#include <procflow/procflow.hpp>

#include <doctest/doctest.h>

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <ranges>
#include <vector>

namespace pf = procflow;
namespace pt = procflow::test;
using i64 = std::int64_t;

namespace {

enum class Form { emitter, range };

// generator (1 input) -> flat_map to `fanout` items -> reduce in a process of its own.
std::uint64_t explode(i64 fanout, Form form) {
  auto start = pf::pipeline("explode").source("one", [done = false]() mutable -> std::optional<i64> {
    if (done) return std::nullopt;
    done = true;
    return 0;
  });
  auto sum = [](auto flow) {
    return flow.reduce("sum", std::uint64_t{0}, [](std::uint64_t a, i64 x) { return a + static_cast<std::uint64_t>(x); },
                       std::plus<>{}, pf::own_process, pf::replicas(1))
        .run()
        .value;
  };
  if (form == Form::emitter) {
    return sum(start.flat_map<i64>("fan", [fanout](i64, pf::emitter<i64>& emit) {
      for (i64 i = 0; i < fanout; ++i) emit(i);
    }));
  }
  return sum(start.flat_map("fan", [fanout](i64) { return std::views::iota(i64{0}, fanout); }));
}

// Runs explode() in a fresh child; returns the largest peak RSS (KiB) among it and its replicas.
long peak_rss_kib(i64 fanout, Form form) {
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  pt::ChildProcess child([&] {
    ::close(fds[0]);
    const std::uint64_t want = static_cast<std::uint64_t>(fanout) * static_cast<std::uint64_t>(fanout - 1) / 2;
    if (explode(fanout, form) != want) return 3;
    rusage self{}, kids{};
    ::getrusage(RUSAGE_SELF, &self);
    ::getrusage(RUSAGE_CHILDREN, &kids);
    const long v = std::max(self.ru_maxrss, kids.ru_maxrss);
    return ::write(fds[1], &v, sizeof v) == static_cast<ssize_t>(sizeof v) ? 0 : 4;
  });
  ::close(fds[1]);
  long v = 0;
  const bool ok = child.succeeded_within(std::chrono::seconds(100));
  const bool got = ::read(fds[0], &v, sizeof v) == static_cast<ssize_t>(sizeof v);
  ::close(fds[0]);
  REQUIRE(ok);
  REQUIRE(got);
  return v;
}

// Whether the peak RSS of the large run is flat: within 20 % of the small run's. Buffering the
// extra items would take ~160 MB (20 M) or ~1.6 GB (200 M) of 8-byte items. A release build stays
// at one figure (4 416 KiB for 1 M and for 200 M items); under clang 19's ASan the peak grows by a
// few MiB, slower than the item count (15.8 -> 18.2 MiB at 20 M, -> 20.0 MiB at 200 M; the same
// with ASAN_OPTIONS=quarantine_size_mb=0), the sanitizer runtime's own: there, 20 % or 16 MiB.
bool flat(long small_kib, long large_kib) {
  double slack = 0.2 * static_cast<double>(small_kib);
#if defined(PROCFLOW_SANITIZED)
  slack = std::max(slack, 16.0 * 1024);
#endif
  return static_cast<double>(large_kib) <= static_cast<double>(small_kib) + slack;
}

// PROCFLOW_FANOUT overrides the 200 M of the large run (e.g. 1000000000 for 1 G).
i64 large_fanout() {
  const char* env = std::getenv("PROCFLOW_FANOUT");
  return env ? std::atoll(env) : 200'000'000;
}

}  // namespace

TEST_CASE("one input fanning out 1 M -> 20 M items keeps peak RSS flat (emitter and range)") {
  for (const Form form : {Form::emitter, Form::range}) {
    CAPTURE(form == Form::emitter ? "emitter" : "range");
    const long small = peak_rss_kib(1'000'000, form);
    const long large = peak_rss_kib(20'000'000, form);
    MESSAGE("peak RSS 1 M: " << small << " KiB, 20 M: " << large << " KiB");
    CHECK(flat(small, large));
  }
}

TEST_CASE("one input fanning out 200 M items through a process boundary") {
  const long small = peak_rss_kib(1'000'000, Form::emitter);
  const long large = peak_rss_kib(large_fanout(), Form::emitter);
  MESSAGE("peak RSS 1 M: " << small << " KiB, " << large_fanout() << ": " << large << " KiB");
  CHECK(flat(small, large));
}

TEST_CASE("ordered: outputs of one input span many slots and keep their order") {
  auto got = pf::pipeline("ordered fan", pf::ordered)
                 .source("few", [i = 0]() mutable -> std::optional<i64> {
                   if (i == 3) return std::nullopt;
                   return i++;
                 })
                 .flat_map<i64>("fan",
                                [](i64 x, pf::emitter<i64>& emit) {
                                  for (i64 k = 0; k < 100'000; ++k) emit(x * 100'000 + k);
                                },
                                pf::replicas(2))
                 .map("id", [](i64 x) { return x; }, pf::own_process, pf::replicas(2))
                 .collect()
                 .run()
                 .value;
  REQUIRE(got.size() == 300'000);
  bool in_order = true;
  for (std::size_t k = 0; k < got.size(); ++k) in_order = in_order && got[k] == static_cast<i64>(k);
  CHECK(in_order);
}

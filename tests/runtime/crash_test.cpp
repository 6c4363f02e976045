// Checks issue 8 "crash names its item", "watchdog" and the crash matrix, through run():
//  - {throw, segfault, abort, _exit(0), _exit(1), std::terminate} x {at start, first item,
//    mid-stream, blocked on a full output ring, during the end-of-stream drain} x {source, map,
//    reduce}: run() throws the right stage_error (stage, cause, signal or exit code, and the item
//    or the item range of the batch the replica had in hand), and leaves no child, no new
//    /dev/shm entry and no new fd;
//  - the watchdog kills a replica stuck in a batch and names the batch; a replica waiting for
//    input is never killed by it.
// Every case runs in a child of the test (support/isolated.hpp) whose timeout is the "within a
// second" bound with slack for a loaded machine: a hang fails the case by name.
#include "support/child_process.hpp"
#include "support/isolated.hpp"

#include <procflow/detail/sanitizers.hpp>
#include <procflow/procflow.hpp>

#include <doctest/doctest.h>

#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>

namespace pf = procflow;
namespace pt = procflow::test;
using i64 = std::int64_t;
using cause = pf::stage_error::cause;
using namespace std::chrono_literals;

namespace {

// No core files from the replicas this file crashes (inherited through fork).
const bool no_core_dumps = [] {
  rlimit none{0, 0};
  ::setrlimit(RLIMIT_CORE, &none);
  return true;
}();

enum class Fault { throw_, segfault, abort_, exit0, exit1, terminate };
enum class Moment { start, first_item, mid_stream, blocked, drain };
enum class Where { source, map, reduce };

constexpr Fault faults[] = {Fault::throw_, Fault::segfault, Fault::abort_, Fault::exit0, Fault::exit1, Fault::terminate};
constexpr Moment moments[] = {Moment::start, Moment::first_item, Moment::mid_stream, Moment::blocked, Moment::drain};
constexpr Where places[] = {Where::source, Where::map, Where::reduce};

const char* name(Fault f) {
  switch (f) {
    case Fault::throw_: return "throw";
    case Fault::segfault: return "segfault";
    case Fault::abort_: return "abort";
    case Fault::exit0: return "_exit(0)";
    case Fault::exit1: return "_exit(1)";
    case Fault::terminate: return "std::terminate";
  }
  return "?";
}
const char* name(Moment m) {
  switch (m) {
    case Moment::start: return "at start";
    case Moment::first_item: return "first item";
    case Moment::mid_stream: return "mid-stream";
    case Moment::blocked: return "blocked on a full output ring";
    case Moment::drain: return "end-of-stream drain";
  }
  return "?";
}
const char* stage_name(Where w) { return w == Where::source ? "gen" : w == Where::map ? "m" : "sum"; }

constexpr i64 items = 2000;
// Moment::blocked: the reduce sleeps on every item below slow_below, so every ring upstream of
// it fills (12 slots of 256 bytes hold a few hundred items) and the source and the maps block on
// a full output ring; the fault comes at item blocked_item, after they had to wait.
constexpr i64 slow_below = 500;
constexpr i64 blocked_item = 700;

struct Case {
  Fault fault;
  Moment moment;
  Where where;
};

// The source position of the item the faulty stage fails on (the source: the item it would
// produce next), or -1 for Moment::start (the first call in each of the stage's processes).
i64 fault_item(const Case& c) {
  switch (c.moment) {
    case Moment::start: return -1;
    case Moment::first_item: return c.where == Where::source ? 1 : 0;
    case Moment::mid_stream: return items / 2;
    case Moment::blocked: return blocked_item;
    case Moment::drain: return c.where == Where::source ? items : items - 1;  // the source: instead of ending
  }
  return -1;
}

bool fault_here(const Case& c, Where w, i64 item, i64 call) {
  if (c.where != w) return false;
  return c.moment == Moment::start ? call == 0 : item == fault_item(c);
}

void inject(Fault f) {
  switch (f) {
    case Fault::throw_: throw std::runtime_error("injected fault");
    case Fault::segfault: {
      volatile int* volatile null = nullptr;
      *null = 1;
      break;
    }
    case Fault::abort_: std::abort();
    case Fault::exit0: ::_exit(0);
    case Fault::exit1: ::_exit(1);
    case Fault::terminate: std::terminate();
  }
}

std::size_t open_fds() {
  std::size_t n = 0;
  std::error_code ec;
  for (std::filesystem::directory_iterator it("/proc/self/fd", ec), end; !ec && it != end; it.increment(ec)) ++n;
  return n;
}

// Two replicas per stage, except when the reduce is the faulty stage: then one map and one
// reduce replica, so that the stream the reduce receives is in source order and the positions
// it reports (positions in its input stream, see stage_error::item_seq) are source positions the
// test can check.
i64 run_case(const Case& c) {
  const std::uint32_t n = c.where == Where::reduce ? 1 : 2;
  return pf::pipeline("crash", pf::batch_bytes(256), pf::ring_slots(2))
      .source("gen", [c, i = i64{0}, calls = i64{0}]() mutable -> std::optional<i64> {
        if (fault_here(c, Where::source, i, calls++)) inject(c.fault);
        if (i >= items) return std::nullopt;
        return i++;
      })
      .map("m", [c](i64 x) {
        static i64 calls = 0;
        if (fault_here(c, Where::map, x, calls++)) inject(c.fault);
        return x;
      }, pf::replicas(n))
      .reduce("sum", i64{0}, [c](i64 acc, i64 x) {
        static i64 calls = 0;
        if (c.moment == Moment::blocked && x < slow_below) std::this_thread::sleep_for(1ms);
        if (fault_here(c, Where::reduce, x, calls++)) inject(c.fault);
        return acc + x;
      }, std::plus<>{}, pf::replicas(n), pf::own_process)
      .run()
      .value;
}

void check_case(const Case& c) {
  REQUIRE(no_core_dumps);
  // The replicas would inherit doctest's crash handlers (they keep the host's dispositions for
  // these): a plain program's defaults instead, so a crash is a bare signal death.
  for (const int s : {SIGSEGV, SIGABRT, SIGBUS, SIGFPE, SIGILL}) ::signal(s, SIG_DFL);
  const auto shm_before = pt::dev_shm_entries();
  const std::size_t fds_before = open_fds();
  std::optional<pf::stage_error> error;
  try {
    const i64 sum = run_case(c);
    FAIL_CHECK("run() returned ", sum, " instead of failing");
  } catch (const pf::stage_error& e) {
    error = e;
  }
  CHECK(pt::count_children() == 0);
  CHECK(pt::dev_shm_entries() == shm_before);
  CHECK(open_fds() == fds_before);
  REQUIRE(error.has_value());
  const pf::stage_error& e = *error;
  INFO("what(): ", std::string(e.what()));
  CHECK(e.stage() == stage_name(c.where));
  CHECK(!e.in_supervisor());
  const i64 item = fault_item(c);
  switch (c.fault) {
    case Fault::throw_:
      CHECK(e.kind() == cause::exception);
      CHECK(e.message() == "injected fault");
      if (c.where != Where::source && item >= 0) {
        CHECK(e.has_item());
        CHECK(e.item_seq() == static_cast<std::uint64_t>(item));
      }
      return;
    case Fault::segfault:
#if defined(PROCFLOW_ASAN)
      CHECK((e.kind() == cause::signal || e.kind() == cause::exit));  // ASan reports the SEGV and exits
#else
      CHECK(e.kind() == cause::signal);
      CHECK(e.signal_number() == SIGSEGV);
#endif
      break;
    case Fault::abort_:
    case Fault::terminate:
      CHECK(e.kind() == cause::signal);
      CHECK(e.signal_number() == SIGABRT);
      break;
    case Fault::exit0:
    case Fault::exit1:
      CHECK(e.kind() == cause::exit);
      CHECK(e.exit_code() == (c.fault == Fault::exit0 ? 0 : 1));
      break;
  }
  // Died without a record: the batch it had in hand names the item (map and reduce run batches;
  // the source is reported with how many items it had produced).
  if (c.where == Where::source) {
    CHECK(std::string(e.what()).find("while producing items") != std::string::npos);
  } else {
    REQUIRE(e.has_item_range());
    CHECK(std::string(e.what()).find("items [") != std::string::npos);
    if (item >= 0) {
      CHECK(e.item_range_first() <= static_cast<std::uint64_t>(item));
      CHECK(static_cast<std::uint64_t>(item) < e.item_range_last());
    }
  }
}

}  // namespace

TEST_CASE("crash matrix: every fault at every moment in every stage gives the right error and leaves nothing") {
  for (const Where w : places)
    for (const Moment m : moments)
      for (const Fault f : faults) {
        const Case c{f, m, w};
        const std::string what = std::string(name(f)) + " / " + name(m) + " / " + stage_name(w);
        pt::run_isolated(what, 30s, [&] { check_case(c); });
      }
}

TEST_CASE("the watchdog kills a replica stuck in a batch and names the batch; clean") {
  pt::run_isolated("watchdog", 30s, [] {
    const auto shm_before = pt::dev_shm_entries();
    const std::size_t fds_before = open_fds();
    std::optional<pf::stage_error> error;
    try {
      pf::pipeline("stuck", pf::batch_bytes(256))
          .source("n", pf::iota<i64>(0, 5000))
          .map("m", [](i64 x) {
            if (x == 3000) ::pause();  // hangs (the watchdog's SIGKILL ends it)
            return x;
          }, pf::replicas(2), pf::watchdog(300ms))
          .reduce("sum", i64{0}, std::plus<>{}, std::plus<>{})
          .run();
    } catch (const pf::stage_error& e) {
      error = e;
    }
    CHECK(pt::count_children() == 0);
    CHECK(pt::dev_shm_entries() == shm_before);
    CHECK(open_fds() == fds_before);
    REQUIRE(error.has_value());
    INFO("what(): ", std::string(error->what()));
    CHECK(error->kind() == cause::timeout);
    CHECK(error->stage() == "m");
    REQUIRE(error->has_item_range());
    CHECK(error->item_range_first() <= 3000);
    CHECK(3000 < error->item_range_last());
    CHECK(std::string(error->what()).find("watchdog") != std::string::npos);
  });
}

TEST_CASE("the watchdog never kills a replica that waits for input, nor one whose batches are each quick") {
  pt::run_isolated("watchdog idle", 30s, [] {
    const auto r = pf::pipeline("slow source", pf::watchdog(100ms))
                       .source("gen", [i = 0]() mutable -> std::optional<i64> {
                         if (i >= 3) return std::nullopt;
                         std::this_thread::sleep_for(300ms);  // the map waits 3 x 300 ms for input
                         return i++;
                       })
                       .map("m", [](i64 x) { return x + 1; }, pf::replicas(2))
                       .reduce("sum", i64{0}, std::plus<>{}, std::plus<>{})
                       .run();
    CHECK(r.value == 6);
  });
}

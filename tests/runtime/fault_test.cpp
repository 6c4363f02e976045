// Checks SPEC §4 (faults and termination) for the policy `fail` (the default), through run():
// user code that throws (in a map, a generator source, a reduce fold, a supervisor-side combine),
// a replica killed by a signal (std::abort) and a replica that exits mid-stream (_exit(3),
// exit(0)). Each run() must throw procflow::stage_error naming the stage, the replica, its pid,
// the item (when known) and the cause, and leave no child process and /dev/shm as it was. A
// normal run afterwards must still work. Every case runs in a child of the test under a watchdog
// (support/isolated.hpp): a run() that hangs instead of reporting fails naming the case.
#include "support/child_process.hpp"
#include "support/isolated.hpp"

#include <procflow/procflow.hpp>

#include <doctest/doctest.h>

#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>

namespace pf = procflow;
namespace pt = procflow::test;
using i64 = std::int64_t;
using cause = pf::stage_error::cause;

namespace {

constexpr i64 n = 1'000'000;
constexpr i64 k = 123'457;  // the failing item

// No core files from the replicas this file makes abort (inherited through fork).
const bool no_core_dumps = [] {
  rlimit none{0, 0};
  ::setrlimit(RLIMIT_CORE, &none);
  return true;
}();

// Runs one case in a child process; a case that has not finished after 60 s hangs (each takes
// well under a second, a few under ASan).
void isolated(const std::function<void()>& body) { pt::run_isolated(std::chrono::seconds(60), body); }

// Runs `run`, which must throw stage_error; checks cleanup and returns the error.
template <class Run>
pf::stage_error expect_stage_error(Run&& run) {
  REQUIRE(no_core_dumps);
  const std::set<std::string> shm_before = pt::dev_shm_entries();
  std::optional<pf::stage_error> error;
  try {
    run();
  } catch (const pf::stage_error& e) {
    error = e;
  }
  CHECK(pt::count_children() == 0);
  CHECK(pt::dev_shm_entries() == shm_before);
  REQUIRE_MESSAGE(error.has_value(), "run() returned instead of throwing stage_error");
  INFO("what(): ", error->what());
  CHECK(error->pid() > 0);
  CHECK(error->pid() != ::getpid());
  return *error;
}

i64 boom_throw(i64 x) {
  if (x == k) throw std::runtime_error("bad item " + std::to_string(x));
  return x;
}

}  // namespace

TEST_CASE("user code throwing in a replicated map: stage_error names stage, replica, pid, item and exception") {
  SUBCASE("map fused with the source (iota chunks), replicas(2)") { isolated([&] {
    const auto e = expect_stage_error([] {
      pf::pipeline("faulty")
          .source("numbers", pf::iota<i64>(0, n))
          .map("boom", boom_throw, pf::replicas(2))
          .filter("all", [](i64) { return true; })
          .reduce("sum", i64{0}, std::plus<>{}, std::plus<>{})
          .run();
    });
    INFO("what(): ", e.what());
    CHECK(e.kind() == cause::exception);
    CHECK(e.stage() == "boom");
    CHECK(e.replica() < 2);
    CHECK(e.has_item());
    CHECK(e.item_seq() == static_cast<std::uint64_t>(k));
    CHECK(e.exception_type().find("runtime_error") != std::string::npos);
    CHECK(e.message() == "bad item 123457");
    CHECK(std::string(e.what()).find("boom") != std::string::npos);
    CHECK(std::string(e.what()).find("bad item 123457") != std::string::npos);
  }); }
  SUBCASE("map in processes of its own, replicas(2)") { isolated([&] {
    const auto e = expect_stage_error([] {
      pf::pipeline("faulty")
          .source("numbers", pf::iota<i64>(0, n))
          .map("boom", boom_throw, pf::replicas(2), pf::own_process)
          .reduce("sum", i64{0}, std::plus<>{}, std::plus<>{}, pf::own_process)
          .run();
    });
    CHECK(e.kind() == cause::exception);
    CHECK(e.stage() == "boom");
    CHECK(e.replica() < 2);
    CHECK(e.has_item());
    // Only maps between the source and the failing stage: the item's source position is known.
    CHECK(e.item_seq() == static_cast<std::uint64_t>(k));
    CHECK(e.exception_type().find("runtime_error") != std::string::npos);
    CHECK(e.message() == "bad item 123457");
  }); }
  SUBCASE("a later stage, after a filter, in processes of its own") { isolated([&] {
    const auto e = expect_stage_error([] {
      pf::pipeline("faulty", pf::fusion(false))
          .source("numbers", pf::iota<i64>(0, n))
          .filter("odd", [](i64 x) { return x % 2 == 1; }, pf::replicas(2))
          .map("boom", boom_throw, pf::replicas(2))
          .collect()
          .run();
    });
    CHECK(e.kind() == cause::exception);
    CHECK(e.stage() == "boom");
    CHECK(e.replica() < 2);
    CHECK(e.has_item());
    CHECK(e.message() == "bad item 123457");
  }); }
  SUBCASE("an exception that is not a std::exception") { isolated([&] {
    const auto e = expect_stage_error([] {
      pf::pipeline("faulty")
          .source("numbers", pf::iota<i64>(0, 1000))
          .map("boom", [](i64 x) {
            if (x == 500) throw 42;
            return x;
          }, pf::replicas(2))
          .collect()
          .run();
    });
    CHECK(e.kind() == cause::exception);
    CHECK(e.stage() == "boom");
    CHECK(e.exception_type() == "int");
    CHECK(e.item_seq() == 500);
  }); }
}

TEST_CASE("a replica killed by a signal (std::abort on item k): cause::signal, SIGABRT, the stage named") {
  auto abort_on_k = [](i64 x) {
    if (x == k) {
      // doctest's crash handler is inherited through fork; without this it would print a
      // "test case CRASHED" report from the replica before re-raising. The replica still dies
      // by SIGABRT either way.
      ::signal(SIGABRT, SIG_DFL);
      std::abort();
    }
    return x;
  };
  SUBCASE("fused after the source, replicas(2)") { isolated([&] {
    const auto e = expect_stage_error([&] {
      pf::pipeline("crashy")
          .source("numbers", pf::iota<i64>(0, n))
          .map("crash", abort_on_k, pf::replicas(2))
          .filter("all", [](i64) { return true; })
          .reduce("sum", i64{0}, std::plus<>{}, std::plus<>{})
          .run();
    });
    CHECK(e.kind() == cause::signal);
    CHECK(e.signal_number() == SIGABRT);
    CHECK(e.stage() == "crash");
    CHECK(e.replica() < 2);
  }); }
  SUBCASE("own processes, replicas(2), generator source") { isolated([&] {
    const auto e = expect_stage_error([&] {
      pf::pipeline("crashy")
          .source("gen", [i = i64{0}]() mutable -> std::optional<i64> {
            if (i >= n) return std::nullopt;
            return i++;
          })
          .map("crash", abort_on_k, pf::replicas(2), pf::own_process)
          .collect()
          .run();
    });
    CHECK(e.kind() == cause::signal);
    CHECK(e.signal_number() == SIGABRT);
    CHECK(e.stage() == "crash");
    CHECK(e.replica() < 2);
  }); }
}

TEST_CASE("a replica exiting mid-stream: cause::exit with its status") {
  SUBCASE("_exit(3) in a fused map") { isolated([&] {
    const auto e = expect_stage_error([] {
      pf::pipeline("exity")
          .source("numbers", pf::iota<i64>(0, n))
          .map("quit", [](i64 x) {
            if (x == k) ::_exit(3);
            return x;
          }, pf::replicas(2))
          .reduce("sum", i64{0}, std::plus<>{}, std::plus<>{})
          .run();
    });
    CHECK(e.kind() == cause::exit);
    CHECK(e.exit_code() == 3);
    CHECK(e.stage() == "quit");
    CHECK(e.replica() < 2);
  }); }
  SUBCASE("exit(0) in a map in its own processes") { isolated([&] {
    const auto e = expect_stage_error([] {
      pf::pipeline("exity")
          .source("numbers", pf::iota<i64>(0, n))
          .map("quit", [](i64 x) {
            if (x == k) std::exit(0);
            return x;
          }, pf::replicas(2), pf::own_process)
          .collect()
          .run();
    });
    CHECK(e.kind() == cause::exit);
    CHECK(e.exit_code() == 0);
    CHECK(e.stage() == "quit");
    CHECK(e.replica() < 2);
  }); }
}

TEST_CASE("a throwing generator source") {
  isolated([&] {
    const auto e = expect_stage_error([] {
      pf::pipeline("bad_source")
          .source("gen", [i = 0]() mutable -> std::optional<int> {
            if (i == 5000) throw std::invalid_argument("generator broke at 5000");
            return i++;
          })
          .map("twice", [](int x) { return 2 * x; }, pf::replicas(2))
          .collect()
          .run();
    });
    CHECK(e.kind() == cause::exception);
    CHECK(e.stage() == "gen");
    CHECK(e.replica() == 0);
    CHECK(e.exception_type().find("invalid_argument") != std::string::npos);
    CHECK(e.message() == "generator broke at 5000");
  });
}

TEST_CASE("a throwing reduce fold") {
  auto fold = [](i64 acc, i64 x) {
    if (x == k) throw std::domain_error("fold refused " + std::to_string(x));
    return acc + x;
  };
  SUBCASE("fused with the source, replicas(2)") { isolated([&] {
    const auto e = expect_stage_error([&] {
      pf::pipeline("bad_fold").source("numbers", pf::iota<i64>(0, n)).reduce("sum", i64{0}, fold, std::plus<>{}, pf::replicas(2)).run();
    });
    CHECK(e.kind() == cause::exception);
    CHECK(e.stage() == "sum");
    CHECK(e.has_item());
    CHECK(e.item_seq() == static_cast<std::uint64_t>(k));
    CHECK(e.exception_type().find("domain_error") != std::string::npos);
    CHECK(e.message() == "fold refused 123457");
  }); }
  SUBCASE("in processes of its own behind a map, ordered") { isolated([&] {
    const auto e = expect_stage_error([&] {
      pf::pipeline("bad_fold", pf::ordered)
          .source("numbers", pf::iota<i64>(0, n))
          .map("id", [](i64 x) { return x; }, pf::replicas(2))
          .reduce("sum", i64{0}, fold, std::plus<>{}, pf::replicas(2), pf::own_process)
          .run();
    });
    CHECK(e.kind() == cause::exception);
    CHECK(e.stage() == "sum");
    CHECK(e.replica() < 2);
    CHECK(e.message() == "fold refused 123457");
  }); }
}

TEST_CASE("a throwing reduce_by_key key function is reported against the reduce_by_key stage") {
  auto key = [](i64 x) {
    if (x == k) throw std::runtime_error("no key for " + std::to_string(x));
    return x % 7;
  };
  SUBCASE("fused with the map") { isolated([&] {
    const auto e = expect_stage_error([&] {
      pf::pipeline("bad_key")
          .source("numbers", pf::iota<i64>(0, n))
          .map("id", [](i64 x) { return x; }, pf::replicas(2))
          .reduce_by_key("groups", key, i64{0}, std::plus<>{}, std::plus<>{})
          .run();
    });
    CHECK(e.kind() == cause::exception);
    CHECK(e.stage() == "groups");
    CHECK(e.message() == "no key for 123457");
  }); }
  SUBCASE("in processes of its own (the key picks the replica, so the producer calls it)") { isolated([&] {
    const auto e = expect_stage_error([&] {
      pf::pipeline("bad_key")
          .source("numbers", pf::iota<i64>(0, n))
          .map("id", [](i64 x) { return x; }, pf::replicas(2))
          .reduce_by_key("groups", key, i64{0}, std::plus<>{}, std::plus<>{}, pf::replicas(2), pf::own_process)
          .run();
    });
    CHECK(e.kind() == cause::exception);
    CHECK(e.message() == "no key for 123457");
    // The failing code is the key function of "groups"; naming the map that happened to call it
    // sends the user to the wrong stage.
    CHECK(e.stage() == "groups");
  }); }
}

TEST_CASE("a throwing combine (run by the supervisor) is a stage_error naming the reduce, and still cleans up") {
  isolated([&] {
  const std::set<std::string> shm_before = pt::dev_shm_entries();
  for (const bool ordered : {false, true}) {
    CAPTURE(ordered);
    auto combine = [](i64 a, i64 b) -> i64 {
      if (b != 0) throw std::overflow_error("combine refused");
      return a + b;
    };
    // The rule for errors raised in the caller's process (see procflow::stage_error): the
    // terminal stage is named, "in the supervisor", and the original stays nested.
    bool thrown = false;
    try {
      (ordered ? pf::pipeline("bad_combine", pf::ordered) : pf::pipeline("bad_combine"))
          .source("numbers", pf::iota<i64>(1, 100'000))
          .reduce("sum", i64{0}, std::plus<>{}, combine, pf::replicas(2))
          .run();
    } catch (const pf::stage_error& e) {
      thrown = true;
      CHECK(e.stage() == "sum");
      CHECK(e.in_supervisor());
      CHECK(e.exception_type() == "std::overflow_error");
      CHECK(std::string(e.what()).find("combine refused") != std::string::npos);
      CHECK_THROWS_AS(std::rethrow_if_nested(e), std::overflow_error);  // the original, nested
    }
    CHECK(thrown);
    CHECK(pt::count_children() == 0);
  }
  CHECK(pt::dev_shm_entries() == shm_before);
  });
}

TEST_CASE("after failures a normal run() in the same process still works") {
  isolated([&] {
    const std::set<std::string> shm_before = pt::dev_shm_entries();
    // The cases above each run in a child of their own: fail here first, in this process, in a
    // replica and in the caller's process (a combine).
    CHECK_THROWS(pf::pipeline("faulty").source("numbers", pf::iota<i64>(0, n)).map("boom", boom_throw, pf::replicas(2)).collect().run());
    CHECK_THROWS(pf::pipeline("bad_combine")
                     .source("numbers", pf::iota<i64>(1, 1000))
                     .reduce("sum", i64{0}, std::plus<>{}, [](i64, i64 b) -> i64 { if (b != 0) throw std::overflow_error("no"); return 0; },
                             pf::replicas(2))
                     .run());
    auto r = pf::pipeline("healthy")
                 .source("numbers", pf::iota<i64>(0, n))
                 .map("boom", [](i64 x) { return x * 2; }, pf::replicas(2))
                 .filter("all", [](i64) { return true; }, pf::own_process)
                 .reduce("sum", i64{0}, std::plus<>{}, std::plus<>{})
                 .run();
    CHECK(r.value == n * (n - 1));
    auto c = pf::pipeline("healthy_gen")
                 .source("gen", [i = 0]() mutable -> std::optional<std::string> {
                   if (i >= 1000) return std::nullopt;
                   return std::to_string(i++);
                 })
                 .map("twice", [](const std::string& s) { return s + s; }, pf::replicas(2))
                 .collect(pf::ordered)
                 .run();
    REQUIRE(c.value.size() == 1000);
    CHECK(c.value[999] == "999999");
    CHECK(pt::count_children() == 0);
    CHECK(pt::dev_shm_entries() == shm_before);
  });
}

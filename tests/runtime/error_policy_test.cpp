// Checks the error policies of include/procflow/policy.hpp through run(): pf::skip (items whose
// stage function throws are counted, set aside and the first ones kept as dead letters; the run
// goes on) on a map, a filter, a flat_map (what it emitted for the skipped item is dropped), a
// reduce fold, and as a pipeline default; pf::retry(n, backoff) (exact result, retries counted),
// then fail (stage_error naming the item) or then skip; a crash is never skipped. Every case runs
// in a child of the test under a watchdog (support/isolated.hpp).
#include "support/child_process.hpp"
#include "support/isolated.hpp"

#include <procflow/procflow.hpp>

#include <doctest/doctest.h>

#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace pf = procflow;
namespace pt = procflow::test;
using i64 = std::int64_t;
using namespace std::chrono_literals;

namespace {

constexpr i64 n = 10000;

const bool no_core_dumps = [] {
  rlimit none{0, 0};
  ::setrlimit(RLIMIT_CORE, &none);
  return true;
}();

void isolated(const char* what, const std::function<void()>& body) { pt::run_isolated(what, 60s, body); }

i64 sum_except_multiples(i64 m) {
  i64 s = 0;
  for (i64 x = 0; x < n; ++x)
    if (x % m != 0) s += x;
  return s;
}

const pf::stage_report& stage(const pf::run_report& r, const std::string& name) {
  for (const auto& s : r.stages)
    if (s.name == name) return s;
  throw std::runtime_error("no stage " + name);
}

}  // namespace

TEST_CASE("skip on a map: bad items are counted and set aside, the first kept as dead letters, the run goes on") {
  isolated("skip map", [] {
    const auto r = pf::pipeline("skip")
                       .source("n", pf::iota<i64>(0, n))
                       .map("m", [](i64 x) {
                         if (x % 100 == 0) throw std::invalid_argument("bad item " + std::to_string(x));
                         return x;
                       }, pf::replicas(2), pf::skip)
                       .reduce("sum", i64{0}, std::plus<>{}, std::plus<>{})
                       .run();
    CHECK(r.value == sum_except_multiples(100));
    CHECK(stage(r.report, "m").items_skipped == n / 100);
    CHECK(stage(r.report, "m").items_out == n - n / 100);
    REQUIRE(!r.report.dead_letters.empty());
    CHECK(r.report.dead_letters.size() <= 2 * pf::dead_letters_per_replica);
    for (const auto& d : r.report.dead_letters) {
      CHECK(d.stage == "m");
      CHECK(d.item_seq % 100 == 0);  // 1:1 lineage from the source: source positions
      CHECK(d.message == "bad item " + std::to_string(d.item_seq));
      CHECK(d.exception_type == "std::invalid_argument");
    }
    CHECK(r.report.to_string().find("dead letter: stage 'm'") != std::string::npos);
  });
}

TEST_CASE("skip as the pipeline default: filter, flat_map (its partial output dropped) and reduce fold") {
  isolated("skip default", [] {
    const auto r = pf::pipeline("skip all", pf::skip)
                       .source("n", pf::iota<i64>(0, n))
                       .filter("f", [](i64 x) {
                         if (x % 7 == 0) throw std::runtime_error("filter");
                         return true;
                       })
                       .flat_map<i64>("fm", [](i64 x, pf::emitter<i64>& emit) {
                         emit(x);
                         if (x % 11 == 0) throw std::runtime_error("flat_map");  // after emitting: dropped
                         emit(x);
                       }, pf::replicas(2))
                       .reduce("sum", i64{0}, [](i64 acc, i64 x) {
                         if (x % 13 == 0) throw std::runtime_error("fold");
                         return acc + x;
                       }, std::plus<>{})
                       .run();
    i64 expected = 0;
    i64 skipped_f = 0, skipped_fm = 0, skipped_fold = 0;
    for (i64 x = 0; x < n; ++x) {
      if (x % 7 == 0) { ++skipped_f; continue; }
      if (x % 11 == 0) { ++skipped_fm; continue; }
      if (x % 13 == 0) { skipped_fold += 2; continue; }  // both copies fail in the fold
      expected += 2 * x;
    }
    CHECK(r.value == expected);
    CHECK(stage(r.report, "f").items_skipped == static_cast<std::uint64_t>(skipped_f));
    CHECK(stage(r.report, "fm").items_skipped == static_cast<std::uint64_t>(skipped_fm));
    CHECK(stage(r.report, "sum").items_skipped == static_cast<std::uint64_t>(skipped_fold));
  });
}

TEST_CASE("a sink in the caller's process: a policy of its own is refused by name, the pipeline's is noted; in a replica it applies") {
  isolated("caller sink policy", [] {
    auto declare = [](auto... opts) {
      return pf::pipeline("sinks").source("n", pf::iota<i64>(0, n)).sink("out", [](i64 x) {
        if (x % 7 == 0) throw std::runtime_error("sink");
      }, opts...);
    };
    // Its items reach it outside any replica's guard: refused, not silently ignored.
    try {
      declare(pf::skip).run();
      FAIL("a skip on a caller-side sink was accepted");
    } catch (const std::invalid_argument& e) {
      const std::string what = e.what();
      CHECK(what.find("'out'") != std::string::npos);
      CHECK(what.find("own_process") != std::string::npos);
    }
    CHECK_THROWS_AS(declare(pf::retry(2, 0ms)).run(), std::invalid_argument);
    // In a replica of its own the policy applies.
    const auto r = declare(pf::skip, pf::own_process).run();
    CHECK(stage(r.report, "out").items_skipped == static_cast<std::uint64_t>((n + 6) / 7));
    // The pipeline's default reaches every stage but this one: the report says so.
    const auto d = pf::pipeline("sinks", pf::skip).source("n", pf::iota<i64>(0, n)).sink("out", [](i64) {}).run();
    CHECK(stage(d.report, "out").note.find("does not apply") != std::string::npos);
  });
}

TEST_CASE("retry(n, backoff): an item that fails twice then succeeds gives the exact result; retries are counted") {
  isolated("retry", [] {
    const auto r = pf::pipeline("retry")
                       .source("n", pf::iota<i64>(0, 2000))
                       .map("m", [tries = std::map<i64, int>{}](i64 x) mutable {
                         if (x % 100 == 0 && tries[x]++ < 2) throw std::runtime_error("flaky");
                         return x;
                       }, pf::replicas(2), pf::retry(3, 1ms))
                       .reduce("sum", i64{0}, std::plus<>{}, std::plus<>{})
                       .run();
    CHECK(r.value == 1999 * 2000 / 2);
    CHECK(stage(r.report, "m").retries == 2 * 20);
    CHECK(stage(r.report, "m").items_skipped == 0);
    CHECK(r.report.dead_letters.empty());
  });
}

TEST_CASE("retry then fail names the item; retry then skip sets it aside") {
  isolated("retry then fail", [] {
    std::optional<pf::stage_error> error;
    try {
      pf::pipeline("retry fail")
          .source("n", pf::iota<i64>(0, 2000))
          .map("m", [](i64 x) {
            if (x == 777) throw std::runtime_error("always");
            return x;
          }, pf::replicas(2), pf::retry(2, 0ms))
          .reduce("sum", i64{0}, std::plus<>{}, std::plus<>{})
          .run();
    } catch (const pf::stage_error& e) {
      error = e;
    }
    REQUIRE(error.has_value());
    CHECK(error->stage() == "m");
    CHECK(error->has_item());
    CHECK(error->item_seq() == 777);
    CHECK(error->message() == "always");
    CHECK(pt::count_children() == 0);
  });
  isolated("retry then skip", [] {
    const auto r = pf::pipeline("retry skip")
                       .source("n", pf::iota<i64>(0, 2000))
                       .map("m", [](i64 x) {
                         if (x == 777) throw std::runtime_error("always");
                         return x;
                       }, pf::replicas(2), pf::retry(2, 0ms, pf::skip))
                       .reduce("sum", i64{0}, std::plus<>{}, std::plus<>{})
                       .run();
    CHECK(r.value == 1999 * 2000 / 2 - 777);
    CHECK(stage(r.report, "m").retries == 2);
    CHECK(stage(r.report, "m").items_skipped == 1);
    REQUIRE(r.report.dead_letters.size() == 1);
    CHECK(r.report.dead_letters[0].item_seq == 777);
  });
}

TEST_CASE("skip never hides a crash: a replica that aborts still fails the run") {
  isolated("skip crash", [] {
    REQUIRE(no_core_dumps);
    ::signal(SIGABRT, SIG_DFL);
    std::optional<pf::stage_error> error;
    try {
      pf::pipeline("crash")
          .source("n", pf::iota<i64>(0, 2000))
          .map("m", [](i64 x) {
            if (x == 1500) std::abort();
            return x;
          }, pf::replicas(2), pf::skip)
          .reduce("sum", i64{0}, std::plus<>{}, std::plus<>{})
          .run();
    } catch (const pf::stage_error& e) {
      error = e;
    }
    REQUIRE(error.has_value());
    CHECK(error->kind() == pf::stage_error::cause::signal);
    CHECK(error->signal_number() == SIGABRT);
    CHECK(pt::count_children() == 0);
  });
}

TEST_CASE("dead_letters_to(path): the run's dead letters as JSON lines; an unwritable path fails run() naming it") {
  isolated("dead letter file", [] {
    char dir_template[] = "/tmp/procflow_dead_XXXXXX";
    REQUIRE(::mkdtemp(dir_template) != nullptr);
    const std::string dir = dir_template;
    const std::string path = dir + "/dead.jsonl";
    const auto r = pf::pipeline("dl", pf::skip, pf::dead_letters_to(path))
                       .source("n", pf::iota<i64>(0, n))
                       .map("m", [](i64 x) {
                         if (x % 1000 == 7) throw std::invalid_argument("bad item " + std::to_string(x));
                         return x;
                       }, pf::replicas(2))
                       .reduce("sum", i64{0}, std::plus<>{}, std::plus<>{})
                       .run();
    REQUIRE(!r.report.dead_letters.empty());
    std::FILE* f = std::fopen(path.c_str(), "r");
    REQUIRE(f != nullptr);
    std::vector<std::string> lines;
    char buf[4096];
    while (std::fgets(buf, sizeof buf, f)) lines.emplace_back(buf);
    std::fclose(f);
    CHECK(lines.size() == r.report.dead_letters.size());
    for (std::size_t i = 0; i < lines.size() && i < r.report.dead_letters.size(); ++i) {
      const auto& d = r.report.dead_letters[i];
      CHECK(lines[i].find("\"stage\":\"m\"") != std::string::npos);
      CHECK(lines[i].find("\"item_seq\":" + std::to_string(d.item_seq)) != std::string::npos);
      CHECK(lines[i].find("\"message\":\"bad item " + std::to_string(d.item_seq) + "\"") != std::string::npos);
      CHECK(lines[i].find("\"exception_type\":\"std::invalid_argument\"") != std::string::npos);
    }
    std::remove(path.c_str());
    ::rmdir(dir.c_str());
    try {
      pf::pipeline("dl2", pf::skip, pf::dead_letters_to(dir + "/no/such/dir/dead.jsonl"))
          .source("n", pf::iota<i64>(0, 100))
          .map("m", [](i64 x) { return x; })
          .reduce("sum", i64{0}, std::plus<>{}, std::plus<>{})
          .run();
      FAIL("run() succeeded");
    } catch (const pf::system_error& e) {
      CHECK(std::string(e.what()).find("no/such/dir/dead.jsonl") != std::string::npos);
    }
  });
}

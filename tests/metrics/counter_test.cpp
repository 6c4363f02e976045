// Checks pf::counter (include/procflow/counter.hpp): named counters bumped in stage code are summed
// exactly per stage and per replica, kept apart per stage when stages share a process, counted
// in the caller's process too, sampled while the run goes on, and shown in the table, JSON, HTML
// and trace; past the fixed limits a clear error names the stage.
#include "support/cleanup_check.hpp"

#include <procflow/procflow.hpp>

#include <nlohmann/json.hpp>

#include <doctest/doctest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>

namespace pf = procflow;
namespace pt = procflow::test;
using i64 = std::int64_t;
using u64 = std::uint64_t;

namespace {

using CleanupCheck = pt::CleanupCheck;

u64 stage_counter(const pf::stage_report& s, const std::string& name) {
  for (const auto& c : s.counters)
    if (c.name == name) return c.value;
  FAIL("stage " << s.name << " has no counter '" << name << "'");
  return 0;
}

// The sum of `name` of stage `stage` over the replica rows.
u64 replica_sum(const pf::run_report& r, const std::string& stage, const std::string& name) {
  u64 sum = 0;
  for (const auto& row : r.replica_rows)
    for (const auto& c : row.counters)
      if (c.stage == stage && c.name == name) sum += c.value;
  return sum;
}

std::string read_file(const std::filesystem::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

TEST_CASE("named counters are summed exactly per stage and per replica, and shown in every output") {
  CleanupCheck cleanup;
  constexpr i64 n = 300'000;
  const auto trace_path = std::filesystem::temp_directory_path() / ("counter_test_trace_" + std::to_string(::getpid()) + ".json");
  auto r = pf::pipeline("counted", pf::trace(trace_path.string()), pf::sample_every(std::chrono::milliseconds(5)))
               .source("numbers", pf::iota<i64>(0, n))
               .map("parse", [](i64 x) {
                 pf::counter("seen").add();
                 if (x % 3 == 0) pf::counter("multiple of 3") += 1;
                 if (x % 7 == 0) pf::counter("weight").add(static_cast<u64>(x % 100));
                 return x;
               }, pf::replicas(2))
               .filter("keep", [](i64 x) {
                 const bool keep = x % 2 == 0;
                 if (!keep) pf::counter("seen").add();  // same name, another stage: counted apart
                 return keep;
               }, pf::own_process)
               .reduce("sum", i64{0}, std::plus<>{}, std::plus<>{})
               .run();
  u64 weight = 0;
  for (i64 x = 0; x < n; x += 7) weight += static_cast<u64>(x % 100);
  const pf::run_report& rep = r.report;
  INFO(rep.to_string(true));
  const auto& parse = rep.stages[1];
  const auto& keep = rep.stages[2];
  CHECK(stage_counter(parse, "seen") == static_cast<u64>(n));
  CHECK(stage_counter(parse, "multiple of 3") == static_cast<u64>((n + 2) / 3));
  CHECK(stage_counter(parse, "weight") == weight);
  CHECK(stage_counter(keep, "seen") == static_cast<u64>(n / 2));
  CHECK(parse.counters.size() == 3);
  CHECK(keep.counters.size() == 1);
  CHECK(rep.stages[0].counters.empty());
  // Per replica: the rows add up to the stage's sums.
  CHECK(replica_sum(rep, "parse", "seen") == static_cast<u64>(n));
  CHECK(replica_sum(rep, "parse", "weight") == weight);
  CHECK(replica_sum(rep, "keep", "seen") == static_cast<u64>(n / 2));
  // Sampled while running: the last sample (taken at the end) holds the totals; counts never go back.
  REQUIRE(!rep.samples.empty());
  u64 last_seen = 0;
  for (const auto& s : rep.samples)
    for (const auto& c : s.counters)
      if (c.stage == "parse" && c.name == "seen") {
        CHECK(c.value >= last_seen);
        last_seen = c.value;
      }
  CHECK(last_seen == static_cast<u64>(n));
  // Table, JSON, HTML, trace.
  CHECK(rep.to_string().find(fmt::format("counter parse 'seen': {}", n)) != std::string::npos);
  const auto j = nlohmann::json::parse(rep.to_json());
  CHECK(j.at("stages").at(1).at("counters").at("seen") == n);
  CHECK(j.at("stages").at(1).at("counters").at("multiple of 3") == (n + 2) / 3);
  CHECK(j.at("stages").at(2).at("counters").at("seen") == n / 2);
  u64 json_replica_sum = 0;
  for (const auto& row : j.at("replicas"))
    for (const auto& c : row.at("counters"))
      if (c.at("stage") == "parse" && c.at("name") == "seen") json_replica_sum += c.at("value").get<u64>();
  CHECK(json_replica_sum == static_cast<u64>(n));
  CHECK(j.at("samples").back().at("counters").size() == 4);
  const std::string html = rep.to_html();
  CHECK(html.find("<h2>Named counters</h2>") != std::string::npos);
  CHECK(html.find("<td>multiple of 3</td>") != std::string::npos);
  const auto trace = nlohmann::json::parse(read_file(trace_path));
  std::filesystem::remove(trace_path);
  bool track = false;
  for (const auto& e : trace.at("traceEvents"))
    if (e.at("name") == "counters: parse" && e.at("ph") == "C" && e.at("args").contains("seen")) track = true;
  CHECK(track);
}

// A sink in the caller's process counting beside a replica stage's per_replica handle: the
// declaration run() and start() share (start(): the sink runs on the pipeline's driver thread,
// which must count into the caller's table as run()'s calling thread does).
auto caller_side_counting(const char* name, i64 n, i64& stored) {
  return pf::pipeline(name)
      .source("numbers", pf::iota<i64>(0, n))
      .map("work", pf::per_replica([] {
        // The handle is made once per replica (after the fork) and bumped per item.
        return [hits = pf::counter("hits")](i64 x) mutable {
          hits.add();
          return x;
        };
      }), pf::replicas(2))
      .sink("store", [&stored](i64 x) {
        ++stored;
        pf::counter("stored").add();
        if (x % 2 == 0) pf::counter("even").add(2);
      });
}

TEST_CASE("a sink in the caller's process counts too, under run() and start(), and a handle kept by a per_replica factory") {
  CleanupCheck cleanup;
  constexpr i64 n = 10'000;
  for (const bool started : {false, true}) {
    CAPTURE(started);
    i64 stored = 0;
    const pf::run_report report = started ? caller_side_counting("started_caller_side", n, stored).start().wait().report
                                          : caller_side_counting("caller_side", n, stored).run().report;
    CHECK(stored == n);
    INFO(report.to_string(true));
    CHECK(stage_counter(report.stages[1], "hits") == static_cast<u64>(n));
    CHECK(stage_counter(report.stages[2], "stored") == static_cast<u64>(n));
    CHECK(stage_counter(report.stages[2], "even") == static_cast<u64>(n));
  }
}

TEST_CASE("past the fixed limits, and outside a run, counter() refuses with a clear error") {
  CleanupCheck cleanup;
  auto too_many = [] {
    return pf::pipeline("too_many")
        .source("numbers", pf::iota<i64>(0, 100))
        .map("greedy", [](i64 x) {
          for (std::size_t k = 0; k <= pf::counter::max_counters; ++k) pf::counter(fmt::format("c{}", k)).add();
          return x;
        })
        .reduce("sum", i64{0}, std::plus<>{}, std::plus<>{})
        .run();
  };
  try {
    too_many();
    FAIL("33 counters in one replica were accepted");
  } catch (const pf::stage_error& e) {
    CHECK(e.stage() == "greedy");
    CHECK(std::string(e.what()).find("at most 32 named counters") != std::string::npos);
    CHECK(std::string(e.what()).find("c32") != std::string::npos);
  }
  try {
    pf::pipeline("long_name")
        .source("numbers", pf::iota<i64>(0, 10))
        .map("verbose", [](i64 x) {
          pf::counter(std::string(48, 'x')).add();
          return x;
        })
        .reduce("sum", i64{0}, std::plus<>{}, std::plus<>{})
        .run();
    FAIL("a 48-byte name was accepted");
  } catch (const pf::stage_error& e) {
    CHECK(e.stage() == "verbose");
    CHECK(std::string(e.what()).find("at most 47 bytes") != std::string::npos);
  }
  CHECK_THROWS_WITH_AS(pf::counter("outside"), doctest::Contains("not outside a run"), std::logic_error);
}

TEST_CASE("named counters in thread mode: the same sums as in processes, from every kind of stage code") {
  CleanupCheck cleanup;
  static constexpr i64 n = 200'000;
  const auto declare = [&](bool generator) {
    auto source = [&] {
      if (!generator) return pf::pipeline("threads").source("numbers", pf::iota<i64>(0, n));
      return pf::pipeline("threads").source("numbers", pf::generate([i = i64{0}]() mutable -> std::optional<i64> {
        if (i == n) return std::nullopt;
        if (i % 1000 == 0) pf::counter("thousands").add();
        return i++;
      }));
    };
    return source()
        .map("parse", [](i64 x) {
          pf::counter("seen").add();
          if (x % 3 == 0) pf::counter("multiple of 3") += 1;
          return x;
        }, pf::replicas(2))
        .filter("keep", [](i64 x) {
          if (x % 2 != 0) pf::counter("dropped").add();
          return x % 2 == 0;
        }, pf::replicas(1))
        .sink("out", [](i64 x) {
          if (x % 10 == 0) pf::counter("tens").add();
        });
  };
  for (const bool generator : {false, true}) {
    CAPTURE(generator);
    const pf::run_report threads = declare(generator).run(pf::in_threads).report;
    const pf::run_report processes = declare(generator).run().report;
    INFO(threads.to_string(false));
    CHECK(stage_counter(threads.stages[1], "seen") == static_cast<u64>(n));
    CHECK(stage_counter(threads.stages[1], "multiple of 3") == static_cast<u64>((n + 2) / 3));
    CHECK(stage_counter(threads.stages[2], "dropped") == static_cast<u64>(n / 2));
    CHECK(stage_counter(threads.stages[3], "tens") == static_cast<u64>(n / 10));
    if (generator) CHECK(stage_counter(threads.stages[0], "thousands") == static_cast<u64>(n / 1000));
    for (std::size_t i = 0; i < threads.stages.size(); ++i) {
      CAPTURE(i);
      REQUIRE(threads.stages[i].counters.size() == processes.stages[i].counters.size());
      for (std::size_t k = 0; k < threads.stages[i].counters.size(); ++k) {
        CHECK(threads.stages[i].counters[k].name == processes.stages[i].counters[k].name);
        CHECK(threads.stages[i].counters[k].value == processes.stages[i].counters[k].value);
      }
    }
  }
}

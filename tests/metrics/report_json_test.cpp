// Checks the report's JSON (run_report::to_json, schema "procflow.report/1" in lib/metrics/profiling.md):
// it parses with nlohmann::json, carries every stage, replica and sample with the documented
// field names, and its values are the report's; odd stage names are escaped.
#include "support/child_process.hpp"

#include <procflow/procflow.hpp>

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <set>
#include <string>

namespace pf = procflow;
namespace pt = procflow::test;
using i64 = std::int64_t;
using json = nlohmann::json;

TEST_CASE("the report's JSON parses and carries every stage, replica and sample") {
  const std::set<std::string> shm_before = pt::dev_shm_entries();
  constexpr i64 n = 50'000;
  auto r = pf::pipeline("json \"quoted\"\\pipe", pf::sample_every(std::chrono::milliseconds(5)), pf::batch_bytes(1024))
               .source("numbers", pf::iota<i64>(0, n))
               .map("square\t1", [](i64 x) { return x * x; }, pf::replicas(2))
               .filter("even", [](i64 x) { return x % 2 == 0; }, pf::own_process, pf::replicas(1))
               .collect()
               .run();
  CHECK(r.value.size() == static_cast<std::size_t>(n / 2));
  const json j = json::parse(r.report.to_json());
  CHECK(j.at("schema") == "procflow.report/1");
  CHECK(j.at("pipeline") == "json \"quoted\"\\pipe");
  CHECK(j.at("wall_s").get<double>() == doctest::Approx(r.report.wall_s));
  CHECK(j.at("processes") == r.report.processes);
  CHECK(j.at("peak_processes") == r.report.peak_processes);
  CHECK(r.report.peak_processes == r.report.processes);  // fixed counts: every replica alive at once
  REQUIRE(j.at("stages").size() == r.report.stages.size());
  for (std::size_t i = 0; i < r.report.stages.size(); ++i) {
    const auto& s = r.report.stages[i];
    const json& js = j["stages"][i];
    CHECK(js.at("name") == s.name);
    CHECK(js.at("kind") == s.kind);
    CHECK(js.at("items_in") == s.items_in);
    CHECK(js.at("items_out") == s.items_out);
    CHECK(js.at("busy_s").get<double>() == doctest::Approx(s.busy_s));
    CHECK(js.at("starved_s").get<double>() == doctest::Approx(s.starved_s));
    CHECK(js.at("blocked_s").get<double>() == doctest::Approx(s.blocked_s));
    for (const char* f : {"replicas", "peak_replicas", "process_group", "batches_in", "bytes_in", "items_out_per_s", "busy_share",
                          "starved_share", "blocked_share", "cpu_s", "peak_rss_bytes", "read_bytes", "written_bytes", "replica_items_in"})
      CHECK_MESSAGE(js.contains(f), f);
  }
  CHECK(j["stages"][1].at("name") == "square\t1");
  CHECK(j.at("bottleneck") == r.report.bottleneck()->name);
  REQUIRE(j.at("replicas").size() == r.report.replica_rows.size());
  CHECK(j.at("replicas").size() == 3);  // two of numbers+square, one of even
  for (const json& jr : j["replicas"]) {
    for (const char* f : {"process_group", "replica", "stages", "items_in", "start_s", "end_s", "wall_s", "busy_s", "starved_s",
                          "idle_after_end_s", "blocked_s", "runtime_s", "cpu_user_s", "cpu_system_s", "peak_rss_bytes",
                          "private_bytes", "read_bytes", "written_bytes"})
      CHECK_MESSAGE(jr.contains(f), f);
    CHECK(jr.at("peak_rss_bytes").get<std::uint64_t>() > 0);
  }
  // Samples: at least the final one, which has the final counts; times increase.
  REQUIRE(!j.at("samples").empty());
  const json& last = j["samples"].back();
  CHECK(last.at("stages")[0].at("items_out") == static_cast<std::uint64_t>(n));
  CHECK(last.at("stages")[2].at("items_in") == static_cast<std::uint64_t>(n));
  CHECK(last.at("ring_slots_used").size() == 2);  // group 0 -> group 1, group 1 -> results
  double t = -1;
  for (const json& s : j["samples"]) {
    CHECK(s.at("time_s").get<double>() >= t);
    t = s.at("time_s").get<double>();
  }
  CHECK(pt::count_children() == 0);
  CHECK(pt::dev_shm_entries() == shm_before);
}

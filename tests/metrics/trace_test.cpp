// Checks pf::trace (lib/metrics/span_ring + trace_writer): the Chrome trace-event JSON parses,
// has a named track per replica, its spans are well-formed (busy / starved / blocked, inside the
// run, not overlapping on one track) and add up to the report's times; it has the counter tracks;
// a run of 100 M items gives a small file; an unwritable path is a clear error.
#include "support/child_process.hpp"

#include <procflow/procflow.hpp>

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

namespace pf = procflow;
namespace pt = procflow::test;
namespace fs = std::filesystem;
using i64 = std::int64_t;
using json = nlohmann::json;

namespace {

void spin_us(int us) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(us);
  while (std::chrono::steady_clock::now() < until) {
  }
}

struct TempFile {
  fs::path path = fs::temp_directory_path() / fmt::format("procflow_trace_{}_{}.json", ::getpid(), counter++);
  ~TempFile() { fs::remove(path); }
  static inline int counter = 0;
};

json read_json(const fs::path& p) {
  std::ifstream in(p);
  REQUIRE(in.good());
  return json::parse(in);
}

struct Span {
  std::string name;
  double ts, dur;
};

}  // namespace

TEST_CASE("the trace has a track per replica with well-formed spans that match the report") {
  const std::set<std::string> shm_before = pt::dev_shm_entries();
  TempFile file;
  constexpr i64 n = 6'000;
  auto r = pf::pipeline("traced", pf::fusion(false), pf::batch_bytes(512), pf::trace(file.path.string()),
                        pf::sample_every(std::chrono::milliseconds(20)))
               .source("numbers", pf::iota<i64>(0, n))
               .map("trivial", [](i64 x) { return x + 1; })
               .map("slow", [](i64 x) {
                 spin_us(50);
                 return x;
               }, pf::replicas(2))
               .reduce("sum", i64{0}, std::plus<>{}, std::plus<>{})
               .run();
  CHECK(r.value == n * (n + 1) / 2);
  const json t = read_json(file.path);
  REQUIRE(t.at("traceEvents").is_array());
  CHECK(t.at("otherData").at("dropped_spans") == 0);
  const double wall_us = r.report.wall_s * 1e6;
  std::map<int, std::string> process_names;
  std::map<std::pair<int, int>, std::string> thread_names;
  std::map<std::pair<int, int>, std::vector<Span>> tracks;
  std::set<std::string> counters;
  for (const json& e : t["traceEvents"]) {
    const std::string ph = e.at("ph");
    if (ph == "M" && e.at("name") == "process_name") process_names[e.at("pid")] = e.at("args").at("name");
    if (ph == "M" && e.at("name") == "thread_name") thread_names[{e.at("pid"), e.at("tid")}] = e.at("args").at("name");
    if (ph == "C") counters.insert(e.at("name"));
    if (ph != "X") continue;
    const Span s{e.at("name"), e.at("ts"), e.at("dur")};
    CHECK((s.name == "busy" || s.name == "starved" || s.name == "blocked"));
    CHECK(s.ts >= 0);
    CHECK(s.dur >= 0);
    CHECK(s.ts + s.dur <= wall_us + 1);
    tracks[{e.at("pid"), e.at("tid")}].push_back(s);
  }
  // Groups: numbers, trivial, slow x2, sum x2 (inherits the count).
  CHECK(process_names.size() == 4 + 1);  // and the pipeline's counters
  CHECK(thread_names.size() == r.report.replica_rows.size());
  CHECK(thread_names.size() == 6);
  CHECK(counters.count("items out per second") == 1);
  CHECK(counters.count("ring slots used") == 1);
  std::map<std::string, std::map<std::string, double>> seconds_by_group;  // group name -> kind -> s
  for (auto& [id, spans] : tracks) {
    REQUIRE(thread_names.count(id) == 1);
    std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) { return a.ts < b.ts; });
    for (std::size_t i = 1; i < spans.size(); ++i) CHECK(spans[i].ts >= spans[i - 1].ts + spans[i - 1].dur - 1);  // 1 us rounding
    for (const Span& s : spans) seconds_by_group[process_names[id.first]][s.name] += s.dur / 1e6;
  }
  const auto& trivial = seconds_by_group["group 1: trivial"];
  const auto& slow = seconds_by_group["group 2: slow"];
  INFO(r.report.to_string(true));
  // A span says "mostly": it absorbs the runtime's own time between batches (gaps under 200 us)
  // and pieces of another kind under 20 us (span_ring.cpp), which the counters keep apart as
  // runtime_s. So a group's spans of one kind may exceed its counter by its runtime time, no more.
  const auto runtime_of = [&](std::uint32_t group) {
    double s = 0;
    for (const auto& row : r.report.replica_rows) s += row.process_group == group ? row.runtime_s : 0;
    return s;
  };
  CHECK(trivial.at("blocked") >= 0.8 * r.report.stages[1].blocked_s);
  CHECK(trivial.at("blocked") <= r.report.stages[1].blocked_s + runtime_of(1) + 0.01);
  CHECK(slow.at("busy") >= 0.8 * r.report.stages[2].busy_s);
  CHECK(slow.at("busy") <= r.report.stages[2].busy_s + runtime_of(2) + 0.01);
  CHECK(pt::count_children() == 0);
  CHECK(pt::dev_shm_entries() == shm_before);
}

TEST_CASE("a 100 M-item run gives a trace of a few MB at most") {
  TempFile file;
  constexpr i64 n = 100'000'000;
  auto r = pf::pipeline("long", pf::trace(file.path.string()))
               .source("numbers", pf::iota<i64>(0, n))
               .map("inc", [](i64 x) { return x + 1; }, pf::replicas(2))
               .reduce("sum", i64{0}, std::plus<>{}, std::plus<>{})
               .run();
  CHECK(r.value == n * (n + 1) / 2);
  const json t = read_json(file.path);
  CHECK(t.at("otherData").at("dropped_spans") == 0);
  CHECK(fs::file_size(file.path) < 4u * 1024 * 1024);
}

TEST_CASE("a trace that cannot be written is an error naming the file, and nothing is left behind") {
  const std::set<std::string> shm_before = pt::dev_shm_entries();
  const std::string path = "/nonexistent-dir/procflow/trace.json";
  try {
    pf::pipeline("unwritable", pf::trace(path)).source("numbers", pf::iota<i64>(0, 100)).map("id", [](i64 x) { return x; }).collect().run();
    FAIL("no error");
  } catch (const std::system_error& e) {
    CHECK(std::string(e.what()).find(path) != std::string::npos);
  }
  CHECK_THROWS_AS(pf::trace(""), std::invalid_argument);
  CHECK(pt::count_children() == 0);
  CHECK(pt::dev_shm_entries() == shm_before);
}

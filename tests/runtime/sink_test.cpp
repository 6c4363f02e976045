// Checks the sink rule of include/procflow/pipeline.hpp (issue 9, "sinks must not lose data
// silently"): a single-replica sink runs in the process that called run(), fed through the
// results channel, so what it captured by reference is the caller's; replicated and own_process
// sinks run in their own processes; a callable's finish() runs once at end of stream, and a throw
// from the sink or its finish() is a stage_error naming the sink.
#include "support/cleanup_check.hpp"

#include <procflow/procflow.hpp>

#include <doctest/doctest.h>

#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace pf = procflow;
namespace pt = procflow::test;

namespace {

using CleanupCheck = pt::CleanupCheck;

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / (name + "." + std::to_string(::getpid()))).string();
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Counts its finish() calls in the process that runs it.
struct finishing_sink {
  std::vector<int>* seen;
  int* finishes;
  void operator()(int x) const { seen->push_back(x); }
  void finish() const { ++*finishes; }
};

}  // namespace

// The user's first sink from issue 9: fails before the change (the file ends short, because the
// sink's process has a copy of the stream that is never flushed).
TEST_CASE("a sink capturing a std::ofstream by reference writes every line") {
  CleanupCheck cleanup;
  const std::string path = temp_path("sink_ofstream_ref");
  constexpr int n = 3500;
  std::string want;
  for (int i = 0; i < n; ++i) want += "line " + std::to_string(i) + "\n";
  {
    std::ofstream out(path, std::ios::binary);
    const auto r = pf::pipeline("ofstream_ref", pf::ordered)
                       .source("n", pf::iota(0, n))
                       .map("text", [](int i) { return "line " + std::to_string(i) + "\n"; }, pf::replicas(2))
                       .sink("write", [&out](const std::string& line) { out << line; })
                       .run();
    CHECK(r.report.stages.back().items_in == static_cast<std::uint64_t>(n));
  }
  const std::string got = read_file(path);
  CHECK(got.size() == want.size());
  CHECK((got == want));
  std::filesystem::remove(path);
}

TEST_CASE("a single-replica sink updates the caller's variables; finish() runs once") {
  CleanupCheck cleanup;
  std::vector<int> seen;
  int finishes = 0;
  pf::pipeline("caller_state", pf::ordered)
      .source("n", pf::iota(0, 10000))
      .map("id", [](int i) { return i; }, pf::replicas(3))
      .sink("keep", finishing_sink{&seen, &finishes})
      .run();
  REQUIRE(seen.size() == 10000);
  for (int i = 0; i < 10000; ++i) REQUIRE(seen[static_cast<std::size_t>(i)] == i);
  CHECK(finishes == 1);

  // A source straight into the sink (no stage between) works the same way.
  std::int64_t sum = 0;
  pf::pipeline("direct").source("n", pf::iota<std::int64_t>(0, 1000)).sink("sum", [&sum](std::int64_t x) { sum += x; }).run();
  CHECK(sum == 999 * 1000 / 2);
}

TEST_CASE("replicated and own_process sinks keep running in their own processes") {
  CleanupCheck cleanup;
  std::vector<int> seen;
  int finishes = 0;
  pf::pipeline("replicated").source("n", pf::iota(0, 1000)).sink("keep", finishing_sink{&seen, &finishes}, pf::replicas(2)).run();
  CHECK(seen.empty());  // the replicas' copies
  CHECK(finishes == 0);
  pf::pipeline("own").source("n", pf::iota(0, 1000)).map("id", [](int i) { return i; }, pf::replicas(2))
      .sink("keep", finishing_sink{&seen, &finishes}, pf::own_process).run();
  CHECK(seen.empty());
  CHECK(finishes == 0);

  // finish() runs in each sink replica before its end of stream: a replica writes a marker file.
  const std::string dir = temp_path("sink_finish_markers");
  std::filesystem::create_directories(dir);
  struct marker_sink {
    std::string dir;
    void operator()(int) const {}
    void finish() const { std::ofstream(dir + "/" + std::to_string(::getpid())) << "done"; }
  };
  pf::pipeline("markers").source("n", pf::iota(0, 1000)).sink("mark", marker_sink{dir}, pf::replicas(2)).run();
  std::size_t markers = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir)) ++markers;
  CHECK(markers == 2);
  std::filesystem::remove_all(dir);
}

TEST_CASE("a throw from a sink in the caller's process is a stage_error naming the sink") {
  CleanupCheck cleanup;
  try {
    pf::pipeline("throws")
        .source("n", pf::iota(0, 100000))
        .map("id", [](int i) { return i; }, pf::replicas(2))
        .sink("picky", [](int i) {
          if (i == 5000) throw std::runtime_error("no 5000 please");
        })
        .run();
    FAIL("no error");
  } catch (const pf::stage_error& e) {
    CHECK(e.stage() == "picky");
    CHECK(std::string(e.what()).find("no 5000 please") != std::string::npos);
  }
}

TEST_CASE("a throw from finish() fails run() naming the sink and teardown") {
  CleanupCheck cleanup;
  struct failing_finish {
    void operator()(int) const {}
    void finish() const { throw std::runtime_error("disk full"); }
  };
  for (const bool in_caller : {true, false}) {
    CAPTURE(in_caller);
    try {
      if (in_caller) {
        pf::pipeline("teardown").source("n", pf::iota(0, 100)).sink("flush", failing_finish{}).run();
      } else {
        pf::pipeline("teardown").source("n", pf::iota(0, 100)).sink("flush", failing_finish{}, pf::replicas(2)).run();
      }
      FAIL("no error");
    } catch (const pf::stage_error& e) {
      CHECK(e.stage() == "flush");
      CHECK(std::string(e.what()).find("teardown") != std::string::npos);
      CHECK(std::string(e.what()).find("disk full") != std::string::npos);
    }
  }
}

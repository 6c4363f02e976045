// Checks SPEC §2 (the supervisor owns and releases every resource: children never outlive run(),
// shared memory is freed, preferably anonymous) and the closing line of §4 (no zombie or orphan,
// no shared-memory object left): 1 000 back-to-back small run()s, cycling through a few shapes
// (fused, own processes, generator source, ordered, every terminal), must leave no child process,
// no extra open file descriptor, no extra memory mapping and /dev/shm unchanged.
// PROCFLOW_STRESS_RUNS=<n> scales the number of runs (default 1000).
#include "support/child_process.hpp"

#include <procflow/procflow.hpp>

#include <doctest/doctest.h>
#include <fmt/core.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <string>

namespace pf = procflow;
namespace pt = procflow::test;
using i64 = std::int64_t;

namespace {

std::size_t open_fds() {
  std::size_t n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) ++n;
  return n;  // includes the descriptor the iterator itself holds, in both counts alike
}

std::size_t mappings() {
  std::ifstream maps("/proc/self/maps");
  std::size_t n = 0;
  for (std::string line; std::getline(maps, line);) ++n;
  return n;
}

std::size_t stress_runs() {
  const char* v = std::getenv("PROCFLOW_STRESS_RUNS");
  return v && *v ? static_cast<std::size_t>(std::strtoull(v, nullptr, 10)) : 1000;
}

constexpr i64 want_sum = 100 * 99 / 2 * 3;

// One small pipeline of shape `i % 6`; checks its answer.
void run_small(std::size_t i) {
  auto triple = [](i64 x) { return x * 3; };
  switch (i % 6) {
    case 0: {
      auto r = pf::pipeline("small").source("n", pf::iota<i64>(0, 100)).map("m", triple).collect().run();
      REQUIRE(r.value.size() == 100);
      break;
    }
    case 1: {
      auto r = pf::pipeline("small")
                   .source("n", pf::iota<i64>(0, 100))
                   .map("m", triple, pf::replicas(2))
                   .reduce("sum", i64{0}, std::plus<>{}, std::plus<>{}, pf::own_process)
                   .run();
      REQUIRE(r.value == want_sum);
      break;
    }
    case 2: {
      auto r = pf::pipeline("small")
                   .source("gen", [k = i64{0}]() mutable -> std::optional<i64> {
                     if (k >= 100) return std::nullopt;
                     return k++;
                   })
                   .map("m", triple, pf::replicas(2))
                   .collect(pf::ordered)
                   .run();
      REQUIRE(r.value.size() == 100);
      REQUIRE(r.value.back() == 99 * 3);
      break;
    }
    case 3: {
      auto r = pf::pipeline("small", pf::fusion(false))
                   .source("n", pf::iota<i64>(0, 100))
                   .map("m", triple)
                   .reduce_by_key("g", [](i64 x) { return x % 4; }, i64{0}, std::plus<>{}, std::plus<>{}, pf::replicas(2))
                   .run();
      REQUIRE(r.value.size() == 4);
      break;
    }
    case 4: {
      i64 seen = 0;  // a single-replica sink runs in this process: it updates this variable
      pf::pipeline("small").source("n", pf::iota<i64>(0, 100)).map("m", triple).sink("drop", [&seen](i64 x) { seen += x; }).run();
      i64 want = 0;
      for (i64 x = 0; x < 100; ++x) want += triple(x);
      REQUIRE(seen == want);
      break;
    }
    default: {
      auto r = pf::pipeline("small", pf::ordered)
                   .source("n", pf::iota<i64>(0, 100))
                   .map("s", [](i64 x) { return std::to_string(x); }, pf::replicas(2))
                   .reduce("cat", std::string{}, [](std::string a, const std::string& s) { return a + s; },
                           [](std::string a, const std::string& b) { return a + b; })
                   .run();
      REQUIRE(r.value.substr(0, 5) == "01234");
      break;
    }
  }
}

}  // namespace

TEST_CASE("back-to-back small runs leak no process, descriptor, mapping or shared-memory object") {
  const std::size_t runs = stress_runs();
  // Warm up, ten runs per shape: the first runs may map memory lazily (malloc arenas, stdio
  // buffers; under ASan its allocator maps a region per size class on first use), which is
  // growth once, not per run.
  for (std::size_t i = 0; i < 60; ++i) run_small(i);

  const std::set<std::string> shm_before = pt::dev_shm_entries();
  const std::size_t fds_before = open_fds();
  const std::size_t maps_before = mappings();
  const auto t0 = std::chrono::steady_clock::now();
  for (std::size_t i = 0; i < runs; ++i) {
    CAPTURE(i);
    run_small(i);
    if (i % 100 == 99) REQUIRE(pt::count_children() == 0);
  }
  // Measure before anything else allocates (doctest's and fmt's strings below).
  const std::size_t fds_after = open_fds();
  const std::size_t maps_after = mappings();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  MESSAGE(fmt::format("{} runs in {:.2f} s ({:.2f} ms per run)", runs, seconds, runs ? seconds * 1e3 / static_cast<double>(runs) : 0.0));

  CHECK(pt::count_children() == 0);
  CHECK(fds_after == fds_before);
  // Equal or fewer: a leak of one mapping per run would show as +runs. A small slack absorbs an
  // allocator growing into a new region once.
  INFO("mappings before ", maps_before, ", after ", maps_after);
  CHECK(maps_after <= maps_before + 2);
  CHECK(pt::dev_shm_entries() == shm_before);
}

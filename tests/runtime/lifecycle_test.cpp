// Checks SPEC §2 (the supervisor owns and releases every resource: children never outlive run(),
// shared memory is freed, preferably anonymous) and the closing line of §4 (no zombie or orphan,
// no shared-memory object left): 1 000 back-to-back small run()s, cycling through a few shapes
// (fused, own processes, generator source, ordered, every terminal), must leave no child process,
// no extra open file descriptor, no extra memory mapping and /dev/shm unchanged; every run's
// whole answer (the sink's too, read back from the file it wrote) equals the sequential one.
// PROCFLOW_STRESS_RUNS=<n> scales the number of runs (default 1000).
#include "support/child_process.hpp"
#include "support/isolated.hpp"

#include <procflow/procflow.hpp>

#include <doctest/doctest.h>
#include <fmt/core.h>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

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

i64 triple(i64 x) { return x * 3; }

// The sequential answers every shape is compared with in full.
std::vector<i64> tripled() {
  std::vector<i64> v;
  for (i64 x = 0; x < 100; ++x) v.push_back(triple(x));
  return v;
}

std::unordered_map<i64, i64> tripled_by_key() {
  std::unordered_map<i64, i64> m;
  for (const i64 x : tripled()) m[x % 4] += x;
  return m;
}

std::string concatenated() {
  std::string s;
  for (i64 x = 0; x < 100; ++x) s += std::to_string(x);
  return s;
}

// The sink's output file: opened by the caller with O_APPEND, written by the sink with write(2)
// wherever the sink runs (its own process or the caller's), read back and emptied after each run.
class SinkFile {
 public:
  SinkFile() : path_(std::filesystem::temp_directory_path() / fmt::format("procflow_lifecycle_{}.txt", ::getpid())) {}
  ~SinkFile() {
    std::error_code ec;
    std::filesystem::remove(path_, ec);
  }
  int open_for_run() const {
    const int fd = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0600);
    REQUIRE(fd >= 0);
    return fd;
  }
  std::vector<i64> read_back() const {
    std::ifstream in(path_);
    std::vector<i64> got;
    for (i64 x = 0; in >> x;) got.push_back(x);
    std::sort(got.begin(), got.end());
    return got;
  }

 private:
  std::filesystem::path path_;
};

// One small pipeline of shape `i % 6`; checks its whole answer against the sequential one.
void run_small(std::size_t i, const SinkFile& sink_file) {
  switch (i % 6) {
    case 0: {
      auto r = pf::pipeline("small").source("n", pf::iota<i64>(0, 100)).map("m", triple).collect().run();
      std::sort(r.value.begin(), r.value.end());
      REQUIRE(r.value == tripled());
      break;
    }
    case 1: {
      auto r = pf::pipeline("small")
                   .source("n", pf::iota<i64>(0, 100))
                   .map("m", [](i64 x) { return triple(x); }, pf::replicas(2))
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
                   .map("m", [](i64 x) { return triple(x); }, pf::replicas(2))
                   .collect(pf::ordered)
                   .run();
      REQUIRE(r.value == tripled());
      break;
    }
    case 3: {
      auto r = pf::pipeline("small", pf::fusion(false))
                   .source("n", pf::iota<i64>(0, 100))
                   .map("m", [](i64 x) { return triple(x); })
                   .reduce_by_key("g", [](i64 x) { return x % 4; }, i64{0}, std::plus<>{}, std::plus<>{}, pf::replicas(2))
                   .run();
      REQUIRE(r.value == tripled_by_key());
      break;
    }
    case 4: {
      const int fd = sink_file.open_for_run();
      try {
        pf::pipeline("small")
            .source("n", pf::iota<i64>(0, 100))
            .map("m", [](i64 x) { return triple(x); })
            .sink("write", [fd](i64 x) {
              const std::string line = std::to_string(x) + "\n";
              if (::write(fd, line.data(), line.size()) != static_cast<ssize_t>(line.size())) throw std::runtime_error("short write");
            })
            .run();
      } catch (...) {
        ::close(fd);
        throw;
      }
      ::close(fd);
      REQUIRE(sink_file.read_back() == tripled());
      break;
    }
    default: {
      auto r = pf::pipeline("small", pf::ordered)
                   .source("n", pf::iota<i64>(0, 100))
                   .map("s", [](i64 x) { return std::to_string(x); }, pf::replicas(2))
                   .reduce("cat", std::string{}, [](std::string a, const std::string& s) { return a + s; },
                           [](std::string a, const std::string& b) { return a + b; })
                   .run();
      REQUIRE(r.value == concatenated());
      break;
    }
  }
}

}  // namespace

TEST_CASE("back-to-back small runs leak no process, descriptor, mapping or shared-memory object") {
  // In a child under a watchdog: a hang fails naming this case (each run takes a few ms).
  const std::size_t runs = stress_runs();
  pt::run_isolated(std::chrono::seconds(60 + runs / 10), [runs] {
    const SinkFile sink_file;
    // Warm up, ten runs per shape: the first runs may map memory lazily (malloc arenas, stdio
    // buffers; under ASan its allocator maps a region per size class on first use), which is
    // growth once, not per run.
    for (std::size_t i = 0; i < 60; ++i) run_small(i, sink_file);

    const std::set<std::string> shm_before = pt::dev_shm_entries();
    const std::size_t fds_before = open_fds();
    const std::size_t maps_before = mappings();
    const auto t0 = std::chrono::steady_clock::now();
    for (std::size_t i = 0; i < runs; ++i) {
      CAPTURE(i);
      run_small(i, sink_file);
      if (i % 100 == 99) REQUIRE(pt::count_children() == 0);
    }
    // Measure before anything else allocates (doctest's and fmt's strings below).
    const std::size_t fds_after = open_fds();
    const std::size_t maps_after = mappings();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    MESSAGE(fmt::format("{} runs in {:.2f} s ({:.2f} ms per run)", runs, seconds, runs ? seconds * 1e3 / static_cast<double>(runs) : 0.0));

    CHECK(pt::count_children() == 0);
    CHECK(fds_after == fds_before);
    // A leak of one mapping per run would show as +runs. The slack absorbs an allocator growing
    // into new regions (ASan's allocator maps ~7 more over 1000 runs; glibc's 0-2).
    INFO("mappings before ", maps_before, ", after ", maps_after);
    const std::size_t slack = std::min<std::size_t>(16, static_cast<std::size_t>(runs) / 4);
    CHECK(maps_after <= maps_before + std::max<std::size_t>(slack, 2));
    CHECK(pt::dev_shm_entries() == shm_before);
  });
}

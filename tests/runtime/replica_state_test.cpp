// Per-replica state (issue 15, include/procflow/replica.hpp): identity, per_replica factories
// (setup once per replica, teardown before end of stream goes downstream, errors naming the
// phase), independent and reproducible random streams, and stateful stages that are never
// replicated by accident. Every case runs in a child under the run_isolated watchdog.
#include "scheduler/elastic.hpp"
#include "support/cleanup_check.hpp"
#include "support/isolated.hpp"

#include <procflow/procflow.hpp>

#include <doctest/doctest.h>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <system_error>
#include <tuple>
#include <vector>

namespace pf = procflow;
namespace pt = procflow::test;
namespace fs = std::filesystem;
using u64 = std::uint64_t;

namespace {

void isolated(const std::function<void()>& body) { pt::run_isolated(std::chrono::seconds(120), body); }

using CleanupCheck = pt::CleanupCheck;

// A fresh directory, removed at the end of the case.
struct TempDir {
  fs::path path = fs::temp_directory_path() / ("replica_state." + std::to_string(::getpid()));
  TempDir() {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

std::vector<std::string> read_lines(const fs::path& p) {
  std::ifstream in(p);
  std::vector<std::string> out;
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

// Appends one line with a single write(2) (O_APPEND: lines from several processes never mix).
void append_line(const fs::path& p, const std::string& line) {
  const int fd = ::open(p.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  if (fd < 0) throw std::system_error(errno, std::generic_category(), "open " + p.string());
  const std::string text = line + "\n";
  const ssize_t n = ::write(fd, text.data(), text.size());
  ::close(fd);
  if (n != static_cast<ssize_t>(text.size())) throw std::runtime_error("short write to " + p.string());
}

const pf::stage_report& stage_of(const pf::run_report& r, const std::string& name) {
  for (const auto& s : r.stages)
    if (s.name == name) return s;
  throw std::logic_error("no stage " + name);
}

// A sink writer that keeps everything in memory and writes it out in finish(): the pattern whose
// only chance to report a full disk is its end-of-stream call. Move-only (owns its FILE).
struct buffered_writer {
  struct closer {
    void operator()(std::FILE* f) const noexcept { std::fclose(f); }
  };
  std::unique_ptr<std::FILE, closer> file;
  std::string buffer;

  explicit buffered_writer(const std::string& path) : file(std::fopen(path.c_str(), "w")) {
    if (!file) throw std::system_error(errno, std::generic_category(), "open " + path);
  }
  void operator()(u64 x) { buffer += std::to_string(x) + "\n"; }
  void finish() {
    if (std::fwrite(buffer.data(), 1, buffer.size(), file.get()) != buffer.size() || std::fflush(file.get()) != 0)
      throw std::system_error(errno, std::generic_category(), "write");
    std::FILE* f = file.release();
    if (std::fclose(f) != 0) throw std::system_error(errno, std::generic_category(), "close");
  }
};

u64 pi_hits(u64 draws, std::uint32_t replicas, std::optional<u64> seed) {
  auto hit = [](u64 i) -> u64 {
    auto rng = pf::item_rng(i);
    const double x = rng.uniform(), y = rng.uniform();
    return x * x + y * y < 1.0 ? 1 : 0;
  };
  auto run = [&](auto p) {
    return p.source("draws", pf::iota<u64>(0, draws)).map("hit", hit, pf::replicas(replicas)).reduce("sum", u64{0}, std::plus<>{}, std::plus<>{}).run();
  };
  return seed ? run(pf::pipeline("pi", pf::seed(*seed))).value : run(pf::pipeline("pi")).value;
}

}  // namespace

TEST_CASE("counter_rng is Philox4x32-10: Random123's known-answer vectors") {
  using A4 = std::array<std::uint32_t, 4>;
  CHECK(pf::counter_rng::philox4x32_10({0, 0, 0, 0}, {0, 0}) == A4{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8});
  CHECK(pf::counter_rng::philox4x32_10({0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, {0xffffffff, 0xffffffff}) ==
        A4{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd});
  // A stream is a pure function of (key, counter): two generators agree draw for draw.
  pf::counter_rng a(7, 9), b(7, 9), c(7, 10);
  for (int i = 0; i < 5; ++i) {
    const u64 x = a();
    CHECK(x == b());
    CHECK(x != c());
  }
}

TEST_CASE("this_replica names the stage, the replica index, the count, the pid and a seed") {
  isolated([] {
    CleanupCheck cleanup;
    using row = std::tuple<std::string, std::uint32_t, std::uint32_t, std::int32_t, u64>;
    auto r = pf::pipeline("who")
                 .source("n", pf::iota<u64>(0, 3000))
                 .map("who", [](u64) {
                   const pf::replica_info me = pf::this_replica();
                   return row{std::string(me.stage), me.index, me.replicas, me.pid, me.seed};
                 }, pf::replicas(3))
                 .collect()
                 .run();
    std::map<std::uint32_t, std::set<std::pair<std::int32_t, u64>>> by_index;
    for (const auto& [stage, index, replicas, pid, seed] : r.value) {
      CHECK(stage == "who");
      CHECK(replicas == 3);
      CHECK(index < 3);
      CHECK(pid != ::getpid());
      by_index[index].insert({pid, seed});
    }
    std::set<u64> seeds;
    for (const auto& [index, ids] : by_index) {
      CHECK(ids.size() == 1);  // one process, one seed per replica
      seeds.insert(ids.begin()->second);
    }
    CHECK(seeds.size() == by_index.size());
    const pf::replica_info outside = pf::this_replica();
    CHECK_FALSE(outside.in_run);
    CHECK(outside.stage.empty());

    // A sink running in the caller's process: in_supervisor, replica 0 of 1.
    // replica_info::stage is valid only while run() runs (the pipeline owns the name): copied.
    std::vector<pf::replica_info> seen;
    std::vector<std::string> seen_stage;
    pf::pipeline("who_sink").source("n", pf::iota<u64>(0, 10)).map("m", [](u64 x) { return x; }).sink("s", [&](u64) {
      seen.push_back(pf::this_replica());
      seen_stage.emplace_back(seen.back().stage);
    }).run();
    REQUIRE(seen.size() == 10);
    CHECK(seen[0].in_supervisor);
    CHECK(seen_stage[0] == "s");
    CHECK(seen[0].pid == ::getpid());
  });
}

TEST_CASE("the trap: an engine captured by value replays the same stream in every replica") {
  isolated([] {
    CleanupCheck cleanup;
    constexpr u64 n = 200'000;
    // What a new user writes (issue 15): with replicas(2), fork copies the engine.
    auto r = pf::pipeline("trap")
                 .source("n", pf::iota<u64>(0, n))
                 .map("draw", [rng = std::mt19937_64{std::random_device{}()}](u64) mutable { return rng(); }, pf::replicas(2))
                 .collect()
                 .run();
    const auto& per_replica = stage_of(r.report, "draw").replica_items_in;
    REQUIRE(per_replica.size() == 2);
    std::vector<u64> draws = r.value;
    std::sort(draws.begin(), draws.end());
    const auto distinct = static_cast<u64>(std::unique(draws.begin(), draws.end()) - draws.begin());
    INFO("items per replica: ", per_replica[0], " ", per_replica[1]);
    // Both replicas replay the same stream: every draw of the replica with fewer items repeats.
    CHECK(distinct == std::max(per_replica[0], per_replica[1]));
  });
}

TEST_CASE("replica_engine: no duplicate 64-bit draw among 10^6 over 4 replicas") {
  isolated([] {
    CleanupCheck cleanup;
    constexpr u64 n = 1'000'000;
    auto r = pf::pipeline("engine")
                 .source("n", pf::iota<u64>(0, n))
                 .map("draw", [](u64) { return pf::replica_engine()(); }, pf::replicas(4))
                 .collect()
                 .run();
    const auto& per_replica = stage_of(r.report, "draw").replica_items_in;
    CHECK(std::count_if(per_replica.begin(), per_replica.end(), [](u64 k) { return k > 0; }) >= 2);
    std::vector<u64> draws = r.value;
    REQUIRE(draws.size() == n);
    std::sort(draws.begin(), draws.end());
    CHECK(std::adjacent_find(draws.begin(), draws.end()) == draws.end());
  });
}

TEST_CASE("seeded: item_rng gives the same Monte Carlo result for 1 to 4 replicas; without a seed, fresh entropy") {
  isolated([] {
    CleanupCheck cleanup;
    constexpr u64 n = 200'000;
    const u64 one = pi_hits(n, 1, 42);
    for (std::uint32_t k = 2; k <= 4; ++k) CHECK(pi_hits(n, k, 42) == one);
    CHECK(pi_hits(n, 3, 43) != one);  // the seed matters
    // Draws themselves: identical per item across replica counts with a seed, different between
    // two unseeded runs.
    auto draws = [](std::uint32_t replicas, std::optional<u64> seed) {
      auto body = [replicas](auto p) {
        auto v = p.source("n", pf::iota<u64>(0, 5000)).map("d", [](u64 i) { return pf::item_rng(i)(); }, pf::replicas(replicas)).collect(pf::ordered).run().value;
        return v;
      };
      return seed ? body(pf::pipeline("d", pf::seed(*seed))) : body(pf::pipeline("d"));
    };
    const auto d1 = draws(1, 5);
    CHECK(draws(4, 5) == d1);
    CHECK(draws(2, std::nullopt) != draws(2, std::nullopt));
    // The replica seeds follow the run seed (replica i of a stage has the same seed in every run
    // with the same run seed).
    auto seeds = [](u64 seed, std::uint32_t replicas) {
      auto v = pf::pipeline("s", pf::seed(seed)).source("n", pf::iota<u64>(0, 4000)).map("m", [](u64) { return pf::this_replica().seed; }, pf::replicas(replicas)).collect().run().value;
      return std::set<u64>(v.begin(), v.end());
    };
    CHECK(seeds(9, 1).size() == 1);
    CHECK(seeds(9, 1) == seeds(9, 1));
    CHECK(seeds(9, 1) != seeds(10, 1));
    std::set<u64> two = seeds(9, 2);
    for (u64 s : seeds(9, 2)) two.insert(s);
    CHECK(two.size() <= 2);
  });
}

TEST_CASE("per_replica: the factory runs exactly once in each replica, after the fork") {
  isolated([] {
    CleanupCheck cleanup;
    TempDir dir;
    const fs::path log = dir.path / "setup.log";
    auto r = pf::pipeline("setup")
                 .source("n", pf::iota<u64>(0, 50'000))
                 .map("scale", pf::per_replica([log] {
                   const pf::replica_info me = pf::this_replica();
                   append_line(log, std::to_string(me.index) + " " + std::to_string(me.pid) + " " + std::string(me.stage));
                   // Move-only state: a unique_ptr the callable owns.
                   return [factor = std::make_unique<u64>(3)](u64 x) { return x * *factor; };
                 }), pf::replicas(3))
                 .reduce("sum", u64{0}, std::plus<>{}, std::plus<>{})
                 .run();
    CHECK(r.value == 3 * (50'000ull * 49'999ull / 2));
    const auto lines = read_lines(log);
    CHECK(lines.size() == 3);
    std::set<std::string> indices, pids;
    for (const auto& l : lines) {
      std::istringstream in(l);
      std::string index, pid, stage;
      in >> index >> pid >> stage;
      indices.insert(index);
      pids.insert(pid);
      CHECK(stage == "scale");
      CHECK(pid != std::to_string(::getpid()));
    }
    CHECK(indices == std::set<std::string>{"0", "1", "2"});
    CHECK(pids.size() == 3);
  });
}

TEST_CASE("per_replica: replicas that join later (auto_scale) run the factory too") {
  isolated([] {
    CleanupCheck cleanup;
    TempDir dir;
    const fs::path log = dir.path / "setup.log";
    constexpr std::int64_t n = 24'000;
    // groups: 0 generator, 1 map (auto, own processes) -> collect; scaled 1 -> 3 -> 1.
    procflow::scheduler::force_next_run({{0, n / 5, 1, 3}, {0, n / 2, 1, 1}});
    std::int64_t next = 0;
    auto r = pf::pipeline("late", pf::cores(2), pf::batch_bytes(1024), pf::ring_slots(4))
                 .source("gen", [&]() -> std::optional<std::int64_t> {
                   if (next == n) return std::nullopt;
                   return next++;
                 })
                 .map("work", pf::per_replica([log] {
                   append_line(log, std::to_string(pf::this_replica().index));
                   return [](std::int64_t x) {  // about 20 us of work per item
                     const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(20);
                     volatile std::int64_t s = x;
                     while (std::chrono::steady_clock::now() < until) s = s + 1;
                     return x * 2;
                   };
                 }), pf::replicas(pf::auto_scale), pf::own_process)
                 .collect()
                 .run();
    std::vector<std::int64_t> got = r.value;
    std::sort(got.begin(), got.end());
    REQUIRE(got.size() == static_cast<std::size_t>(n));
    for (std::int64_t i = 0; i < n; ++i) CHECK(got[static_cast<std::size_t>(i)] == 2 * i);
    const auto lines = read_lines(log);
    CHECK(stage_of(r.report, "work").peak_replicas == 3);
    CHECK(r.report.processes == 4);                    // generator, first replica, two started later
    CHECK(lines.size() == 3);                          // one setup per map replica
    CHECK(std::set<std::string>(lines.begin(), lines.end()).size() == 3);
  });
}

TEST_CASE("teardown runs before end of stream goes downstream") {
  isolated([] {
    CleanupCheck cleanup;
    TempDir dir;
    const fs::path marks = dir.path;
    constexpr u64 n = 40'000;
    // Each map replica writes a marker file when its callable is destroyed (teardown). The sink,
    // in a process of its own, sees its end of stream only after every upstream replica ended,
    // so its finish() must find both markers.
    struct mark_on_destroy {
      fs::path file;
      mark_on_destroy(fs::path f) : file(std::move(f)) {}
      mark_on_destroy(mark_on_destroy&& o) noexcept : file(std::move(o.file)) { o.file.clear(); }
      ~mark_on_destroy() {
        if (!file.empty()) append_line(file, "done");
      }
      u64 operator()(u64 x) const { return x + 1; }
    };
    struct checking_sink {
      fs::path dir;
      std::ofstream out;
      u64 count = 0;
      void operator()(u64) { ++count; }
      void finish() {
        const bool both = fs::exists(dir / "mark.0") && fs::exists(dir / "mark.1");
        if (!both) throw std::runtime_error("end of stream arrived before the upstream teardown");
        out << count << "\n";
        out.close();
        if (!out) throw std::runtime_error("close failed");
      }
    };
    pf::pipeline("teardown")
        .source("n", pf::iota<u64>(0, n))
        .map("mark", pf::per_replica([marks] { return mark_on_destroy(marks / ("mark." + std::to_string(pf::this_replica().index))); }),
             pf::replicas(2))
        .sink("check", pf::per_replica([marks] { return checking_sink{marks, std::ofstream(marks / "count"), 0}; }), pf::own_process)
        .run();
    // The sink's file, written in its teardown, is complete when run() returns.
    CHECK(read_lines(marks / "count") == std::vector<std::string>{std::to_string(n)});

    // Two replicated sinks writing their files in teardown (a destructor-less, finish()-only writer).
    pf::pipeline("files")
        .source("n", pf::iota<u64>(0, n))
        .map("id", [](u64 x) { return x; }, pf::replicas(2))
        .sink("write", pf::per_replica([marks] { return buffered_writer((marks / ("part." + std::to_string(pf::this_replica().index))).string()); }),
              pf::replicas(2))
        .run();
    std::vector<u64> all;
    for (int k = 0; k < 2; ++k)
      for (const auto& l : read_lines(marks / ("part." + std::to_string(k)))) all.push_back(std::stoull(l));
    std::sort(all.begin(), all.end());
    std::vector<u64> want(n);
    std::iota(want.begin(), want.end(), u64{0});
    CHECK(all == want);
  });
}

TEST_CASE("a throwing factory is a stage_error naming the stage, the replica and setup") {
  isolated([] {
    CleanupCheck cleanup;
    std::optional<pf::stage_error> error;
    try {
      pf::pipeline("setup_fails")
          .source("n", pf::iota<u64>(0, 10'000))
          .map("loader", pf::per_replica([] {
            if (pf::this_replica().index == 1) throw std::runtime_error("model file missing");
            return [](u64 x) { return x; };
          }), pf::replicas(2))
          .reduce("sum", u64{0}, std::plus<>{}, std::plus<>{})
          .run();
    } catch (const pf::stage_error& e) {
      error = e;
    }
    REQUIRE(error.has_value());
    INFO(error->what());
    CHECK(error->stage() == "loader");
    CHECK(error->replica() == 1);
    CHECK(std::string(error->what()).find("setup") != std::string::npos);
    CHECK(std::string(error->what()).find("model file missing") != std::string::npos);
  });
}

TEST_CASE("a stateful stage after a 2-replica stage runs once unless given replicas(n)") {
  isolated([] {
    CleanupCheck cleanup;
    constexpr u64 n = 30'000;
    // dedup written the obvious way: one table, so each value is kept once.
    auto dedup = [seen = std::set<u64>{}](u64 x) mutable { return seen.insert(x % 1000).second ? u64{1} : u64{0}; };
    auto r = pf::pipeline("dedup")
                 .source("n", pf::iota<u64>(0, n))
                 .map("parse", [](u64 x) { return x; }, pf::replicas(2))
                 .map("dedup", dedup)
                 .reduce("sum", u64{0}, std::plus<>{}, std::plus<>{})
                 .run();
    CHECK(r.value == 1000);  // one table: the sequential result
    CHECK(stage_of(r.report, "parse").replicas == 2);
    CHECK(stage_of(r.report, "dedup").replicas == 1);
    CHECK(stage_of(r.report, "dedup").note.find("holds state") != std::string::npos);
    CHECK(r.report.to_string().find("note: stage 'dedup' holds state") != std::string::npos);

    // A functor with a non-const operator() is stateful too; a const one inherits.
    struct counter {
      u64 k = 0;
      u64 operator()(u64 x) { return x + (k++ & 0); }
    };
    struct pure {
      u64 operator()(u64 x) const { return x; }
    };
    auto r2 = pf::pipeline("functors")
                  .source("n", pf::iota<u64>(0, n))
                  .map("a", pure{}, pf::replicas(2))
                  .map("b", pure{})
                  .map("c", counter{})
                  .reduce("sum", u64{0}, std::plus<>{}, std::plus<>{})
                  .run();
    CHECK(r2.value == n * (n - 1) / 2);
    CHECK(stage_of(r2.report, "b").replicas == 2);
    CHECK(stage_of(r2.report, "b").note.empty());
    CHECK(stage_of(r2.report, "c").replicas == 1);

    // Asked for explicitly: replicated (state per replica, as the user said).
    auto r3 = pf::pipeline("explicit")
                  .source("n", pf::iota<u64>(0, n))
                  .map("parse", [](u64 x) { return x; }, pf::replicas(2))
                  .map("dedup", dedup, pf::replicas(2))
                  .reduce("sum", u64{0}, std::plus<>{}, std::plus<>{})
                  .run();
    CHECK(stage_of(r3.report, "dedup").replicas == 2);
    CHECK(stage_of(r3.report, "dedup").note.empty());
  });
}

TEST_CASE("a sink flushing to /dev/full in its teardown makes run() throw") {
  if (!fs::exists("/dev/full")) return;
  isolated([] {
    CleanupCheck cleanup;
    auto expect_teardown_error = [](auto run, const std::string& where) {
      std::optional<pf::stage_error> error;
      try {
        run();
      } catch (const pf::stage_error& e) {
        error = e;
      }
      INFO(where);
      REQUIRE_MESSAGE(error.has_value(), "run() succeeded although the sink's final flush failed");
      INFO(error->what());
      CHECK(error->stage() == "write");
      const std::string what = error->what();
      CHECK(what.find("teardown") != std::string::npos);
      CHECK(what.find(std::strerror(ENOSPC)) != std::string::npos);
    };
    auto source = [] { return pf::pipeline("full").source("n", pf::iota<u64>(0, 20'000)).map("id", [](u64 x) { return x; }, pf::replicas(2)); };
    // In the caller's process, a move-only callable given directly.
    expect_teardown_error([&] { source().sink("write", buffered_writer("/dev/full")).run(); }, "sink in the caller's process");
    // In the caller's process, through a factory.
    expect_teardown_error([&] { source().sink("write", pf::per_replica([] { return buffered_writer("/dev/full"); })).run(); },
                          "per_replica sink in the caller's process");
    // In processes of their own.
    expect_teardown_error([&] { source().sink("write", pf::per_replica([] { return buffered_writer("/dev/full"); }), pf::replicas(2)).run(); },
                          "replicated sink");
  });
}

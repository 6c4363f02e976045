// Checks pf::key_by(fn) (include/procflow/detail/keyed_stage.hpp, issue 16): every item with the
// same key reaches the same replica of a map, filter or sink, so per-replica state (a dedup set)
// is correct when replicated; run() refuses key_by where it cannot dispatch by key.
#include <procflow/procflow.hpp>

#include <doctest/doctest.h>

#include <fcntl.h>
#include <unistd.h>

#include <fstream>

#include <algorithm>
#include <cstdint>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

namespace pf = procflow;
using i64 = std::int64_t;

TEST_CASE("key_by: every item of a key is mapped by one replica, and the keys spread over all of them") {
  for (const i64 keys : {i64{1}, i64{7}, i64{1000}}) {
    CAPTURE(keys);
    auto r = pf::pipeline("owners")
                 .source("numbers", pf::iota<i64>(0, 20'000))
                 .map("spread", [keys](i64 i) { return (i * 7919) % keys; }, pf::replicas(2))
                 .map("owner", [](i64 k) { return std::pair<i64, i64>{k, ::getpid()}; },
                      pf::key_by([](i64 k) { return k; }), pf::replicas(3))
                 .collect()
                 .run();
    REQUIRE(r.value.size() == 20'000);
    std::map<i64, std::set<i64>> pids_per_key;
    std::set<i64> pids;
    for (const auto& [k, pid] : r.value) {
      pids_per_key[k].insert(pid);
      pids.insert(pid);
    }
    CHECK(pids_per_key.size() == static_cast<std::size_t>(keys));
    for (const auto& [k, p] : pids_per_key) {
      CAPTURE(k);
      CHECK(p.size() == 1);
    }
    if (keys >= 1000) CHECK(pids.size() == 3);
  }
}

TEST_CASE("key_by: a replicated dedup filter with per-replica state keeps each key exactly once") {
  // Each value occurs 5 times, spread over the stream; a set per replica is a correct dedup
  // only when every occurrence meets the same replica. (Without key_by, 3 replicas fed by load
  // would keep some values more than once.)
  auto seen = std::make_shared<std::unordered_set<std::string>>();
  auto r = pf::pipeline("dedup")
               .source("numbers", pf::iota<i64>(0, 25'000))
               .map("chunk", [](i64 i) { return std::string("chunk-") + std::to_string(i % 5000); }, pf::replicas(2))
               .filter("first", [seen](const std::string& s) { return seen->insert(s).second; },
                       pf::key_by([](const std::string& s) { return s; }), pf::replicas(3))
               .collect()
               .run();
  std::vector<std::string> got = r.value;
  std::sort(got.begin(), got.end());
  CHECK(got.size() == 5000);
  CHECK(std::adjacent_find(got.begin(), got.end()) == got.end());
}

TEST_CASE("key_by: pair keys; a keyed sink in processes of its own writes each key from one replica") {
  auto r = pf::pipeline("pairs")
               .source("numbers", pf::iota<i64>(0, 6000))
               .map("pair", [](i64 i) { return std::pair<i64, std::string>{i % 3, std::to_string(i % 4)}; }, pf::replicas(2))
               .map("owner", [](const std::pair<i64, std::string>& p) { return std::to_string(p.first) + p.second + ":" + std::to_string(::getpid()); },
                    pf::key_by([](const std::pair<i64, std::string>& p) { return p; }), pf::replicas(2))
               .collect()
               .run();
  std::map<std::string, std::set<std::string>> owners;
  for (const auto& s : r.value) owners[s.substr(0, s.find(':'))].insert(s.substr(s.find(':') + 1));
  CHECK(owners.size() == 12);
  for (const auto& [k, p] : owners) CHECK(p.size() == 1);

  // A sink keyed by value: each replica appends "key pid" lines to one file (O_APPEND, one
  // write per line); no key may be written by two pids.
  const std::string path = "/tmp/procflow_key_by_sink_" + std::to_string(::getpid()) + ".txt";
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0600);
  REQUIRE(fd >= 0);
  struct Cleanup {
    int fd;
    std::string path;
    ~Cleanup() {
      ::close(fd);
      ::unlink(path.c_str());
    }
  } cleanup{fd, path};
  pf::pipeline("sink")
      .source("numbers", pf::iota<i64>(0, 3000))
      .map("id", [](i64 i) { return i % 50; }, pf::replicas(2))
      .sink("keyed", [fd](i64 k) {
              const std::string line = std::to_string(k) + " " + std::to_string(::getpid()) + "\n";
              if (::write(fd, line.data(), line.size()) != static_cast<ssize_t>(line.size())) throw std::runtime_error("write");
            },
            pf::key_by([](i64 k) { return k; }), pf::replicas(2))
      .run();
  std::ifstream in(path);
  std::map<i64, std::set<i64>> writers;
  std::size_t lines = 0;
  for (i64 k = 0, pid = 0; in >> k >> pid; ++lines) writers[k].insert(pid);
  CHECK(lines == 3000);
  CHECK(writers.size() == 50);
  for (const auto& [k, pids] : writers) CHECK(pids.size() == 1);
}

TEST_CASE("key_by: run() refuses it with pf::ordered and straight after a source process, naming the stage") {
  auto ordered = pf::pipeline("o", pf::ordered)
                     .source("numbers", pf::iota<i64>(0, 100))
                     .map("id", [](i64 i) { return i; }, pf::replicas(2))
                     .map("keyed", [](i64 i) { return i; }, pf::key_by([](i64 i) { return i; }), pf::replicas(2))
                     .collect();
  CHECK_THROWS_WITH_AS(ordered.run(), doctest::Contains("'keyed': key_by() cannot be combined with pf::ordered"), std::invalid_argument);
  auto direct = pf::pipeline("d")
                    .source("numbers", pf::generate([i = i64{0}]() mutable -> std::optional<i64> { return i < 100 ? std::optional<i64>(i++) : std::nullopt; }))
                    .map("keyed", [](i64 i) { return i; }, pf::key_by([](i64 i) { return i; }), pf::replicas(2))
                    .collect();
  CHECK_THROWS_WITH_AS(direct.run(), doctest::Contains("'keyed': key_by() cannot take its items straight from a source"), std::invalid_argument);
}

// Checks live progress (metrics::Sampler through pf::progress / pf::on_progress): the callback
// sees the counters grow while the run goes on, the progress line appears on stderr when it is
// a terminal (a pseudo-terminal here), and nothing is written when stderr is a file.
#include "support/child_process.hpp"

#include <procflow/procflow.hpp>

#include <doctest/doctest.h>

#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>

namespace pf = procflow;
namespace pt = procflow::test;
using i64 = std::int64_t;

namespace {

void spin_us(int us) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(us);
  while (std::chrono::steady_clock::now() < until) {
  }
}

// A run of about half a second, with progress options `opts`.
template <class... Opts>
pf::run_report slow_run(const Opts&... opts) {
  return pf::pipeline("progressing", pf::batch_bytes(256), pf::sample_every(std::chrono::milliseconds(20)), opts...)
      .source("numbers", pf::iota<i64>(0, 2'000))
      .map("work", [](i64 x) {
        spin_us(250);
        return x;
      })
      .reduce("sum", i64{0}, std::plus<>{}, std::plus<>{})
      .run()
      .report;
}

}  // namespace

TEST_CASE("the progress callback sees the counters grow while the run goes on") {
  const std::set<std::string> shm_before = pt::dev_shm_entries();
  std::vector<pf::progress_snapshot> seen;
  const auto report = slow_run(pf::on_progress([&](const pf::progress_snapshot& p) { seen.push_back(p); }));
  REQUIRE(seen.size() >= 3);
  std::uint64_t prev = 0;
  bool grew_midway = false;
  for (const auto& p : seen) {
    REQUIRE(p.stage_names.size() == 3);
    CHECK(p.stage_names[1] == "work");
    const std::uint64_t out = p.sample.stages[1].items_out;
    CHECK(out >= prev);
    if (out > 0 && out < 2'000) grew_midway = true;
    prev = out;
    CHECK(p.eta_s >= -1);
  }
  CHECK(grew_midway);
  CHECK(seen.back().bottleneck == "work");
  CHECK(report.samples.size() == seen.size() + 1);  // and the final one
  CHECK(report.samples.back().stages[1].items_out == 2'000);
  CHECK(pt::count_children() == 0);
  CHECK(pt::dev_shm_entries() == shm_before);
}

TEST_CASE("an exception from the progress callback becomes a stage_error and the run stops cleanly") {
  const std::set<std::string> shm_before = pt::dev_shm_entries();
  CHECK_THROWS_AS(slow_run(pf::on_progress([](const pf::progress_snapshot&) { throw std::runtime_error("no"); })), pf::stage_error);
  CHECK(pt::count_children() == 0);
  CHECK(pt::dev_shm_entries() == shm_before);
}

TEST_CASE("the progress line is written to a terminal, and not to a file") {
  SUBCASE("stderr is a pseudo-terminal") {
    int master = -1, slave = -1;
    REQUIRE(::openpty(&master, &slave, nullptr, nullptr, nullptr) == 0);
    pt::ChildProcess child([&] {
      ::close(master);
      ::dup2(slave, STDERR_FILENO);
      slow_run(pf::progress(true));
      return 0;
    });
    ::close(slave);
    std::string text;
    char buf[4096];
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < deadline) {
      pollfd p{master, POLLIN, 0};
      if (::poll(&p, 1, 200) <= 0) continue;
      const ssize_t n = ::read(master, buf, sizeof buf);
      if (n <= 0) break;  // EIO once the child (the only holder of the slave) is gone
      text.append(buf, static_cast<std::size_t>(n));
    }
    ::close(master);
    CHECK(child.succeeded_within(std::chrono::seconds(30)));
    INFO(text);
    CHECK(text.find("\r[progressing]") != std::string::npos);
    CHECK(text.find("work ") != std::string::npos);
    CHECK(text.find("bottleneck work") != std::string::npos);
    CHECK(text.find("ETA") != std::string::npos);
  }
  SUBCASE("stderr is a file") {
    const auto path = std::filesystem::temp_directory_path() / fmt::format("procflow_progress_{}.txt", ::getpid());
    pt::ChildProcess child([&] {
      const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
      if (fd < 0) return 3;
      ::dup2(fd, STDERR_FILENO);
      slow_run(pf::progress(true));
      return 0;
    });
    CHECK(child.succeeded_within(std::chrono::seconds(60)));
    CHECK(std::filesystem::file_size(path) == 0);
    std::filesystem::remove(path);
  }
}

// Checks issue 17's "long life": 10^6 submits through one pool (4 client threads, single submits
// and submit_all jobs mixed) keep the caller's RSS flat, and leave no file descriptor, memory
// mapping or child behind. Label stress (a few seconds on 2 idle cores).
#include "support/child_process.hpp"

#include <procflow/procflow.hpp>

#include <doctest/doctest.h>

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <future>
#include <string>
#include <thread>
#include <vector>

namespace pf = procflow;
namespace pt = procflow::test;
using i64 = std::int64_t;

namespace {

std::size_t count_entries(const char* dir) {
  std::size_t n = 0;
  std::error_code ec;
  for (std::filesystem::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) ++n;
  return n;
}

std::size_t count_lines(const char* file) {
  std::ifstream in(file);
  std::size_t n = 0;
  for (std::string line; std::getline(in, line);) ++n;
  return n;
}

long rss_kib() {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
  return 0;
}

}  // namespace

TEST_CASE("submit: 10^6 requests keep RSS flat and leak no fd, mapping or child") {
  constexpr int threads = 4;
  {
    // Once before measuring: the threads' malloc arenas stay mapped after they end.
    auto pool = pf::serve<i64>("warm").map("f", [](i64 x) { return x; }, pf::replicas(2)).start();
    std::vector<std::thread> clients;
    for (int t = 0; t < threads; ++t)
      clients.emplace_back([&] {
        for (i64 i = 0; i < 1000; ++i) pool.submit(i).get();
      });
    for (auto& c : clients) c.join();
  }
  const std::size_t fds_before = count_entries("/proc/self/fd");
  [[maybe_unused]] const std::size_t maps_before = count_lines("/proc/self/maps");
  const auto shm_before = pt::dev_shm_entries();
  constexpr i64 total = 1'000'000;
  long rss_warm = 0, rss_end = 0;
  {
    auto pool = pf::serve<i64>("long").map("f", [](i64 x) { return x ^ 0x5555; }, pf::replicas(2)).start();
    std::atomic<i64> wrong{0};
    auto client = [&](int t, i64 first, i64 last) {
      std::vector<std::future<i64>> window;
      std::vector<i64> job;
      for (i64 i = first; i < last;) {
        if ((i / 1000) % 2 == t % 2) {  // alternately: a job of 1000 in one go, 1000 single submits
          job.clear();
          for (int k = 0; k < 1000 && i < last; ++k, ++i) job.push_back(i);
          auto answers = pool.submit_all(job);
          for (std::size_t k = 0; k < answers.size(); ++k)
            if (answers.get(k) != (job[k] ^ 0x5555)) ++wrong;
        } else {
          window.clear();
          const i64 base = i;
          for (int k = 0; k < 1000 && i < last; ++k, ++i) window.push_back(pool.submit(i));
          for (std::size_t k = 0; k < window.size(); ++k)
            if (window[k].get() != ((base + static_cast<i64>(k)) ^ 0x5555)) ++wrong;
        }
      }
    };
    auto phase = [&](i64 first, i64 last) {
      std::vector<std::thread> clients;
      const i64 per = (last - first) / threads;
      for (int t = 0; t < threads; ++t) clients.emplace_back(client, t, first + t * per, first + (t + 1) * per);
      for (auto& c : clients) c.join();
    };
    phase(0, total / 10);  // warm: the allocator and the pool's tables reach their working size
    rss_warm = rss_kib();
    phase(total / 10, total);
    rss_end = rss_kib();
    CHECK(wrong.load() == 0);
    CHECK(pool.pending() == 0);
    const auto report = pool.wait();
    CHECK(report.stages.at(1).items_in == static_cast<std::uint64_t>(total));
  }
  MESSAGE("RSS after 10^5 submits: " << rss_warm << " KiB, after 10^6: " << rss_end << " KiB");
#if !defined(PROCFLOW_SANITIZED)
  // Under ASan freed blocks sit in its quarantine (256 MiB) and its allocator maps its own regions,
  // so RSS and the mappings grow whatever procflow does; LeakSanitizer checks for leaks there.
  CHECK(rss_end < rss_warm + 8 * 1024);  // flat: 9x more requests, not 9x the memory
  CHECK(count_lines("/proc/self/maps") <= maps_before + 4);  // a new arena's pieces at most
#endif
  CHECK(count_entries("/proc/self/fd") == fds_before);
  CHECK(pt::count_children() == 0);
  CHECK(pt::dev_shm_entries() == shm_before);
}

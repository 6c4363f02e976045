// Checks issue 17's started pipelines from many caller threads at once, written to run under
// ThreadSanitizer too (not yet run there; then label it tsan): the caller's side of pf::pool (submit, submit_all, the results
// thread answering futures and job_futures) and pf::running (push from several threads, results
// taken on another) are shared between the caller's threads, the handle's driver thread and its
// latency timer. TSan runs a thread of its own, so every pipeline here passes pf::allow_threads
// (the fork rule counts threads); its replicas are forked children, where TSan only sees the
// replica's own threads (ctest sets TSAN_OPTIONS=die_after_fork=0 so they may start some).
#include "support/child_process.hpp"

#include <procflow/procflow.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <numeric>
#include <thread>
#include <vector>

namespace pf = procflow;
namespace pt = procflow::test;
using i64 = std::int64_t;

TEST_CASE("started threads: 4 threads submit and submit_all into one pool; every answer is right") {
  const auto shm_before = pt::dev_shm_entries();
  {
    auto pool = pf::serve<i64>("threads", pf::allow_threads).map("f", [](i64 x) { return 3 * x + 1; }, pf::replicas(2)).start();
    std::atomic<int> wrong{0};
    std::vector<std::thread> clients;
    for (int t = 0; t < 4; ++t)
      clients.emplace_back([&, t] {
        for (int round = 0; round < 20; ++round) {
          const i64 base = (t * 100 + round) * 1000;
          std::vector<i64> items(50);
          std::iota(items.begin(), items.end(), base);
          auto job = pool.submit_all(items);
          std::vector<std::future<i64>> singles;
          for (i64 k = 0; k < 20; ++k) singles.push_back(pool.submit(base + 500 + k));
          const std::vector<i64> all = job.get();
          for (std::size_t k = 0; k < all.size(); ++k)
            if (all[k] != 3 * items[k] + 1) ++wrong;
          for (i64 k = 0; k < 20; ++k)
            if (singles[static_cast<std::size_t>(k)].get() != 3 * (base + 500 + k) + 1) ++wrong;
        }
      });
    for (auto& c : clients) c.join();
    CHECK(wrong.load() == 0);
    CHECK(pool.pending() == 0);
    pool.wait();
  }
  CHECK(pt::count_children() == 0);
  CHECK(pt::dev_shm_entries() == shm_before);
}

TEST_CASE("started threads: 3 threads push into a running pipeline while another takes its results") {
  const auto shm_before = pt::dev_shm_entries();
  {
    auto job = pf::pipeline("push3", pf::allow_threads)
                   .source("in", pf::input<i64>())
                   .map("twice", [](i64 x) { return 2 * x; }, pf::replicas(2))
                   .collect()
                   .start();
    constexpr i64 per_thread = 2000;
    std::vector<i64> got;
    std::thread taker([&] {
      while (auto x = job.next()) got.push_back(*x);
    });
    std::vector<std::thread> pushers;
    for (int t = 0; t < 3; ++t)
      pushers.emplace_back([&, t] {
        for (i64 i = 0; i < per_thread; ++i) job.push(t * per_thread + i);
      });
    for (auto& p : pushers) p.join();
    job.close();
    taker.join();
    job.wait();
    std::sort(got.begin(), got.end());
    std::vector<i64> expected(3 * per_thread);
    for (std::size_t i = 0; i < expected.size(); ++i) expected[i] = 2 * static_cast<i64>(i);
    CHECK(got == expected);
  }
  CHECK(pt::count_children() == 0);
  CHECK(pt::dev_shm_entries() == shm_before);
}

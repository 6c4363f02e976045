// Checks issue 17's "many small jobs" path: pool.submit_all(items) answers through one
// job_future (include/procflow/job_future.hpp, include/procflow/pool.hpp):
//  - every item's value in job order, from jobs of several caller threads at once, mixed with
//    single submits; an empty optional where a filter dropped an item;
//  - a throwing item fails only its own get(i) (stage_error naming stage, request number,
//    message); get() throws the first failed item's error; the pool keeps serving;
//  - a replica killed inside a job fails exactly the requests of the batch it held (the range
//    its stage_error names), the rest of the job is redelivered to the restarted pool and
//    answered, nothing hangs, and no process or /dev/shm entry is left; the same when the job is
//    still being written (blocked on full rings) as the replica dies;
//  - misuse: get(i) twice, an index past the end, a default-constructed job_future.
#include "support/child_process.hpp"

#include <procflow/procflow.hpp>

#include <doctest/doctest.h>

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <numeric>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace pf = procflow;
namespace pt = procflow::test;
using i64 = std::int64_t;
using namespace std::chrono_literals;

namespace {

std::vector<i64> iota_job(i64 first, std::size_t n) {
  std::vector<i64> v(n);
  std::iota(v.begin(), v.end(), first);
  return v;
}

// Waits for a job with a bound (a lost answer must fail the test, not hang it).
bool ready_within(pf::job_future<i64>& job, std::chrono::seconds limit) {
  const auto until = std::chrono::steady_clock::now() + limit;
  while (!job.ready()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

}  // namespace

TEST_CASE("submit_all: jobs from 4 threads, mixed with single submits, answer every item in order") {
  const auto shm_before = pt::dev_shm_entries();
  {
    auto pool = pf::serve<i64>("jobs").map("square", [](i64 x) { return x * x + 1; }, pf::replicas(2)).start();
    std::atomic<int> wrong{0};
    std::vector<std::thread> clients;
    for (int t = 0; t < 4; ++t)
      clients.emplace_back([&, t] {
        for (int j = 0; j < 200; ++j) {
          const i64 base = (t * 200 + j) * 1000;
          const std::size_t n = 1 + static_cast<std::size_t>((j * 37) % 300);  // 1 .. 300 items
          auto job = pool.submit_all(iota_job(base, n));
          if (job.size() != n) ++wrong;
          auto single = pool.submit(base + 999);
          if (j % 2 == 0) {
            for (std::size_t k = 0; k < n; ++k) {
              const i64 x = base + static_cast<i64>(k);
              if (job.get(k) != x * x + 1) ++wrong;
            }
          } else {
            const auto all = job.get();
            for (std::size_t k = 0; k < n; ++k) {
              const i64 x = base + static_cast<i64>(k);
              if (all.at(k) != x * x + 1) ++wrong;
            }
          }
          if (single.get() != (base + 999) * (base + 999) + 1) ++wrong;
        }
      });
    for (auto& c : clients) c.join();
    CHECK(wrong.load() == 0);
    CHECK(pool.pending() == 0);
    auto empty = pool.submit_all({});
    CHECK(empty.size() == 0);
    CHECK(empty.ready());
    CHECK(empty.get().empty());
    pool.wait();
  }
  CHECK(pt::count_children() == 0);
  CHECK(pt::dev_shm_entries() == shm_before);
}

TEST_CASE("submit_all: a filter's dropped items are empty optionals") {
  auto pool = pf::serve<i64>("odd").map("add", [](i64 x) { return x + 1; }, pf::replicas(2))
                  .filter("odd", [](i64 x) { return x % 2 == 1; })
                  .map("text", [](i64 x) { return std::to_string(x); })
                  .start();
  auto job = pool.submit_all(iota_job(0, 1000));
  const std::vector<std::optional<std::string>> all = job.get();
  REQUIRE(all.size() == 1000);
  for (i64 i = 0; i < 1000; ++i) {
    const auto& r = all[static_cast<std::size_t>(i)];
    if ((i + 1) % 2 == 1) {
      REQUIRE(r.has_value());
      CHECK(*r == std::to_string(i + 1));
    } else {
      CHECK(!r.has_value());
    }
  }
}

TEST_CASE("submit_all: a throwing item fails only its own get(i); get() throws the first failure") {
  auto pool = pf::serve<i64>("picky").map("check", [](i64 x) {
    if (x % 100 == 7) throw std::invalid_argument("no " + std::to_string(x));
    return x * 2;
  }, pf::replicas(2)).start();
  auto job = pool.submit_all(iota_job(0, 1000));
  int failed = 0;
  for (std::size_t i = 0; i < 1000; ++i) {
    if (i % 100 == 7) {
      try {
        job.get(i);
        FAIL("item " << i << " should have failed");
      } catch (const pf::stage_error& e) {
        ++failed;
        CHECK(e.stage() == "check");
        CHECK(e.has_item());
        CHECK(e.item_seq() == i);  // the pool's first requests: request number = job index
        CHECK(e.message() == "no " + std::to_string(i));
        CHECK(e.exception_type() == "std::invalid_argument");
      }
    } else {
      CHECK(job.get(i) == static_cast<i64>(i) * 2);
    }
  }
  CHECK(failed == 10);
  // The whole job at once: the first failed item's error (item 107 of this job).
  auto second = pool.submit_all(iota_job(100, 50));
  try {
    second.get();
    FAIL("the job holds failing items");
  } catch (const pf::stage_error& e) {
    CHECK(e.message() == "no 107");
  }
  CHECK(pool.submit_all(iota_job(10, 3)).get() == std::vector<i64>{20, 22, 24});  // still serving
  pool.wait();
}

TEST_CASE("submit_all: a replica killed inside a job fails exactly the batch it held; the rest is redelivered") {
  const auto shm_before = pt::dev_shm_entries();
  {
    auto pool = pf::serve<i64>("crash").map("work", [](i64 x) {
      if (x == 500) ::raise(SIGKILL);  // this replica dies holding the batch with item 500
      std::this_thread::sleep_for(50us);
      return x + 1;
    }, pf::replicas(2)).start();
    auto job = pool.submit_all(iota_job(0, 2000));
    auto later = pool.submit_all(iota_job(10000, 300));  // pending behind it: all redelivered
    REQUIRE(ready_within(job, 30s));
    REQUIRE(ready_within(later, 30s));
    std::vector<std::size_t> failed;
    std::uint64_t range_first = 0, range_last = 0;
    int answered = 0;
    for (std::size_t i = 0; i < job.size(); ++i) {
      try {
        const i64 value = job.get(i);  // outside CHECK: a failed item's error reaches the catch below
        CHECK(value == static_cast<i64>(i) + 1);
        ++answered;
      } catch (const pf::stage_error& e) {
        failed.push_back(i);
        CHECK(e.kind() == pf::stage_error::cause::signal);
        CHECK(e.signal_number() == SIGKILL);
        CHECK(e.stage() == "work");
        REQUIRE(e.has_item_range());
        range_first = e.item_range_first();
        range_last = e.item_range_last();
      }
    }
    // Exactly the requests of the batch it held (positions = job indices: the pool's first job).
    REQUIRE(!failed.empty());
    CHECK(range_first <= 500);
    CHECK(500 < range_last);
    CHECK(failed.size() == range_last - range_first);
    CHECK(failed.front() == range_first);
    CHECK(failed.back() == range_last - 1);
    CHECK(failed.size() <= 64);  // one 2 KiB request slot, not the job
    CHECK(answered + static_cast<int>(failed.size()) == 2000);
    for (std::size_t i = 0; i < later.size(); ++i) CHECK(later.get(i) == 10000 + static_cast<i64>(i) + 1);
    CHECK(pool.restarts() == 1);
    CHECK(pool.pending() == 0);
    CHECK(pool.submit_all(iota_job(1, 2)).get() == std::vector<i64>{2, 3});  // still serving
    pool.wait();
  }
  CHECK(pt::count_children() == 0);
  CHECK(pt::dev_shm_entries() == shm_before);
}

TEST_CASE("submit_all: a job still being written (blocked on full rings) when a replica dies is redelivered, not failed") {
  const auto shm_before = pt::dev_shm_entries();
  {
    // 2-slot rings: the 3000-item job cannot be written at once, so submit_all is still blocked
    // in the pool's write when the replica holding item 100 dies.
    auto pool = pf::serve<i64>("blocked", pf::ring_slots(2)).map("work", [](i64 x) {
      if (x == 100) ::raise(SIGKILL);
      std::this_thread::sleep_for(20us);
      return -x;
    }, pf::replicas(2)).start();
    auto job = pool.submit_all(iota_job(0, 3000));
    REQUIRE(ready_within(job, 30s));
    std::size_t failed = 0;
    bool item_100_failed = false;
    for (std::size_t i = 0; i < job.size(); ++i) {
      try {
        const i64 value = job.get(i);
        CHECK(value == -static_cast<i64>(i));
      } catch (const pf::stage_error& e) {
        ++failed;
        CHECK(e.kind() == pf::stage_error::cause::signal);
        if (i == 100) item_100_failed = true;
      } catch (const std::exception& e) {
        FAIL("item " << i << " failed with something else than the crash: " << std::string(e.what()));
      }
    }
    CHECK(item_100_failed);
    CHECK(failed <= 64);  // the batch it held, not what was still being written
    CHECK(pool.restarts() == 1);
    CHECK(pool.pending() == 0);
    pool.wait();
  }
  CHECK(pt::count_children() == 0);
  CHECK(pt::dev_shm_entries() == shm_before);
}

TEST_CASE("submit_all: misuse is refused by name") {
  auto pool = pf::serve<i64>("misuse").map("id", [](i64 x) { return x; }).start();
  auto job = pool.submit_all({1, 2, 3});
  CHECK(job.get(1) == 2);
  CHECK_THROWS_WITH_AS(job.get(1), "procflow: job_future::get(1): that item was taken already", pf::error);
  CHECK_THROWS_WITH_AS(job.get(3), "procflow: job_future::get(3): the job has 3 items", std::out_of_range);
  pf::job_future<i64> none;
  CHECK(!none.valid());
  CHECK_THROWS_AS(none.wait(), pf::error);
  auto moved = std::move(job);
  CHECK(!job.valid());  // NOLINT(bugprone-use-after-move): the moved-from state is what is checked
  CHECK(moved.get(0) == 1);
}

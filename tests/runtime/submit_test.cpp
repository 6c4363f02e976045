// Checks issue 17, "submit requests with futures" (include/procflow/pool.hpp):
//  - futures from many caller threads all resolve to the right values (map and filter chains,
//    dropped items give an empty optional);
//  - an exception in user code fails only that request's future with a stage_error naming the
//    stage, the request number and the message; the pool keeps serving;
//  - a replica killed while it holds requests fails those futures (stage_error naming the signal),
//    every other pending future resolves (a value or that error, never nothing), and the pool
//    leaves no process and no /dev/shm entry;
//  - try_submit never blocks;
//  - per_replica factories in a pool's map and filter run once in each replica, finish() at the end.
#include "support/child_process.hpp"

#include <procflow/procflow.hpp>

#include <doctest/doctest.h>

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <future>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

namespace pf = procflow;
namespace pt = procflow::test;
using i64 = std::int64_t;
using namespace std::chrono_literals;

TEST_CASE("submit: futures from 8 threads all resolve to the right values") {
  const auto shm_before = pt::dev_shm_entries();
  {
    auto pool = pf::serve<i64>("squares").map("square", [](i64 x) { return x * x; }, pf::replicas(2)).start();
    constexpr int threads = 8;
    constexpr i64 per_thread = 3000;
    std::atomic<int> wrong{0};
    std::vector<std::thread> clients;
    for (int t = 0; t < threads; ++t)
      clients.emplace_back([&, t] {
        std::vector<std::pair<i64, std::future<i64>>> futures;
        for (i64 i = 0; i < per_thread; ++i) {
          const i64 x = t * per_thread + i;
          futures.emplace_back(x, pool.submit(x));
          if (i % 64 == 63) {  // some waited at once, some in bulk
            if (futures.back().second.get() != x * x) ++wrong;
            futures.pop_back();
          }
        }
        for (auto& [x, f] : futures)
          if (f.get() != x * x) ++wrong;
      });
    for (auto& c : clients) c.join();
    CHECK(wrong.load() == 0);
    CHECK(pool.pending() == 0);
    const auto report = pool.wait();
    CHECK(report.stages.at(1).items_in == threads * per_thread);
  }
  CHECK(pt::count_children() == 0);
  CHECK(pt::dev_shm_entries() == shm_before);
}

TEST_CASE("submit: requests sent while the replicas are busy share batches, and idle replicas get each at once") {
  auto pool = pf::serve<i64>("clocked").map("work", [](i64 x) {
    std::this_thread::sleep_for(100us);
    return x + 1;
  }, pf::replicas(2)).start();
  // One at a time, the replicas idle: each request is published as it is sent (else every one
  // would wait for the latency bound), so 200 requests are 200 batches.
  for (i64 i = 0; i < 200; ++i) REQUIRE(pool.submit(i).get() == i + 1);
  // 4000 in a burst from one thread: once both replicas have work queued the rest wait in an
  // open slot until answers come back. Before the answers' clock every submit was a batch alone.
  std::vector<std::future<i64>> futures;
  for (i64 i = 0; i < 4000; ++i) futures.push_back(pool.submit(i));
  for (i64 i = 0; i < 4000; ++i) REQUIRE(futures[static_cast<std::size_t>(i)].get() == i + 1);
  const pf::run_report report = pool.wait();
  REQUIRE(report.stages.size() == 3);
  CHECK(report.stages[1].items_in == 4200);
  CHECK(report.stages[1].batches_in >= 200);
  CHECK(report.stages[1].batches_in < 200 + 4000 / 4);
}

TEST_CASE("submit: a filter's futures hold an empty optional for the items it dropped") {
  auto pool = pf::serve<i64>("odd").map("add", [](i64 x) { return x + 1; }, pf::replicas(2))
                  .filter("odd", [](i64 x) { return x % 2 == 1; })
                  .map("text", [](i64 x) { return std::to_string(x); })
                  .start();
  std::vector<std::future<std::optional<std::string>>> futures;
  for (i64 i = 0; i < 1000; ++i) futures.push_back(pool.submit(i));
  for (i64 i = 0; i < 1000; ++i) {
    auto r = futures[static_cast<std::size_t>(i)].get();
    if ((i + 1) % 2 == 1) {
      REQUIRE(r.has_value());
      CHECK(*r == std::to_string(i + 1));
    } else {
      CHECK(!r.has_value());
    }
  }
}

TEST_CASE("submit: per_replica map and filter build their callables in each replica once, and finish() them at the end") {
  struct Counts {
    std::atomic<int> maps_made{0};
    std::atomic<int> filters_made{0};
    std::atomic<int> finished{0};
  };
  void* mem = ::mmap(nullptr, sizeof(Counts), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  REQUIRE(mem != MAP_FAILED);
  auto* counts = new (mem) Counts{};
  // Doubles an item only in the process that built it (-1 elsewhere: built in the caller, copied).
  struct Doubler {
    Counts* counts;
    pid_t built_in;
    i64 operator()(i64 x) const { return ::getpid() == built_in ? 2 * x : -1; }
    void finish() { counts->finished.fetch_add(1); }
  };
  {
    auto pool = pf::serve<i64>("per_replica_pool")
                    .map("double", pf::per_replica([counts] {
                      counts->maps_made.fetch_add(1);
                      return Doubler{counts, ::getpid()};
                    }), pf::replicas(2))
                    .filter("small", pf::per_replica([counts] {
                      counts->filters_made.fetch_add(1);
                      return [limit = i64{1000}](i64 y) { return y < limit; };
                    }))
                    .start();
    std::vector<std::future<std::optional<i64>>> futures;
    for (i64 i = 0; i < 1000; ++i) futures.push_back(pool.submit(i));
    for (i64 i = 0; i < 1000; ++i) {
      const auto r = futures[static_cast<std::size_t>(i)].get();
      if (2 * i < 1000) {
        REQUIRE(r.has_value());
        CHECK(*r == 2 * i);
      } else {
        CHECK(!r.has_value());
      }
    }
    pool.wait();
  }
  CHECK(counts->maps_made.load() == 2);
  CHECK(counts->filters_made.load() == 2);
  CHECK(counts->finished.load() == 2);
  ::munmap(mem, sizeof(Counts));
}

TEST_CASE("submit: a throwing item fails only its future; the pool keeps serving") {
  auto pool = pf::serve<i64>("picky").map("check", [](i64 x) {
    if (x % 100 == 7) throw std::invalid_argument("no " + std::to_string(x));
    return x * 2;
  }, pf::replicas(2)).start();
  std::vector<std::future<i64>> futures;
  for (i64 i = 0; i < 1000; ++i) futures.push_back(pool.submit(i));
  int failed = 0;
  for (i64 i = 0; i < 1000; ++i) {
    auto& f = futures[static_cast<std::size_t>(i)];
    if (i % 100 == 7) {
      try {
        f.get();
        FAIL("request " << i << " should have failed");
      } catch (const pf::stage_error& e) {
        ++failed;
        CHECK(e.stage() == "check");
        CHECK(e.has_item());
        CHECK(e.item_seq() == static_cast<std::uint64_t>(i));
        CHECK(e.message() == "no " + std::to_string(i));
        CHECK(e.exception_type() == "std::invalid_argument");
        CHECK(e.pid() != ::getpid());
      }
    } else {
      CHECK(f.get() == i * 2);
    }
  }
  CHECK(failed == 10);
  CHECK(pool.submit(i64{21}).get() == 42);  // still serving
  pool.wait();                              // and ends cleanly
}

TEST_CASE("submit: a replica killed while holding a batch fails exactly its requests; the pool restarts and answers the rest") {
  const auto shm_before = pt::dev_shm_entries();
  {
    auto pool = pf::serve<i64>("crash").map("work", [](i64 x) {
      if (x == 500) ::raise(SIGKILL);  // this replica dies holding request 500's batch
      std::this_thread::sleep_for(100us);
      return x;
    }, pf::replicas(2)).start();
    std::vector<std::future<i64>> futures;
    for (i64 i = 0; i < 2000; ++i) futures.push_back(pool.submit(i));
    int answered = 0;
    std::vector<std::size_t> failed;
    std::uint64_t range_first = 0, range_last = 0;
    for (std::size_t i = 0; i < futures.size(); ++i) {
      REQUIRE(futures[i].wait_for(20s) == std::future_status::ready);  // nothing hangs
      try {
        const i64 value = futures[i].get();
        CHECK(value == static_cast<i64>(i));
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
    // Exactly the requests of the batch it held (positions = submit order: the pool's first
    // generation). While both replicas are busy, requests wait in one slot for the answers'
    // clock, so that batch holds request 500 and up to a slot's worth of its neighbours.
    REQUIRE(range_first <= 500);
    REQUIRE(range_last > 500);
    CHECK(range_last - range_first <= 64);
    std::vector<std::size_t> expected(static_cast<std::size_t>(range_last - range_first));
    std::iota(expected.begin(), expected.end(), static_cast<std::size_t>(range_first));
    CHECK(failed == expected);
    CHECK(answered == 2000 - static_cast<int>(expected.size()));
    CHECK(pool.restarts() == 1);
    CHECK(pool.submit(i64{7}).get() == 7);  // still serving
    pool.wait();
  }
  CHECK(pt::count_children() == 0);
  CHECK(pt::dev_shm_entries() == shm_before);
}

TEST_CASE("submit: 8 threads keep submitting through a crash and a restart") {
  auto pool = pf::serve<i64>("crash8").map("work", [](i64 x) {
    if (x == 3333) ::raise(SIGKILL);
    return x + 1;
  }, pf::replicas(2)).start();
  std::atomic<int> wrong{0}, failed{0}, answered{0};
  std::vector<std::thread> clients;
  for (int t = 0; t < 8; ++t)
    clients.emplace_back([&, t] {
      std::vector<std::pair<i64, std::future<i64>>> futures;
      for (i64 i = 0; i < 1000; ++i) futures.emplace_back(t * 1000 + i, pool.submit(t * 1000 + i));
      for (auto& [x, f] : futures) {
        if (f.wait_for(20s) != std::future_status::ready) {
          ++wrong;
          continue;
        }
        try {
          if (f.get() != x + 1) ++wrong;
          ++answered;
        } catch (const pf::stage_error&) {
          ++failed;
        }
      }
    });
  for (auto& c : clients) c.join();
  CHECK(wrong.load() == 0);
  CHECK(failed.load() >= 1);                     // request 3333 and its batch
  CHECK(failed.load() + answered.load() == 8000);
  CHECK(failed.load() <= 64);                    // one batch, not the pool's whole backlog
  CHECK(pool.restarts() == 1);
}

namespace {
// An item whose copy can be held inside submit(): once armed with a value, the next copy of an
// item of that value (the pool keeps one for a redelivery) waits until released.
std::atomic<int> hold_copy_of{-1000};
std::atomic<bool> copy_held{false};
std::atomic<bool> copy_released{false};
struct Gate {
  int v = 0;
  Gate() = default;
  explicit Gate(int x) : v(x) {}
  Gate(const Gate& o) : v(o.v) {
    int armed = v;
    if (!hold_copy_of.compare_exchange_strong(armed, -1000)) return;
    copy_held = true;
    for (int i = 0; i < 20'000 && !copy_released; ++i) std::this_thread::sleep_for(1ms);
  }
  Gate& operator=(const Gate&) = default;
};
PROCFLOW_CODEC(Gate, v);
}  // namespace

TEST_CASE("submit: a request written just as its generation ends for good still gets an answer (no future left unresolved)") {
  // The window: a submit passes the run's stopped check, then the generation ends without a
  // restart (wait() is under way, so a crash fails what is pending), then the submit files its
  // request in the pool's table, which the generation's end has already settled. The held copy
  // keeps the submit inside that window while the generation ends.
  const auto shm_before = pt::dev_shm_entries();
  auto* go = static_cast<std::atomic<int>*>(::mmap(nullptr, sizeof(std::atomic<int>), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  REQUIRE(go != MAP_FAILED);
  new (go) std::atomic<int>(0);
  {
    auto pool = pf::serve<Gate>("late").map("work", [go](const Gate& g) {
      if (g.v == -1) {  // dies when told to, holding this request's batch
        for (int i = 0; i < 20'000 && go->load() == 0; ++i) std::this_thread::sleep_for(1ms);
        ::raise(SIGKILL);
      }
      return g.v;
    }, pf::replicas(1)).start();
    auto bomb = pool.submit(Gate{-1});
    hold_copy_of = 7;
    std::future<int> late;
    std::atomic<bool> submit_threw{false};
    std::thread writer([&] {
      try {
        late = pool.submit(Gate{7});
      } catch (const std::exception&) {
        submit_threw = true;  // an error from submit() itself is an answer too
      }
    });
    for (int i = 0; i < 10'000 && !copy_held; ++i) std::this_thread::sleep_for(1ms);
    REQUIRE(copy_held.load());
    std::thread waiter([&] {
      try {
        pool.wait();
      } catch (const pf::stage_error&) {
      }
    });
    std::this_thread::sleep_for(300ms);  // the waiter is in wait(): a crash no longer restarts
    go->store(1);
    CHECK(bomb.wait_for(20s) == std::future_status::ready);  // the generation's end settled the table
    copy_released = true;
    writer.join();
    if (!submit_threw) {
      REQUIRE(late.valid());
      CHECK(late.wait_for(10s) == std::future_status::ready);  // never, before the fix
    }
    waiter.join();
  }
  ::munmap(go, sizeof(std::atomic<int>));
  CHECK(pt::count_children() == 0);
  CHECK(pt::dev_shm_entries() == shm_before);
}

TEST_CASE("submit: try_submit never blocks") {
  auto pool = pf::serve<i64>("slow", pf::ring_slots(2), pf::batch_bytes(1024))
                  .map("slow", [](i64 x) { std::this_thread::sleep_for(1ms); return x; })
                  .start();
  std::vector<std::future<i64>> accepted;
  int refused = 0;
  for (i64 i = 0; i < 5000 && refused < 100; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    if (auto f = pool.try_submit(i)) {
      accepted.push_back(std::move(*f));
    } else {
      ++refused;
    }
    CHECK(std::chrono::steady_clock::now() - t0 < 200ms);
  }
  CHECK(refused > 0);
  for (std::size_t i = 0; i < accepted.size(); ++i) CHECK(accepted[i].get() >= 0);
}

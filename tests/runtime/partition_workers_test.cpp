// Checks include/procflow/detail/partition_workers.hpp (the keyed collector's merge threads), in
// one process, also under TSan:
// - each partition's items are worked in the order posted, always by the thread that owns it;
// - post() waits while the owning thread's queue is over its bound, and goes on when it drains;
// - the first exception of a work call reaches post() or join(), and the threads end;
// - the destructor stops and joins with items still queued;
// - a thread that cannot be started (its state throws) leaves the started ones owning every
//   partition, and none started throws from the constructor.
#include <procflow/detail/partition_workers.hpp>

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace pd = procflow::detail;
using namespace std::chrono_literals;

namespace {

// Polls `done` for up to 10 s (a hang fails instead of blocking).
template <class Pred>
bool eventually(Pred done) {
  const auto until = std::chrono::steady_clock::now() + 10s;
  while (!done()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

// Each thread's state is its index.
std::size_t thread_index(std::size_t t) { return t; }

}  // namespace

TEST_CASE("partition_workers: each partition's items are worked in the order posted, by the thread that owns it") {
  constexpr std::size_t partitions = 64;
  constexpr std::size_t threads = 4;
  constexpr std::uint64_t n = 100000;
  // Per partition, written only by its owning thread (TSan would see a second writer).
  std::vector<std::vector<std::uint64_t>> seen(partitions);
  std::vector<std::size_t> owner(partitions, threads);
  std::atomic<bool> wrong_owner{false};
  {
    pd::partition_workers<std::uint64_t, std::size_t> workers(threads, 64, thread_index, [&](std::size_t& t, std::size_t part, std::uint64_t& item) {
      if (t != part % threads) wrong_owner.store(true);
      if (owner[part] == threads) owner[part] = t;
      seen[part].push_back(item);
    });
    REQUIRE(workers.threads() == threads);
    for (std::uint64_t i = 0; i < n; ++i) workers.post(i % partitions, i, 1);
    workers.join();
  }
  CHECK_FALSE(wrong_owner.load());
  std::uint64_t total = 0;
  bool ordered = true;
  for (std::size_t p = 0; p < partitions; ++p) {
    total += seen[p].size();
    for (std::size_t j = 0; j < seen[p].size(); ++j) ordered = ordered && seen[p][j] == p + j * partitions;
    CHECK(owner[p] == p % threads);
  }
  CHECK(total == n);
  CHECK(ordered);
}

TEST_CASE("partition_workers: post() waits while the owning thread's queue is over its bound") {
  std::atomic<bool> release{false};
  std::atomic<int> worked{0};
  std::atomic<int> posted{0};
  pd::partition_workers<int, std::size_t> workers(1, 10, thread_index, [&](std::size_t&, std::size_t, int&) {
    while (!release.load()) std::this_thread::sleep_for(1ms);
    worked.fetch_add(1);
  });
  std::thread poster([&] {
    for (int i = 0; i < 6; ++i) {
      workers.post(0, i, 4);
      posted.fetch_add(1);
    }
  });
  // An item counts until it was worked: 4 + 4 + 4 (each post goes in while at most 10 are
  // queued, the one in work among them), then the fourth post waits.
  const bool three = eventually([&] { return posted.load() >= 3; });
  std::this_thread::sleep_for(200ms);
  const int posted_then = posted.load();
  const int worked_then = worked.load();
  release.store(true);
  poster.join();
  workers.join();
  CHECK(three);
  CHECK(posted_then == 3);
  CHECK(worked_then == 0);
  CHECK(posted.load() == 6);
  CHECK(worked.load() == 6);
}

TEST_CASE("partition_workers: the first exception of a work call reaches post() or join(), and the threads end") {
  pd::partition_workers<int, std::size_t> workers(2, 8, thread_index, [](std::size_t&, std::size_t, int& item) {
    if (item == 7) throw std::runtime_error("merge refused item 7");
  });
  std::string caught;
  try {
    for (int i = 0; i < 100000; ++i) workers.post(static_cast<std::size_t>(i), i, 1);
    workers.join();
  } catch (const std::runtime_error& e) {
    caught = e.what();
  }
  CHECK(caught == "merge refused item 7");
  CHECK_THROWS_WITH_AS(workers.join(), "merge refused item 7", std::runtime_error);  // joined, and says so again
}

TEST_CASE("partition_workers: the destructor stops and joins with items still queued") {
  std::atomic<int> worked{0};
  const auto t0 = std::chrono::steady_clock::now();
  {
    pd::partition_workers<int, std::size_t> workers(2, 1000000, thread_index, [&](std::size_t&, std::size_t, int&) {
      std::this_thread::sleep_for(1ms);
      worked.fetch_add(1);
    });
    for (int i = 0; i < 2000; ++i) workers.post(static_cast<std::size_t>(i), i, 1);
  }
  CHECK(worked.load() < 2000);  // most were dropped, not worked (1 ms each on 2 threads: 1 s)
  CHECK(std::chrono::steady_clock::now() - t0 < 10s);
}

TEST_CASE("partition_workers: a thread that cannot start leaves the started ones owning every partition") {
  // make_state throws for the third thread: not a std::system_error from std::thread, which the
  // constructor once caught alone (the two started threads were then destroyed joinable:
  // std::terminate).
  const auto two_only = [](std::size_t t) -> std::size_t {
    if (t >= 2) throw std::runtime_error("no state for thread " + std::to_string(t));
    return t;
  };
  constexpr std::size_t partitions = 16;
  std::vector<std::size_t> worked_on(partitions, 99);
  std::atomic<int> worked{0};
  {
    pd::partition_workers<int, std::size_t> workers(4, 64, two_only, [&](std::size_t& t, std::size_t part, int&) {
      worked_on[part] = t;
      worked.fetch_add(1);
    });
    CHECK(workers.threads() == 2);
    for (int i = 0; i < 1000; ++i) workers.post(static_cast<std::size_t>(i) % partitions, i, 1);
    workers.join();
  }
  CHECK(worked.load() == 1000);
  for (std::size_t p = 0; p < partitions; ++p) CHECK(worked_on[p] == p % 2);

  const auto none = [](std::size_t) -> std::size_t { throw std::runtime_error("no state at all"); };
  CHECK_THROWS_WITH_AS((pd::partition_workers<int, std::size_t>(2, 64, none, [](std::size_t&, std::size_t, int&) {})),
                       "no state at all", std::runtime_error);
}

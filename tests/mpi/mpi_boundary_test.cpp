// A stage boundary between ranks (include/procflow/mpi.hpp): a generator on rank 0 feeds the next
// stage's replicas on ranks 1..N-1 with encoded batches as MPI messages under credit-based flow
// control. Checks the sequential result and that the generator never runs far ahead of the remote
// consumers (back-pressure crosses ranks).
#include "mpi/mpi_main.hpp"

#include <procflow/procflow.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <thread>
#include <vector>

namespace pf = procflow;

namespace {

// A run of consecutive items [first, last]; `contiguous`: made of runs that joined up in order.
struct Span {
  std::int64_t first = -1;
  std::int64_t last = -1;
  bool contiguous = true;
};
PROCFLOW_CODEC(Span, first, last, contiguous);

auto counting_generator(std::int64_t n) {
  return [i = std::int64_t{0}, n]() mutable -> std::optional<std::int64_t> {
    if (i == n) return std::nullopt;
    return i++;
  };
}

// Counters every rank's processes on this machine share (the test runs on one machine): a file in
// /tmp named by rank 0, mapped by all, removed at the end.
struct SharedCounters {
  std::atomic<std::int64_t> produced{0};
  std::atomic<std::int64_t> consumed{0};
  std::atomic<std::int64_t> max_lag{0};
};

class SharedFile {
 public:
  SharedFile() {
    char path[64] = {};
    if (world_rank() == 0) {
      std::snprintf(path, sizeof path, "/tmp/procflow_mpi_test_%d", static_cast<int>(::getpid()));
      const int fd = ::open(path, O_RDWR | O_CREAT | O_EXCL, 0600);
      REQUIRE(fd >= 0);
      REQUIRE(::ftruncate(fd, sizeof(SharedCounters)) == 0);
      ::close(fd);
    }
    MPI_Bcast(path, sizeof path, MPI_CHAR, 0, MPI_COMM_WORLD);
    path_ = path;
    const int fd = ::open(path, O_RDWR);
    REQUIRE(fd >= 0);
    void* p = ::mmap(nullptr, sizeof(SharedCounters), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    ::close(fd);
    REQUIRE(p != MAP_FAILED);
    counters_ = static_cast<SharedCounters*>(p);
    MPI_Barrier(MPI_COMM_WORLD);
  }
  ~SharedFile() {
    ::munmap(counters_, sizeof(SharedCounters));
    MPI_Barrier(MPI_COMM_WORLD);
    if (world_rank() == 0) ::unlink(path_.c_str());
  }
  SharedCounters& counters() const { return *counters_; }

 private:
  std::string path_;
  SharedCounters* counters_ = nullptr;
};

}  // namespace

TEST_CASE("generator on rank 0 -> map on the other ranks -> reduce: the sequential sum; items spread over ranks 1..N-1") {
  const std::int64_t n = 200'000;
  auto job = pf::pipeline("boundary")
                 .source("gen", counting_generator(n))
                 .map("square", [](std::int64_t x) { return x * x % 7919; }, pf::replicas(2))
                 .reduce("sum", std::int64_t{0}, std::plus<>{}, std::plus<>{});
  std::int64_t expected = 0;
  for (std::int64_t x = 0; x < n; ++x) expected += x * x % 7919;
  const auto r = pf::mpi::run(job);
  CHECK(r.value == expected);
  if (r.rank == 0) {
    REQUIRE(r.ranks.size() == static_cast<std::size_t>(world_size()));
    CHECK(r.report.stages[0].items_out == static_cast<std::uint64_t>(n));
    CHECK(r.report.stages[1].items_in == static_cast<std::uint64_t>(n));
    if (world_size() == 1) return;  // one rank: no boundary, the job runs on rank 0 alone
    CHECK(r.sent.batches > 0);
    CHECK(r.sent.batch_bytes >= static_cast<std::uint64_t>(n) * sizeof(std::int64_t));
    std::uint64_t remote = 0;
    for (const auto& rr : r.ranks)
      if (rr.rank != 0) remote += rr.report.stages[1].items_in;
    CHECK(remote == static_cast<std::uint64_t>(n));
  }
}

TEST_CASE("generator -> flat_map -> collect, and -> reduce_by_key, across the boundary") {
  std::vector<std::string> words;
  for (int i = 0; i < 30'000; ++i) words.push_back("k" + std::to_string(i % 313));
  auto gen = [words, i = std::size_t{0}]() mutable -> std::optional<std::string> {
    if (i == words.size()) return std::nullopt;
    return words[i++];
  };
  const auto collected = pf::mpi::run(pf::pipeline("fm").source("gen", gen).flat_map("twice", [](const std::string& w) {
    return std::vector<std::string>{w, w + "x"};
  }).collect());
  const auto grouped = pf::mpi::run(pf::pipeline("g").source("gen", gen).map("id", [](const std::string& w) { return w; }).reduce_by_key(
      "count", [](const std::string& w) { return w; }, std::int64_t{0}, [](std::int64_t a, const std::string&) { return a + 1; },
      std::plus<>{}));
  if (world_rank() == 0) {
    std::vector<std::string> expected;
    std::map<std::string, std::int64_t> counts;
    for (const auto& w : words) {
      expected.push_back(w);
      expected.push_back(w + "x");
      ++counts[w];
    }
    auto got = collected.value;
    std::sort(got.begin(), got.end());
    std::sort(expected.begin(), expected.end());
    CHECK(got == expected);
    REQUIRE(grouped.value.size() == counts.size());
    for (const auto& [k, c] : counts) CHECK(grouped.value.at(k) == c);
  }
}

TEST_CASE("pf::ordered across the boundary: collect in source order, and a non-commutative reduce in order") {
  // The generator's batches go to ranks 1..N-1 as they have credits; rank 0 puts every rank's
  // results back in the export order. Items of uneven cost, so that ranks finish out of order.
  const std::int64_t n = 60'000;
  auto uneven = [](std::int64_t x) {
    if (x % 997 == 0) std::this_thread::sleep_for(std::chrono::microseconds(200));
    return x * 3 + 1;
  };
  const auto collected = pf::mpi::run(pf::pipeline("ordered_collect", pf::ordered)
                                          .source("gen", counting_generator(n))
                                          .map("f", uneven, pf::replicas(2))
                                          .collect());
  // A reduce whose combine is not commutative: the first and last item of each run of items, and
  // whether the runs joined up (only in order do they).
  const auto join = [](Span a, Span b) {
    if (a.first < 0) return b;
    if (b.first < 0) return a;
    return Span{a.first, b.last, a.contiguous && b.contiguous && b.first == a.last + 1};
  };
  const auto spanned = pf::mpi::run(pf::pipeline("ordered_reduce", pf::ordered)
                                        .source("gen", counting_generator(n))
                                        .map("id", [](std::int64_t x) { return x; }, pf::replicas(2))
                                        .reduce("span", Span{}, [join](Span acc, std::int64_t x) { return join(acc, Span{x, x, true}); }, join));
  if (world_rank() == 0) {
    REQUIRE(collected.value.size() == static_cast<std::size_t>(n));
    bool in_order = true;
    for (std::int64_t x = 0; x < n; ++x) in_order = in_order && collected.value[static_cast<std::size_t>(x)] == x * 3 + 1;
    CHECK(in_order);
    if (world_size() > 1) CHECK(collected.sent.batches > 0);  // it did cross the boundary
  }
  CHECK(spanned.value.first == 0);
  CHECK(spanned.value.last == n - 1);
  CHECK(spanned.value.contiguous);
}

TEST_CASE("back-pressure crosses ranks: the generator never runs far ahead of slow remote consumers") {
  const SharedFile file;
  SharedCounters* c = &file.counters();
  const std::int64_t n = 3000;
  auto job = pf::pipeline("slow")
                 .source("gen", [c, i = std::int64_t{0}]() mutable -> std::optional<std::int64_t> {
                   if (i == n) return std::nullopt;
                   const std::int64_t lag = c->produced.fetch_add(1) + 1 - c->consumed.load();
                   std::int64_t seen = c->max_lag.load();
                   while (lag > seen && !c->max_lag.compare_exchange_weak(seen, lag)) {
                   }
                   return i++;
                 }, pf::batch_bytes(64))
                 .map("slow", [c](std::int64_t x) {
                   std::this_thread::sleep_for(std::chrono::microseconds(500));
                   c->consumed.fetch_add(1);
                   return x;
                 }, pf::batch_bytes(64))
                 .reduce("sum", std::int64_t{0}, std::plus<>{}, std::plus<>{});
  const auto r = pf::mpi::run(job);
  CHECK(r.value == n * (n - 1) / 2);
  if (world_rank() == 0) {
    MESSAGE("the generator ran at most " << c->max_lag.load() << " items ahead of the consumers (of " << n << ")");
    // Without credits rank 0 would send every batch at once (a lag of nearly n); what may be in
    // flight is bounded by the rings and the credits (8 batches per rank of 8 items each).
    CHECK(c->max_lag.load() < n / 2);
  }
}

TEST_CASE("across the boundary, a generator failing on rank 0 or a replica killed on the last rank ends the job on every rank") {
  const int last = world_size() - 1;
  bool thrown = false;
  try {
    pf::mpi::run(pf::pipeline("gen_fails")
                     .source("gen", [i = std::int64_t{0}]() mutable -> std::optional<std::int64_t> {
                       if (i == 5000) throw std::runtime_error("generator broke");
                       return i++;
                     })
                     .map("id", [](std::int64_t x) { return x; })
                     .reduce("sum", std::int64_t{0}, std::plus<>{}, std::plus<>{}));
  } catch (const pf::stage_error& e) {
    thrown = true;
    CHECK(e.stage() == "gen");
    CHECK(e.message().find("generator broke") != std::string::npos);
    CHECK(e.message().find("on MPI rank 0 of") != std::string::npos);
  }
  CHECK(thrown);
  thrown = false;
  try {
    pf::mpi::run(pf::pipeline("map_dies")
                     .source("gen", counting_generator(1'000'000))
                     .map("boom", [last](std::int64_t x) {
                       if (pf::mpi::rank() == last && x % 1000 == 999) ::raise(SIGKILL);
                       return x;
                     })
                     .reduce("sum", std::int64_t{0}, std::plus<>{}, std::plus<>{}));
  } catch (const pf::stage_error& e) {
    thrown = true;
    CHECK(e.stage() == "boom");
    CHECK(e.kind() == pf::stage_error::cause::signal);
    CHECK(e.message().find("on MPI rank " + std::to_string(last) + " of") != std::string::npos);
  }
  CHECK(thrown);
  // The ranks are in step again: a healthy job across the boundary.
  const auto r = pf::mpi::run(pf::pipeline("after").source("gen", counting_generator(10'000)).map("id", [](std::int64_t x) { return x; })
                                  .reduce("sum", std::int64_t{0}, std::plus<>{}, std::plus<>{}));
  CHECK(r.value == std::int64_t{10'000} * 9'999 / 2);
}

// The broker's termination race (issue 11): short jobs back to back, so that rank 0's first batch
// often reaches a rank before that rank's broker has posted its receives, and a job's last
// messages meet the next job's communicator. Each job must give the sequential sum on every rank;
// before the fix a rank took an early batch for a protocol error and left while the others waited.
TEST_CASE("many short jobs across the boundary in a row (broker start-up and termination)") {
  for (int job = 0; job < 60; ++job) {
    const std::int64_t n = 500 + 37 * job;
    const auto r = pf::mpi::run(pf::pipeline("short")
                                    .source("gen", counting_generator(n), pf::batch_bytes(256))
                                    .map("id", [](std::int64_t x) { return x; })
                                    .reduce("sum", std::int64_t{0}, std::plus<>{}, std::plus<>{}));
    CAPTURE(job);
    REQUIRE(r.value == n * (n - 1) / 2);
  }
}

// Failing jobs back to back: a replica on the last rank dies while rank 0 still has batches in
// flight to it. A rank leaves only once every batch END counts has arrived (END goes out on
// failure too), so no batch is left unreceived for the next job, and every job throws on every rank.
TEST_CASE("failing jobs across the boundary in a row, then a healthy one") {
  const int last = world_size() - 1;
  for (int job = 0; job < 12; ++job) {
    CAPTURE(job);
    bool thrown = false;
    try {
      pf::mpi::run(pf::pipeline("dies")
                       .source("gen", counting_generator(200'000), pf::batch_bytes(1024))
                       .map("boom", [last, job](std::int64_t x) {
                         if (pf::mpi::rank() == last && x % 500 == 100 + job) ::raise(SIGKILL);
                         return x;
                       })
                       .reduce("sum", std::int64_t{0}, std::plus<>{}, std::plus<>{}));
    } catch (const pf::stage_error& e) {
      thrown = true;
      CHECK(e.stage() == "boom");
      CHECK(e.message().find("on MPI rank " + std::to_string(last) + " of") != std::string::npos);
    }
    CHECK(thrown);
  }
  const auto r = pf::mpi::run(pf::pipeline("after").source("gen", counting_generator(20'000)).map("id", [](std::int64_t x) { return x; })
                                  .reduce("sum", std::int64_t{0}, std::plus<>{}, std::plus<>{}));
  CHECK(r.value == std::int64_t{20'000} * 19'999 / 2);
}

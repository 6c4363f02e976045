// Checks pf::restart(n) (include/procflow/policy.hpp, lib/faults/redelivery.hpp) through run():
//  - kill -9 rounds: a killer process SIGKILLs random replicas at random (seeded) times while a
//    pipeline runs; the result equals the sequential reference item for item (no item lost, none
//    duplicated), every restart is reported, nothing is left (children, /dev/shm);
//  - a batch whose output was partly published when its replica died (a flat_map fanning out
//    over many slots) is run again without sending those slots twice;
//  - capacity: after a restart the group is back at its replica count and the replacement does
//    its share; many deaths on rings of 2 slots do not use up the rings;
//  - a poison item that kills every replica that touches it ends the run after n restarts with
//    a stage_error naming the item and the signal;
//  - a replica the watchdog kills is replaced like a crashed one; an exception is not a death;
//    a failure after restarts names them (stage_error::history());
//  - a generator source under its own restart(n) is run again from its start, sending only what
//    its dead predecessor had not sent; the pipeline's default leaves it alone, and says so;
//  - ordered pipelines: kill -9 rounds keep the order item for item; a batch split over slots
//    whose replica dies half-way, or whose consumer dies between its slots, arrives whole and in
//    order; an order-sensitive reduce gets every partial in order;
//  - what restart cannot do is refused by name (thread mode).
// Every case runs in a child of the test under a watchdog (support/isolated.hpp).
#include "support/child_process.hpp"
#include "support/isolated.hpp"
#include "support/ordered_hash.hpp"

#include <procflow/procflow.hpp>

#include <doctest/doctest.h>

#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <numeric>
#include <optional>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace pf = procflow;
namespace pt = procflow::test;
using i64 = std::int64_t;
using namespace std::chrono_literals;

namespace {

const bool no_core_dumps = [] {
  rlimit none{0, 0};
  ::setrlimit(RLIMIT_CORE, &none);
  return true;
}();

// The replicas would inherit doctest's crash handlers: a plain program's defaults instead, so a
// crash is a bare signal death.
void isolated(const std::string& what, const std::function<void()>& body) {
  pt::run_isolated(what, 120s, [&] {
    for (const int s : {SIGSEGV, SIGABRT, SIGBUS, SIGFPE, SIGILL}) ::signal(s, SIG_DFL);
    body();
  });
}

// Flags shared by every process of a run (an anonymous shared page made before run()).
struct Shared {
  std::atomic<int> fired[8];
  std::atomic<int> kills;
};
Shared* make_shared_page() {
  void* p = ::mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  REQUIRE(p != MAP_FAILED);
  return new (p) Shared{};
}

// `got` holds 0 .. items-1 once each (in that order when `ordered`); on failure, says what is
// missing and what came twice or from nowhere.
void check_each_once(std::vector<i64> got, i64 items, bool ordered) {
  if (!ordered) std::sort(got.begin(), got.end());
  std::vector<i64> want(static_cast<std::size_t>(items));
  std::iota(want.begin(), want.end(), i64{0});
  if (got != want) {
    std::vector<i64> sorted = got;
    std::sort(sorted.begin(), sorted.end());
    std::vector<i64> missing, extra;
    std::set_difference(want.begin(), want.end(), sorted.begin(), sorted.end(), std::back_inserter(missing));
    std::set_difference(sorted.begin(), sorted.end(), want.begin(), want.end(), std::back_inserter(extra));
    MESSAGE("got " << got.size() << " items; missing " << missing.size() << " (first " << (missing.empty() ? -2 : missing.front()) << "), extra "
                   << extra.size() << " (first " << (extra.empty() ? -2 : extra.front()) << ")");
  }
  CHECK(got == want);
}

// Some work per item, so that a run lasts long enough to be killed into.
i64 spin(i64 x, int rounds) {
  std::uint64_t h = static_cast<std::uint64_t>(x);  // unsigned: wraps without UB
  for (int i = 0; i < rounds; ++i) h = (h * 6364136223846793005ULL + 1442695040888963407ULL) ^ (h >> 17);
  return static_cast<i64>(h >> 1);
}

std::vector<pid_t> children_of(pid_t parent) {
  std::ifstream in("/proc/" + std::to_string(parent) + "/task/" + std::to_string(parent) + "/children");
  std::vector<pid_t> pids;
  for (pid_t p; in >> p;) pids.push_back(p);
  return pids;
}

// A process that SIGKILLs `kills` random children of this process (never itself), one every
// [min_gap, max_gap], from a seeded generator. Stopped and reaped by the destructor.
class Killer {
 public:
  Killer(std::uint64_t seed, int kills, std::chrono::milliseconds min_gap, std::chrono::milliseconds max_gap, Shared* shared) {
    const pid_t parent = ::getpid();
    pid_ = ::fork();
    REQUIRE(pid_ >= 0);
    if (pid_ != 0) return;
    std::mt19937_64 rng(seed);
    std::uniform_int_distribution<long> gap(min_gap.count(), max_gap.count());
    for (int k = 0; k < kills;) {
      std::this_thread::sleep_for(std::chrono::milliseconds(gap(rng)));
      if (::getppid() != parent) ::_exit(0);
      std::vector<pid_t> pids = children_of(parent);
      std::erase(pids, ::getpid());
      if (pids.empty()) continue;
      const pid_t victim = pids[std::uniform_int_distribution<std::size_t>(0, pids.size() - 1)(rng)];
      if (::kill(victim, SIGKILL) == 0) {
        shared->kills.fetch_add(1);
        ++k;
      }
    }
    ::_exit(0);
  }
  ~Killer() {
    ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
  }

 private:
  pid_t pid_ = -1;
};

void check_clean(const std::set<std::string>& shm_before) {
  CHECK(pt::count_children() == 0);
  CHECK(pt::dev_shm_entries() == shm_before);
}

std::uint32_t total_restarts(const pf::run_report& r) {
  std::uint32_t n = 0;
  for (const auto& s : r.stages) n += s.restarts;
  return n;
}

const pf::stage_report& stage(const pf::run_report& r, const std::string& name) {
  for (const auto& s : r.stages)
    if (s.name == name) return s;
  throw std::runtime_error("no stage " + name);
}

// The stage_error of a run that must fail (`run` calls the pipeline's run()).
template <class Run>
pf::stage_error failure_of(Run run) {
  try {
    run();
  } catch (const pf::stage_error& e) {
    return e;
  }
  FAIL("run() succeeded");
  throw std::logic_error("unreachable");  // FAIL throws
}

// The crash matrices' faults and moments: a fault that fires once across every process of a run
// (the first to reach it wins the shared flag), at the first call (start) or at item `at`.
enum class Fault { segfault, abort_, exit0, exit1, terminate, throw_ };
enum class Moment { start, first_item, mid_stream, blocked, drain };
i64 fault_item(Moment moment, i64 items) {
  return moment == Moment::first_item ? 0 : moment == Moment::mid_stream ? items / 2 : moment == Moment::blocked ? 700 : items - 1;
}
auto fault_once(Shared* shared, Fault fault, Moment moment, i64 at) {
  return [shared, moment, at, fault](i64 x, i64& calls) {
    const bool here = moment == Moment::start ? calls++ == 0 : x == at;
    if (!here || shared->fired[0].exchange(1) != 0) return;
    switch (fault) {
      case Fault::segfault: ::raise(SIGSEGV); break;
      case Fault::abort_: std::abort();
      case Fault::exit0: ::_exit(0);
      case Fault::exit1: ::_exit(1);
      case Fault::terminate: std::terminate();
      case Fault::throw_:
        throw std::runtime_error("transient");
    }
  };
}

// 0 .. n-1 in chunks of a known size: a replica that processed more than `chunk` items of its
// claims works in its second chunk, so its first one was published.
struct Chunked {
  using item_type = i64;
  static constexpr std::uint64_t chunk = 256;
  i64 n;
  bool splittable() const { return true; }
  std::uint64_t size() const { return static_cast<std::uint64_t>(n); }
  std::uint64_t preferred_chunk() const { return chunk; }
  bool units_are_items() const { return true; }
  std::size_t fill(std::uint64_t first, std::uint64_t last, pf::detail::batch_buffer<i64>& out) const {
    out.resize(static_cast<std::size_t>(last - first));
    for (std::uint64_t i = first; i < last; ++i) out[static_cast<std::size_t>(i - first)] = static_cast<i64>(i);
    return out.size();
  }
  std::optional<i64> next() { return std::nullopt; }
};

// A fold that sees the order (support/ordered_hash.hpp).
using pt::fold_hash;
using pt::join_hash;
using pt::Ordered_hash;

}  // namespace

TEST_CASE("kill -9 rounds: random replicas SIGKILLed during a run; the result equals the sequential one, clean") {
  constexpr i64 n = 300000;
  std::vector<i64> expected;
  for (i64 x = 0; x < n; ++x) expected.push_back(spin(spin(x, 300), 300) & 0xffffff);
  std::sort(expected.begin(), expected.end());
  for (std::uint64_t seed : {11u, 12u, 13u, 14u}) {
    isolated("kill -9 round seed " + std::to_string(seed), [&] {
      const auto shm_before = pt::dev_shm_entries();
      Shared* shared = make_shared_page();
      pf::result<std::vector<i64>> r;
      {
        Killer killer(seed, 8, 15ms, 80ms, shared);
        // chunk-claiming group (source + "a") x 2 -> channel -> "b" x 2 (own processes) -> collect;
        // rings of 2 slots: a slot lost per death would hang the run within a few deaths.
        r = pf::pipeline("kill9", pf::restart(100), pf::ring_slots(2), pf::batch_bytes(4096))
                .source("n", pf::iota<i64>(0, n))
                .map("a", [](i64 x) { return spin(x, 300); }, pf::replicas(2))
                .map("b", [](i64 x) { return spin(x, 300) & 0xffffff; }, pf::replicas(2), pf::own_process)
                .collect()
                .run();
      }
      std::sort(r.value.begin(), r.value.end());
      CHECK(r.value.size() == expected.size());
      CHECK(r.value == expected);
      const int kills = shared->kills.load();
      MESSAGE("seed ", seed, ": ", kills, " kills, ", total_restarts(r.report), " restarts, ", r.report.restarts.size(),
              " logged; ", r.report.to_string());
      CHECK(total_restarts(r.report) == r.report.restarts.size());
      CHECK(total_restarts(r.report) <= static_cast<std::uint32_t>(kills));
      CHECK(total_restarts(r.report) >= 1);
      for (const auto& rr : r.report.restarts) CHECK(rr.cause.find("signal 9") != std::string::npos);
      CHECK(stage(r.report, "a").replicas == 2);
      CHECK(stage(r.report, "b").replicas == 2);
      ::munmap(shared, sizeof(Shared));
      check_clean(shm_before);
    });
  }
}

TEST_CASE("kill -9 rounds under auto_scale: the scheduler's membership changes and restarts together") {
  constexpr i64 n = 300000;
  i64 want = 0;
  for (i64 x = 0; x < n; ++x) want += spin(spin(x, 300), 300) & 0xffff;
  for (std::uint64_t seed : {31u, 32u}) {
    isolated("kill -9 auto_scale seed " + std::to_string(seed), [&] {
      const auto shm_before = pt::dev_shm_entries();
      Shared* shared = make_shared_page();
      pf::result<i64> r;
      {
        Killer killer(seed, 6, 15ms, 80ms, shared);
        r = pf::pipeline("kill9auto", pf::restart(100), pf::cores(3))
                .source("n", pf::iota<i64>(0, n))
                .map("a", [](i64 x) { return spin(x, 300); }, pf::replicas(pf::auto_scale))
                .map("b", [](i64 x) { return spin(x, 300) & 0xffff; }, pf::replicas(pf::auto_scale), pf::own_process)
                .reduce("sum", i64{0}, std::plus<>{}, std::plus<>{})
                .run();
      }
      CHECK(r.value == want);
      MESSAGE("seed ", seed, ": ", shared->kills.load(), " kills, ", total_restarts(r.report), " restarts, ",
              r.report.decisions.size(), " scheduler decisions");
      ::munmap(shared, sizeof(Shared));
      check_clean(shm_before);
    });
  }
}

TEST_CASE("kill -9 rounds into a flat_map fanning out and a reduce: exact sum and count") {
  constexpr i64 n = 20000;
  constexpr i64 fan = 50;
  i64 want_sum = 0;
  for (i64 x = 0; x < n; ++x)
    for (i64 k = 0; k < fan; ++k) want_sum += (x * fan + k) % 1000;
  for (std::uint64_t seed : {21u, 22u}) {
    isolated("kill -9 fan-out seed " + std::to_string(seed), [&] {
      const auto shm_before = pt::dev_shm_entries();
      Shared* shared = make_shared_page();
      pf::result<std::pair<i64, i64>> r;
      {
        Killer killer(seed, 6, 15ms, 80ms, shared);
        r = pf::pipeline("fan9", pf::restart(100))
                .source("n", pf::iota<i64>(0, n))
                .flat_map<i64>("fan", [](i64 x, pf::emitter<i64>& emit) {
                  if (spin(x, 20000) == 42) emit(-1);  // never: keeps the work
                  for (i64 k = 0; k < fan; ++k) emit(x * fan + k);
                }, pf::replicas(2))
                .map("mod", [](i64 y) { return spin(y, 20) * 0 + y % 1000; }, pf::replicas(2), pf::own_process)
                .reduce("sum", std::pair<i64, i64>{0, 0},
                        [](std::pair<i64, i64> a, i64 y) { return std::pair<i64, i64>{a.first + y, a.second + 1}; },
                        [](std::pair<i64, i64> a, std::pair<i64, i64> b) { return std::pair<i64, i64>{a.first + b.first, a.second + b.second}; })
                .run();
      }
      CHECK(r.value.second == n * fan);
      CHECK(r.value.first == want_sum);
      MESSAGE("seed ", seed, ": ", shared->kills.load(), " kills, ", total_restarts(r.report), " restarts");
      CHECK(total_restarts(r.report) >= 1);
      ::munmap(shared, sizeof(Shared));
      check_clean(shm_before);
    });
  }
}

TEST_CASE("a batch whose output was partly sent is run again without sending those slots twice") {
  isolated("partial output", [] {
    Shared* shared = make_shared_page();
    // One item per chunk; each fans out to 20000 items: 8192 are spilled (15 full 4 KiB slots
    // published, the 16th open) before the item's death at its 15000th.
    constexpr i64 n = 100;
    constexpr i64 fan = 20000;
    const auto r = pf::pipeline("partial", pf::restart(2), pf::batch_bytes(4096))
                       .source("n", pf::iota<i64>(0, n))
                       .flat_map<i64>("fan", [shared](i64 x, pf::emitter<i64>& emit) {
                         for (i64 k = 0; k < fan; ++k) {
                           // Dies once, in the middle of a batch, after many of its output slots went out.
                           if (x == 50 && k == 15000 && shared->fired[0].exchange(1) == 0) ::raise(SIGSEGV);
                           emit(x * fan + k);
                         }
                       }, pf::replicas(2))
                       .map("id", [](i64 y) { return y; }, pf::own_process)
                       .collect()
                       .run();
    std::vector<i64> got = r.value;
    std::sort(got.begin(), got.end());
    REQUIRE(got.size() == static_cast<std::size_t>(n * fan));
    bool exact = true;
    for (i64 i = 0; i < n * fan; ++i) exact = exact && got[static_cast<std::size_t>(i)] == i;
    CHECK(exact);
    REQUIRE(r.report.restarts.size() == 1);
    const auto& rr = r.report.restarts[0];
    CHECK(rr.stage == "fan");
    CHECK(rr.redelivered);
    CHECK(rr.cause.find("signal 11") != std::string::npos);
    CHECK(rr.sent_slots == 15);  // the dead replica had sent part of the batch's output
    MESSAGE(r.report.to_string());
    ::munmap(shared, sizeof(Shared));
  });
}

TEST_CASE("capacity: after a restart the group is back at its replica count and the replacement does its share") {
  isolated("capacity", [] {
    Shared* shared = make_shared_page();
    constexpr i64 n = 200000;
    const auto r = pf::pipeline("capacity", pf::restart(3))
                       .source("n", pf::iota<i64>(0, n))
                       .map("pre", [](i64 x) { return x; })
                       .map("work", [shared](i64 x) {
                         if (x == 5000 && shared->fired[0].exchange(1) == 0) ::abort();
                         return spin(x, 100);
                       }, pf::replicas(2), pf::own_process)
                       .reduce("count", i64{0}, [](i64 a, i64) { return a + 1; }, std::plus<>{})
                       .run();
    CHECK(r.value == n);
    REQUIRE(r.report.restarts.size() == 1);
    CHECK(r.report.restarts[0].cause.find("signal 6") != std::string::npos);
    const auto& work = stage(r.report, "work");
    CHECK(work.replicas == 2);
    CHECK(work.restarts == 1);
    REQUIRE(work.replica_items_in.size() == 2);
    for (auto items : work.replica_items_in) CHECK(items > static_cast<std::uint64_t>(n / 5));  // both slots kept working
    CHECK(work.items_in == static_cast<std::uint64_t>(n));
    ::munmap(shared, sizeof(Shared));
  });
}

TEST_CASE("a poison item that kills every replica touching it ends the run after n restarts, naming the item") {
  isolated("poison", [] {
    const auto shm_before = pt::dev_shm_entries();
    try {
      pf::pipeline("poison", pf::restart(3))
          .source("n", pf::iota<i64>(0, 100000))
          .map("parse", [](i64 x) {
            if (x == 77777) ::raise(SIGSEGV);
            return x;
          }, pf::replicas(2))
          .reduce("sum", i64{0}, std::plus<>{}, std::plus<>{})
          .run();
      FAIL("run() succeeded");
    } catch (const pf::stage_error& e) {
      CHECK(e.kind() == pf::stage_error::cause::signal);
      CHECK(e.signal_number() == SIGSEGV);
      CHECK(e.stage() == "parse");
      CHECK(e.has_item());
      CHECK(e.item_seq() == 77777);
      CHECK(std::string(e.what()).find("no restart left") != std::string::npos);
      CHECK(std::string(e.what()).find("restart(3)") != std::string::npos);
      MESSAGE(std::string(e.what()));
    }
    check_clean(shm_before);
  });
}

TEST_CASE("the watchdog's kill is restarted like a crash; an exception is not a death") {
  isolated("watchdog restart", [] {
    Shared* shared = make_shared_page();
    const auto r = pf::pipeline("stuck", pf::restart(2))
                       .source("n", pf::iota<i64>(0, 50000))
                       .map("m", [shared](i64 x) {
                         if (x == 3000 && shared->fired[0].exchange(1) == 0) std::this_thread::sleep_for(60s);
                         return x;
                       }, pf::replicas(2), pf::watchdog(300ms))
                       .reduce("sum", i64{0}, std::plus<>{}, std::plus<>{})
                       .run();
    CHECK(r.value == i64{50000} * 49999 / 2);
    REQUIRE(r.report.restarts.size() == 1);
    CHECK(r.report.restarts[0].cause == "watchdog");
    CHECK(r.report.restarts[0].redelivered);
    ::munmap(shared, sizeof(Shared));
  });
  isolated("exception under restart", [] {
    const auto e = failure_of([] {
      pf::pipeline("throws", pf::restart(2))
          .source("n", pf::iota<i64>(0, 10000))
          .map("m", [](i64 x) {
            if (x == 4242) throw std::runtime_error("bad");
            return x;
          })
          .reduce("sum", i64{0}, std::plus<>{}, std::plus<>{})
          .run();
    });
    CHECK(e.kind() == pf::stage_error::cause::exception);
    CHECK(e.item_seq() == 4242);
    CHECK(e.history().empty());  // nothing was restarted before it
  });
  // A run that restarted a replica and then failed returns no report: its stage_error keeps the
  // restarts, as the report's restart lines would have said them. The two cases run
  // iota(20000) -> map "m" (its replica SIGKILLed once, at item 1000; the pid kept in
  // fired[1]; then `then`) -> reduce, under restart(2).
  const auto killed_once_then = [](Shared* shared, auto then, auto combine) {
    return pf::pipeline("restarted then fails", pf::restart(2))
        .source("n", pf::iota<i64>(0, 20000))
        .map("m", [shared, then](i64 x) {
          if (x == 1000 && shared->fired[0].exchange(1) == 0) {
            shared->fired[1].store(static_cast<int>(::getpid()));
            ::raise(SIGKILL);
          }
          return then(x);
        })
        .reduce("sum", i64{0}, std::plus<>{}, combine)
        .run();
  };
  // How the history names the killed replica.
  const auto killed_replica = [](const Shared* shared) {
    return "stage 'm' replica 0 (pid " + std::to_string(shared->fired[1].load()) + ", killed by signal 9";
  };
  isolated("a failure after a restart names the restart", [&] {
    Shared* shared = make_shared_page();
    const auto e = failure_of([&] {
      const auto throw_at_15000 = [](i64 x) {
        if (x == 15000) throw std::runtime_error("bad");
        return x;
      };
      killed_once_then(shared, throw_at_15000, std::plus<>{});
    });
    CHECK(e.kind() == pf::stage_error::cause::exception);
    CHECK(e.item_seq() == 15000);
    const std::string dead = killed_replica(shared);
    CHECK(e.history().find(dead) != std::string::npos);
    CHECK(e.history().find("redelivered") != std::string::npos);
    CHECK(std::string(e.what()).find("under pf::restart: " + dead) != std::string::npos);
    MESSAGE(std::string(e.what()));
    ::munmap(shared, sizeof(Shared));
  });
  // The same for a failure on the caller's side (here the reduce's combine, merging the
  // replicas' partials in the supervisor).
  isolated("a caller-side failure after a restart names the restart", [&] {
    Shared* shared = make_shared_page();
    const auto e = failure_of([&] {
      killed_once_then(shared, [](i64 x) { return x; }, [](i64, i64) -> i64 { throw std::runtime_error("combine failed"); });
    });
    CHECK(e.in_supervisor());
    CHECK(e.message().find("combine failed") != std::string::npos);
    CHECK(e.history().find(killed_replica(shared)) != std::string::npos);
    MESSAGE(std::string(e.what()));
    ::munmap(shared, sizeof(Shared));
  });
}

TEST_CASE("items larger than a slot are redelivered whole") {
  isolated("large items", [] {
    Shared* shared = make_shared_page();
    constexpr i64 n = 300;
    const auto r = pf::pipeline("large", pf::restart(2), pf::batch_bytes(16384))
                       .source("n", pf::iota<i64>(0, n))
                       .map("big", [](i64 x) { return std::string(40000 + static_cast<std::size_t>(x), static_cast<char>('a' + x % 26)); })
                       .map("len", [shared](const std::string& s) {
                         if (s.size() == 40100 && shared->fired[0].exchange(1) == 0) ::raise(SIGKILL);
                         return static_cast<i64>(s.size()) * 1000 + (s.front() - 'a');
                       }, pf::own_process)
                       .reduce("sum", i64{0}, std::plus<>{}, std::plus<>{})
                       .run();
    i64 want = 0;
    for (i64 x = 0; x < n; ++x) want += (40000 + x) * 1000 + x % 26;
    CHECK(r.value == want);
    REQUIRE(r.report.restarts.size() == 1);
    CHECK(r.report.restarts[0].stage == "len");
    CHECK(r.report.restarts[0].redelivered);
    ::munmap(shared, sizeof(Shared));
  });
}

// The crash matrix of crash_test.cpp under restart: each fault (once: a transient fault) at each
// moment in the generator source, the map or the reduce ends with the fault-free result, clean. A
// throw is not a death: its cells run under restart and retry(1) in the map and the reduce
// (restart alone fails on it, as crash_test checks); a source has no item to retry.
TEST_CASE("crash matrix under restart: every fault at every moment in source, map and reduce ends with the fault-free result") {
  enum class Where { source, map, reduce };
  static constexpr i64 items = 2000;
  for (const Fault fault :
       {Fault::segfault, Fault::abort_, Fault::exit0, Fault::exit1, Fault::terminate, Fault::throw_})
    for (const Moment moment : {Moment::start, Moment::first_item, Moment::mid_stream, Moment::blocked, Moment::drain})
      for (const Where where : {Where::source, Where::map, Where::reduce}) {
        if (where == Where::source && fault == Fault::throw_) continue;
        const bool in_reduce = where == Where::reduce;
        const std::string what = "restart matrix fault " + std::to_string(static_cast<int>(fault)) + " moment " +
                                 std::to_string(static_cast<int>(moment)) +
                                 (where == Where::source ? " source" : in_reduce ? " reduce" : " map");
        isolated(what, [&] {
          const auto shm_before = pt::dev_shm_entries();
          Shared* shared = make_shared_page();
          const auto maybe_fault = fault_once(shared, fault, moment, fault_item(moment, items));
          const auto run = [&](auto... policy) {
            return pf::pipeline("crash", pf::restart(2), pf::batch_bytes(256), pf::ring_slots(2), policy...)
                .source(
                    "gen",
                    [where, maybe_fault, i = i64{0}]() mutable -> std::optional<i64> {
                      static i64 calls = 0;
                      if (i >= items) return std::nullopt;
                      if (where == Where::source) maybe_fault(i, calls);
                      return i++;
                    },
                    pf::restart(2))  // its own: the pipeline's default leaves a generator alone
                .map(
                    "m",
                    [where, maybe_fault](i64 x) {
                      static i64 calls = 0;
                      if (where == Where::map) maybe_fault(x, calls);
                      return x;
                    },
                    pf::replicas(2))
                .reduce(
                    "sum", i64{0},
                    [in_reduce, maybe_fault, moment](i64 acc, i64 x) {
                      static i64 calls = 0;
                      if (moment == Moment::blocked && x < 500) std::this_thread::sleep_for(1ms);
                      if (in_reduce) maybe_fault(x, calls);
                      return acc + x;
                    },
                    std::plus<>{}, pf::replicas(2), pf::own_process)
                .run();
          };
          const auto r = fault == Fault::throw_ ? run(pf::retry(1, 0ms)) : run();
          const i64 sum = r.value;
          if (fault == Fault::throw_) {
            CHECK(r.report.restarts.empty());
            CHECK(r.report.stages[in_reduce ? 2 : 1].retries == 1);
          } else {
            REQUIRE(r.report.restarts.size() == 1);
            CHECK(r.report.restarts[0].stage == (where == Where::source ? "gen" : in_reduce ? "sum" : "m"));
          }
          CHECK(r.report.stages[0].items_out == static_cast<std::uint64_t>(items));
          CHECK(sum == items * (items - 1) / 2);
          CHECK(shared->fired[0].load() == 1);
          ::munmap(shared, sizeof(Shared));
          check_clean(shm_before);
        });
      }
}

// A replica that skipped an item (pf::skip) and then died in the same batch: its replacement runs
// the batch again and skips the item again, but the report keeps one dead letter for it.
TEST_CASE("ordered crash matrix under restart: every fault at every moment in map and reduce keeps the order") {
  static constexpr i64 items = 2000;
  Ordered_hash want;
  for (i64 x = 0; x < items; ++x) want = fold_hash(want, x);
  for (const Fault fault : {Fault::segfault, Fault::abort_, Fault::exit0, Fault::exit1, Fault::terminate})
    for (const Moment moment : {Moment::start, Moment::first_item, Moment::mid_stream, Moment::blocked, Moment::drain})
      for (const bool in_reduce : {false, true}) {
        const std::string what = "ordered restart matrix fault " + std::to_string(static_cast<int>(fault)) + " moment " +
                                 std::to_string(static_cast<int>(moment)) + (in_reduce ? " reduce" : " map");
        isolated(what, [&] {
          const auto shm_before = pt::dev_shm_entries();
          Shared* shared = make_shared_page();
          const auto maybe_fault = fault_once(shared, fault, moment, fault_item(moment, items));
          const auto r = pf::pipeline("ocrash", pf::ordered, pf::restart(2), pf::batch_bytes(256), pf::ring_slots(2))
                             .source("n", pf::iota<i64>(0, items))
                             .map(
                                 "m",
                                 [in_reduce, maybe_fault](i64 x) {
                                   static i64 calls = 0;
                                   if (!in_reduce) maybe_fault(x, calls);
                                   return x;
                                 },
                                 pf::replicas(2))
                             .reduce(
                                 "hash", Ordered_hash{},
                                 [in_reduce, maybe_fault, moment](Ordered_hash acc, i64 x) {
                                   static i64 calls = 0;
                                   if (moment == Moment::blocked && x < 500) std::this_thread::sleep_for(1ms);
                                   if (in_reduce) maybe_fault(x, calls);
                                   return fold_hash(acc, x);
                                 },
                                 join_hash, pf::replicas(2), pf::own_process)
                             .run();
          REQUIRE(r.report.restarts.size() == 1);
          CHECK(r.report.restarts[0].stage == (in_reduce ? "hash" : "m"));
          CHECK(r.value == want);
          CHECK(shared->fired[0].load() == 1);
          ::munmap(shared, sizeof(Shared));
          check_clean(shm_before);
        });
      }
}

TEST_CASE("skip and restart: an item skipped in a batch that is redelivered is one dead letter, not two") {
  isolated("skip then die", [] {
    const auto shm_before = pt::dev_shm_entries();
    Shared* shared = make_shared_page();
    static constexpr i64 items = 4000;
    const auto r = pf::pipeline("skip restart", pf::restart(1), pf::skip)
                       .source("n", pf::iota<i64>(0, items))
                       .map(
                           "m",
                           [shared](i64 x) {
                             if (x == 5) throw std::invalid_argument("bad 5");
                             if (x == 6 && shared->fired[0].exchange(1) == 0)
                               ::raise(SIGKILL);  // in the batch holding 5
                             return x;
                           },
                           pf::replicas(2))
                       .reduce("sum", i64{0}, std::plus<>{}, std::plus<>{})
                       .run();
    CHECK(r.value == items * (items - 1) / 2 - 5);
    REQUIRE(r.report.restarts.size() == 1);
    CHECK(r.report.restarts[0].redelivered);
    REQUIRE(r.report.dead_letters.size() == 1);
    CHECK(r.report.dead_letters[0].item_seq == 5);
    CHECK(r.report.dead_letters[0].decode_item<i64>() == 5);
    CHECK(r.report.stages[1].items_skipped == 1);
    ::munmap(shared, sizeof(Shared));
    check_clean(shm_before);
  });
}

// A generator that dies mid-stream (kill -9, after many slots were published and consumed) is
// forked again from the supervisor's untouched copy and run from its start; the slots its
// predecessor published are written again but not sent: every item arrives exactly once. Small
// items across many slots, and items larger than a slot whose fragments the death split.
TEST_CASE("a generator source under its own restart(n) is run again from its start: every item exactly once") {
  for (const bool ordered : {false, true})
  for (const bool large : {false, true}) {
    isolated(std::string(large ? "generator restart, large items" : "generator restart") + (ordered ? ", ordered" : ""), [large, ordered] {
      const auto shm_before = pt::dev_shm_entries();
      Shared* shared = make_shared_page();
      const i64 items = large ? 60 : 200000;
      const std::size_t bytes = large ? 150000 : 16;  // 150 KB: three fragments of a 64 KiB slot
      const i64 die_at = large ? 31 : 120000;
      // Ordered, the generator's slots start small and grow (Outbox::slot_room): the replay must
      // cut the same slots to match the digest and the slots already sent.
      const auto r = (ordered ? pf::pipeline("gen restart", pf::ordered) : pf::pipeline("gen restart"))
                         .source(
                             "gen",
                             [shared, items, bytes, die_at, i = i64{0}]() mutable -> std::optional<std::string> {
                               if (i >= items) return std::nullopt;
                               if (i == die_at && shared->fired[0].exchange(1) == 0) ::raise(SIGKILL);
                               std::string s(bytes, static_cast<char>('a' + i % 26));
                               std::memcpy(s.data(), &i, sizeof i);
                               ++i;
                               return s;
                             },
                             pf::restart(1))
                         .map(
                             "id",
                             [](const std::string& s) {
                               i64 i = 0;
                               std::memcpy(&i, s.data(), sizeof i);
                               const bool intact = s.size() > sizeof i && s.back() == static_cast<char>('a' + i % 26);
                               return intact ? i : i64{-1};
                             },
                             pf::replicas(2))
                         .collect()
                         .run();
      check_each_once(r.value, items, ordered);  // none lost, none twice, none torn
      REQUIRE(r.report.restarts.size() == 1);
      CHECK(r.report.restarts[0].stage == "gen");
      CHECK(r.report.restarts[0].cause.find("signal 9") != std::string::npos);
      CHECK(r.report.restarts[0].batch.find("run again from its start") != std::string::npos);
      CHECK(r.report.restarts[0].sent_slots > 0);
      CHECK(r.report.stages[0].items_out == static_cast<std::uint64_t>(items));
      CHECK(r.report.stages[0].restarts == 1);
      ::munmap(shared, sizeof(Shared));
      check_clean(shm_before);
    });
  }
}

TEST_CASE("a slow generator under restart keeps its latency bound and is replayed exactly once") {
  // The latency flusher cuts a slow generator's slots by time, so no replay cuts them the same:
  // the replay drops what was sent by count of items (Outbox::begin_source_replay). Item 0 must
  // reach the map while the generator waits for it (no full slot ever comes meanwhile); then the
  // generator dies and its replacement sends items 250.. exactly once.
  isolated("generator restart, slots cut by time", [] {
    const auto shm_before = pt::dev_shm_entries();
    Shared* shared = make_shared_page();
    constexpr i64 items = 400;
    constexpr i64 die_at = 250;
    std::string message;
    std::vector<i64> got;
    pf::run_report report;
    try {
      auto r = pf::pipeline("slow gen restart")
                   .source(
                       "gen",
                       [shared, i = i64{0}]() mutable -> std::optional<i64> {
                         if (i >= items) return std::nullopt;
                         if (i == 1) {
                           const auto until = std::chrono::steady_clock::now() + 20s;
                           while (shared->fired[1].load() == 0 && std::chrono::steady_clock::now() < until)
                             std::this_thread::sleep_for(1ms);
                           if (shared->fired[1].load() == 0) shared->fired[2].store(1);  // item 0 never arrived
                         }
                         if (i == die_at && shared->fired[0].exchange(1) == 0) ::raise(SIGKILL);
                         std::this_thread::sleep_for(std::chrono::microseconds(300 + 700 * (i % 3 == 0)));
                         return i++;
                       },
                       pf::restart(1), pf::max_latency(2ms))
                   .map(
                       "id",
                       [shared](i64 x) {
                         if (x == 0) shared->fired[1].store(1);
                         return x;
                       },
                       pf::replicas(2))
                   .collect()
                   .run();
      got = std::move(r.value);
      report = std::move(r.report);
    } catch (const pf::stage_error& e) {
      message = e.what();
    }
    CHECK(message == "");
    CHECK(shared->fired[2].load() == 0);  // item 0 reached the map within the bound, under restart
    REQUIRE(report.restarts.size() == 1);
    CHECK(report.restarts[0].batch.find("source items [0, ") != std::string::npos);
    CHECK(report.stages[0].note.find("max_latency") == std::string::npos);  // no "no latency bound" note any more
    check_each_once(got, items, false);  // none lost, none twice
    ::munmap(shared, sizeof(Shared));
    check_clean(shm_before);
  });
}

// Killed from outside while it writes items of 1 MiB (16 fragments of a slot, more than a ring
// holds), the generator dies with an item half sent: once the map has the 11th large item, both map replicas
// stop taking items for 300 ms, so the generator blocks on a full ring inside an item; then the
// replica holding item 10 kills it. The replacement drops the items sent whole and that item's
// fragments, and sends the rest of the item into the ring it was going to, then the stream on.
TEST_CASE("a generator killed with an item larger than a slot half sent: its replacement sends the rest of it, then the stream on") {
  for (const bool ordered : {false, true}) {
    isolated(std::string("generator restart mid-item") + (ordered ? ", ordered" : ""), [ordered] {
      const auto shm_before = pt::dev_shm_entries();
      Shared* shared = make_shared_page();
      // 302 small items first (many to a slot where the replay cuts one slot per item: the
      // replay's slot count differs from the one it replays), then items of 1 MiB.
      constexpr i64 small = 302;
      constexpr i64 items = small + 30;
      static constexpr auto size_of = [](i64 i) { return i < small ? std::size_t{16} : std::size_t{1} << 20; };
      const auto r = (ordered ? pf::pipeline("gen mid-item", pf::ordered) : pf::pipeline("gen mid-item"))
                         .source(
                             "gen",
                             [shared, i = i64{0}]() mutable -> std::optional<std::string> {
                               shared->fired[3].store(static_cast<int>(::getpid()));
                               if (i >= items) return std::nullopt;
                               std::string s(size_of(i), static_cast<char>('a' + i % 26));
                               std::memcpy(s.data(), &i, sizeof i);
                               ++i;
                               return s;
                             },
                             pf::restart(1))
                         .map(
                             "id",
                             [shared](const std::string& s) {
                               i64 i = 0;
                               std::memcpy(&i, s.data(), sizeof i);
                               const bool intact = s.size() == size_of(i) && s.back() == static_cast<char>('a' + i % 26) &&
                                                   s[s.size() / 2] == static_cast<char>('a' + i % 26);
                               if (i == small + 10 && shared->fired[0].exchange(1) == 0) {
                                 shared->fired[4].store(1);  // the other replica stalls on its next item
                                 std::this_thread::sleep_for(300ms);
                                 ::kill(shared->fired[3].load(), SIGKILL);
                                 shared->fired[4].store(0);
                               }
                               while (shared->fired[4].load() != 0) std::this_thread::sleep_for(1ms);
                               return intact ? i : i64{-1};
                             },
                             pf::replicas(2))
                         .collect()
                         .run();
      check_each_once(r.value, items, ordered);  // none lost, none twice, none torn
      REQUIRE(r.report.restarts.size() == 1);
      MESSAGE(r.report.restarts[0].batch);
      CHECK(r.report.restarts[0].batch.find(" of item ") != std::string::npos);  // it died mid-item
      ::munmap(shared, sizeof(Shared));
      check_clean(shm_before);
    });
  }
}

// A generator that does not yield the same items when run again (here: it reads what its dead
// predecessor left in shared memory, as one reading a socket or a shared file offset would): the
// replay's dropped slots differ from those sent, and run() fails naming the source, instead of
// sending a mix of two different streams.
TEST_CASE("a restarted generator that yields different items is a stage_error, not silently wrong data") {
  for (const bool shorter : {false, true})
  isolated(shorter ? "generator restart, a shorter stream" : "generator restart, not deterministic", [shorter] {
    const auto shm_before = pt::dev_shm_entries();
    Shared* shared = make_shared_page();
    std::string message, stage;
    try {
      pf::pipeline("gen differs")
          .source(
              "gen",
              [shared, shorter, i = i64{0}]() mutable -> std::optional<i64> {
                if (i >= 100000) return std::nullopt;
                if (i == 50000 && shared->fired[0].exchange(1) == 0) ::raise(SIGKILL);
                if (shorter) {
                  if (shared->fired[0].load() != 0 && i == 20000) return std::nullopt;  // ends before what was sent
                  return i++;
                }
                return shared->fired[0].load() != 0 ? 7 * i++ : i++;  // another stream after the death
              },
              pf::restart(1))
          .map("m", [](i64 x) { return x; }, pf::replicas(2))
          .reduce("sum", i64{0}, std::plus<>{}, std::plus<>{})
          .run();
    } catch (const pf::stage_error& e) {
      message = e.what();
      stage = e.stage();
    }
    CHECK(stage == "gen");
    CHECK(message.find("must yield the same items") != std::string::npos);
    ::munmap(shared, sizeof(Shared));
    check_clean(shm_before);
  });
}

TEST_CASE("ordered: kill -9 rounds keep the order item for item, and an order-sensitive reduce its partials' order") {
  constexpr i64 n = 200000;
  std::vector<i64> expected;
  Ordered_hash want;
  for (i64 x = 0; x < n; ++x) {
    expected.push_back(spin(spin(x, 300), 300) & 0xffffff);
    want = fold_hash(want, expected.back());
  }
  for (std::uint64_t seed : {41u, 42u, 43u}) {
    isolated("ordered kill -9 round seed " + std::to_string(seed), [&] {
      const auto shm_before = pt::dev_shm_entries();
      Shared* shared = make_shared_page();
      pf::result<std::vector<i64>> r;
      pf::result<Ordered_hash> h;
      {
        Killer killer(seed, 8, 15ms, 80ms, shared);
        // Both kinds of restartable group (chunk-claiming, channel-fed), ordered between them and
        // into the caller; rings of 2 slots: a slot lost per death would hang the run.
        r = pf::pipeline("okill9", pf::ordered, pf::restart(100), pf::ring_slots(2), pf::batch_bytes(4096))
                .source("n", pf::iota<i64>(0, n))
                .map("a", [](i64 x) { return spin(x, 300); }, pf::replicas(2))
                .map("b", [](i64 x) { return spin(x, 300) & 0xffffff; }, pf::replicas(2), pf::own_process)
                .collect()
                .run();
        h = pf::pipeline("okill9r", pf::ordered, pf::restart(100), pf::ring_slots(2), pf::batch_bytes(4096))
                .source("n", pf::iota<i64>(0, n))
                .map("a", [](i64 x) { return spin(x, 300); }, pf::replicas(2))
                .map("b", [](i64 x) { return spin(x, 300) & 0xffffff; }, pf::replicas(2), pf::own_process)
                .reduce("hash", Ordered_hash{}, fold_hash, join_hash)
                .run();
      }
      REQUIRE(r.value.size() == expected.size());
      std::size_t first_wrong = 0;
      while (first_wrong < expected.size() && r.value[first_wrong] == expected[first_wrong]) ++first_wrong;
      CHECK_MESSAGE(first_wrong == expected.size(), "first item out of place: ", first_wrong);
      CHECK(h.value == want);
      const int kills = shared->kills.load();
      MESSAGE("seed ", seed, ": ", kills, " kills, ", total_restarts(r.report), " + ", total_restarts(h.report), " restarts");
      CHECK(total_restarts(r.report) + total_restarts(h.report) >= 1);
      CHECK(total_restarts(r.report) + total_restarts(h.report) <= static_cast<std::uint32_t>(kills));
      ::munmap(shared, sizeof(Shared));
      check_clean(shm_before);
    });
  }
}

TEST_CASE("ordered: a replica killed before its first batch starts at its own first batch, whatever its rings hold") {
  // A consumer replica dies before it began any batch while a ring other than its first batch's
  // holds a later batch of its own. Its record names no batch: its replacement must not take that
  // ring's head for a batch in hand (seen: it started there, skipped its first batches and failed
  // with "unexpected batch 0" when they came).
  constexpr i64 n = 30000;  // ~117 chunks
  isolated("ordered death before the first batch", [&] {
    const auto shm_before = pt::dev_shm_entries();
    Shared* shared = make_shared_page();
    const auto r = pf::pipeline("ofirst", pf::ordered, pf::restart(4), pf::ring_slots(2), pf::batch_bytes(4096))
                       .source("n", Chunked{n})
                       // Replica 1 claims the first chunks; replica 0 starts late, so its first
                       // chunk is a later batch, for either consumer. fired[4] counts its items.
                       .map("a", pf::per_replica([shared] {
                              if (pf::this_replica().index == 0) std::this_thread::sleep_for(150ms);
                              return [shared](i64 x) {
                                if (pf::this_replica().index == 0) shared->fired[4].fetch_add(1);
                                return x;
                              };
                            }),
                            pf::replicas(2))
                       // Both consumers die once, before their first batch, once replica 0 of "a"
                       // works in its second chunk: its first was published (into ring 0 of one
                       // of them; under restart a chunk ends with its output published).
                       .map("b", pf::per_replica([shared] {
                              if (shared->fired[pf::this_replica().index].exchange(1) == 0) {
                                const auto give_up = std::chrono::steady_clock::now() + 10s;
                                while (shared->fired[4].load() <= static_cast<int>(Chunked::chunk) &&
                                       std::chrono::steady_clock::now() < give_up)
                                  std::this_thread::sleep_for(1ms);
                                ::raise(SIGKILL);
                              }
                              return [](i64 x) { return x; };
                            }),
                            pf::replicas(2), pf::own_process)
                       .collect()
                       .run();
    CHECK(shared->fired[4].load() > static_cast<int>(Chunked::chunk));
    check_each_once(r.value, n, /*ordered=*/true);
    CHECK(stage(r.report, "b").restarts == 2);
    ::munmap(shared, sizeof(Shared));
    check_clean(shm_before);
  });
}

TEST_CASE("ordered: a batch split over many slots arrives whole and in order when its producer or its consumer dies inside it") {
  // One item per chunk; each fans out to 20000 items over ~40 slots of 4 KiB, one ordered batch.
  constexpr i64 n = 60;
  constexpr i64 fan = 20000;
  std::vector<i64> expected(static_cast<std::size_t>(n * fan));
  std::iota(expected.begin(), expected.end(), i64{0});
  struct where {
    const char* name;
    bool in_producer;
  };
  for (const where w : {where{"producer", true}, where{"consumer", false}}) {
    isolated(std::string("ordered split batch, death in the ") + w.name, [&] {
      const auto shm_before = pt::dev_shm_entries();
      Shared* shared = make_shared_page();
      const bool in_producer = w.in_producer;
      const auto r = pf::pipeline("osplit", pf::ordered, pf::restart(2), pf::batch_bytes(4096), pf::ring_slots(4))
                         .source("n", pf::iota<i64>(0, n))
                         .flat_map<i64>("fan", [shared, in_producer](i64 x, pf::emitter<i64>& emit) {
                           for (i64 k = 0; k < fan; ++k) {
                             // The producer dies once after many of batch 30's slots went out.
                             if (in_producer && x == 30 && k == 15000 && shared->fired[0].exchange(1) == 0) ::raise(SIGSEGV);
                             emit(x * fan + k);
                           }
                         }, pf::replicas(2))
                         .map("id", [shared, in_producer](i64 y) {
                           // The consumer dies once in the middle of batch 31, between its slots.
                           if (!in_producer && y == 31 * fan + 9000 && shared->fired[1].exchange(1) == 0) ::raise(SIGSEGV);
                           return y;
                         }, pf::replicas(2), pf::own_process)
                         .collect()
                         .run();
      REQUIRE(r.value.size() == expected.size());
      std::size_t first_wrong = 0;
      while (first_wrong < expected.size() && r.value[first_wrong] == expected[first_wrong]) ++first_wrong;
      CHECK_MESSAGE(first_wrong == expected.size(), "first item out of place: ", first_wrong);
      REQUIRE(r.report.restarts.size() == 1);
      CHECK(r.report.restarts[0].stage == (in_producer ? "fan" : "id"));
      CHECK(r.report.restarts[0].cause.find("signal 11") != std::string::npos);
      if (in_producer) CHECK(r.report.restarts[0].sent_slots > 0);  // it died with part of its output sent
      ::munmap(shared, sizeof(Shared));
      check_clean(shm_before);
    });
  }
}

TEST_CASE("what restart cannot do is refused by name") {
  isolated("refusals", [] {
    const auto thrown = [](auto&& run) -> std::string {
      try {
        run();
      } catch (const std::invalid_argument& e) {
        return e.what();
      }
      return "";
    };
    CHECK(thrown([] {
            pf::pipeline("t", pf::restart(1)).source("n", pf::iota<i64>(0, 10)).map("m", [](i64 x) { return x; }).collect().run(pf::in_threads);
          }).find("pf::restart") != std::string::npos);
    // The pipeline's default leaves a generator source alone.
    const auto r = pf::pipeline("g2", pf::restart(1))
                       .source("gen", pf::generate([i = i64{0}]() mutable -> std::optional<i64> {
                         if (i == 1000) return std::nullopt;
                         return i++;
                       }))
                       .map("m", [](i64 x) { return x; })
                       .reduce("sum", i64{0}, std::plus<>{}, std::plus<>{})
                       .run();
    CHECK(r.value == i64{1000} * 999 / 2);
    // ... and says so in the report.
    CHECK(r.report.stages[0].note.find("not restarted under the pipeline's pf::restart") != std::string::npos);
    CHECK(r.report.to_string().find("note: stage 'gen' not restarted") != std::string::npos);
  });
}

// Checks pf::recycle (include/procflow/recycle.hpp) through run(): a replica is replaced by a
// fresh process after N items or above an RSS limit, in its slot, with
//  - no item lost or duplicated (collect compared with the source, a fused reduce's sum exact),
//    on a chunk-claiming group and on a ring-fed one;
//  - the per_replica factory run again in every replacement (once per process) and each
//    process's teardown (finish()) run before it leaves;
//  - a stage that leaks memory on purpose kept under its RSS limit, with the sequential result;
//  - ordered pipelines keep their order item for item (a replacement reads on at the batch its
//    predecessor expected next; a ring-fed replica leaves between batches, so an ordered terminal
//    reduce's partial of a batch is sent whole);
//  - thread mode refused by name.
// Every case runs in a child of the test under a watchdog (support/isolated.hpp).
#include "support/child_process.hpp"
#include "support/isolated.hpp"
#include "support/ordered_hash.hpp"

#include <procflow/procflow.hpp>

#include <doctest/doctest.h>

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace pf = procflow;
namespace pt = procflow::test;
using i64 = std::int64_t;
using namespace std::chrono_literals;

namespace {

void isolated(const std::string& what, const std::function<void()>& body) { pt::run_isolated(what, 120s, body); }

// Counters shared by every process of a run.
struct Shared {
  std::atomic<int> factories;
  std::atomic<int> finishes;
  std::atomic<std::uint64_t> max_rss;  // the largest resident size a replica process saw itself at
};

std::uint64_t resident_bytes() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  unsigned long long size = 0, resident = 0;
  if (f) {
    if (std::fscanf(f, "%llu %llu", &size, &resident) != 2) resident = 0;
    std::fclose(f);
  }
  return resident * static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
}
Shared* make_shared_page() {
  void* p = ::mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  REQUIRE(p != MAP_FAILED);
  return new (p) Shared{};
}

// A stage callable made per replica process: counts its setup and its teardown.
struct counted {
  Shared* shared;
  i64 operator()(i64 x) const { return x * 3; }
  void finish() { shared->finishes.fetch_add(1); }
};

const pf::stage_report& stage(const pf::run_report& r, const std::string& name) {
  for (const auto& s : r.stages)
    if (s.name == name) return s;
  throw std::runtime_error("no stage " + name);
}

void check_all_once(std::vector<i64> got, i64 n) {
  std::sort(got.begin(), got.end());
  REQUIRE(got.size() == static_cast<std::size_t>(n));
  bool exact = true;
  for (i64 i = 0; i < n; ++i) exact = exact && got[static_cast<std::size_t>(i)] == 3 * i;
  CHECK(exact);
}

}  // namespace

TEST_CASE("recycle after N items: nothing lost or duplicated, the factory runs again in every replacement") {
  constexpr i64 n = 200000;
  isolated("chunk-claiming group", [] {
    Shared* shared = make_shared_page();
    const auto r = pf::pipeline("recycle")
                       .source("n", pf::iota<i64>(0, n))
                       .map("m", pf::per_replica([shared] {
                         shared->factories.fetch_add(1);
                         return counted{shared};
                       }), pf::replicas(2), pf::recycle::after_items(20000))
                       .collect()
                       .run();
    check_all_once(r.value, n);
    const auto& m = stage(r.report, "m");
    MESSAGE(m.recycles, " recycles, ", shared->factories.load(), " factories");
    CHECK(m.recycles >= 6);  // ~100000 items per slot, a new process every 20000
    CHECK(shared->factories.load() == 2 + static_cast<int>(m.recycles));  // once per process
    CHECK(shared->finishes.load() == 2 + static_cast<int>(m.recycles));   // every process's teardown
    CHECK(m.replicas == 2);
    CHECK(r.report.processes == 2 + m.recycles);
    ::munmap(shared, sizeof(Shared));
  });
  isolated("ring-fed group and a fused reduce", [] {
    Shared* shared = make_shared_page();
    const auto r = pf::pipeline("recycle2")
                       .source("n", pf::iota<i64>(0, n))
                       .map("m", pf::per_replica([shared] {
                         shared->factories.fetch_add(1);
                         return counted{shared};
                       }), pf::replicas(2), pf::own_process, pf::recycle::after_items(15000))
                       .reduce("sum", i64{0}, std::plus<>{}, std::plus<>{})
                       .run();
    CHECK(r.value == 3 * (n * (n - 1) / 2));
    const auto& m = stage(r.report, "m");
    CHECK(m.recycles >= 8);
    CHECK(shared->factories.load() == 2 + static_cast<int>(m.recycles));
    ::munmap(shared, sizeof(Shared));
  });
}

TEST_CASE("recycle in an ordered pipeline: every item once and in order, with batches split over slots") {
  isolated("ordered chunk-claiming group", [] {
    Shared* shared = make_shared_page();
    constexpr i64 n = 200000;
    const auto r = pf::pipeline("orecycle", pf::ordered)
                       .source("n", pf::iota<i64>(0, n))
                       .map("m", counted{shared}, pf::replicas(2), pf::recycle::after_items(20000))
                       .collect()
                       .run();
    REQUIRE(r.value.size() == static_cast<std::size_t>(n));
    bool in_order = true;
    for (i64 i = 0; i < n; ++i) in_order = in_order && r.value[static_cast<std::size_t>(i)] == 3 * i;
    CHECK(in_order);
    CHECK(stage(r.report, "m").recycles >= 6);
    ::munmap(shared, sizeof(Shared));
  });
  isolated("ordered ring-fed group behind a fan-out", [] {
    Shared* shared = make_shared_page();
    // Each source item fans out to 1000 items over ~2 slots of 4 KiB: one ordered batch of several slots.
    constexpr i64 n = 200, fan = 1000;
    const auto r = pf::pipeline("orecycle2", pf::ordered, pf::batch_bytes(4096))
                       .source("n", pf::iota<i64>(0, n))
                       .flat_map<i64>("fan", [](i64 x, pf::emitter<i64>& emit) {
                         for (i64 k = 0; k < fan; ++k) emit(x * fan + k);
                       }, pf::replicas(2))
                       .map("m", counted{shared}, pf::replicas(2), pf::own_process, pf::recycle::after_items(15000))
                       .collect()
                       .run();
    REQUIRE(r.value.size() == static_cast<std::size_t>(n * fan));
    std::size_t first_wrong = 0;
    while (first_wrong < r.value.size() && r.value[first_wrong] == 3 * static_cast<i64>(first_wrong)) ++first_wrong;
    CHECK_MESSAGE(first_wrong == r.value.size(), "first item out of place: ", first_wrong);
    CHECK(stage(r.report, "m").recycles >= 8);
    ::munmap(shared, sizeof(Shared));
  });
}

TEST_CASE("recycle in an ordered pipeline ending in an order-sensitive reduce: a replica leaves between batches") {
  // The recycled group holds the terminal reduce, which sends its partial per ordered batch at the
  // batch's end; a batch (5000 items, 40 KB) spans 10 slots of 4 KiB and a replica's share (7000
  // items) ends inside one, so a replica that left there would take that batch's first part of
  // the partial with it.
  isolated("ordered terminal reduce in a recycled ring-fed group", [] {
    constexpr i64 n = 40, fan = 5000;
    pt::Ordered_hash want;
    for (i64 x = 0; x < n * fan; ++x) want = pt::fold_hash(want, 3 * x);
    const auto r = pf::pipeline("orecycle3", pf::ordered, pf::batch_bytes(4096))
                       .source("n", pf::iota<i64>(0, n))
                       .flat_map<i64>("fan", [](i64 x, pf::emitter<i64>& emit) {
                         for (i64 k = 0; k < fan; ++k) emit(x * fan + k);
                       }, pf::replicas(2))
                       .map("m", [](i64 x) { return 3 * x; }, pf::replicas(2), pf::own_process, pf::recycle::after_items(7000))
                       .reduce("hash", pt::Ordered_hash{}, pt::fold_hash, pt::join_hash)
                       .run();
    CHECK(r.value.n == static_cast<std::uint64_t>(n * fan));
    CHECK(r.value == want);
    CHECK(stage(r.report, "m").recycles >= 8);
  });
}

TEST_CASE("a stage that leaks on purpose stays under its RSS limit through recycling, with the sequential result") {
  isolated("leak", [] {
    Shared* shared = make_shared_page();
    constexpr i64 n = 3000;
    constexpr std::size_t leak = 128 * 1024;  // per item: 375 MiB over the run without recycling
    constexpr std::uint64_t limit = 48ull << 20;
    const auto r = pf::pipeline("leak", pf::batch_bytes(1024))
                       .source("n", pf::iota<i64>(0, n))
                       .map("leaky", [shared](i64 x) {
                         auto* p = static_cast<char*>(std::malloc(leak));  // never freed
                         std::memset(p, static_cast<int>(x), leak);
                         asm volatile("" : : "r"(p) : "memory");  // the pages are touched and kept
                         const std::uint64_t rss = resident_bytes();
                         for (std::uint64_t m = shared->max_rss.load(); rss > m && !shared->max_rss.compare_exchange_weak(m, rss);) {}
                         return x * 3;
                       }, pf::replicas(2), pf::recycle::above_rss(limit))
                       .reduce("sum", i64{0}, std::plus<>{}, std::plus<>{})
                       .run();
    CHECK(r.value == 3 * (n * (n - 1) / 2));
    const auto& s = stage(r.report, "leaky");
    MESSAGE(s.recycles, " recycles, largest RSS a replica saw ", shared->max_rss.load() >> 20, " MiB (limit ", limit >> 20, " MiB)");
    CHECK(s.recycles >= 4);
    // Checked after every batch: the limit plus one batch's growth (a chunk of a few items here).
    CHECK(shared->max_rss.load() < limit + (4ull << 20));
    CHECK(shared->max_rss.load() > limit / 2);  // it did grow: the leak is real
    ::munmap(shared, sizeof(Shared));
  });
}

TEST_CASE("recycle is refused where it cannot hold") {
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
            pf::pipeline("t").source("n", pf::iota<i64>(0, 10)).map("m", [](i64 x) { return x; }, pf::recycle::after_items(5)).collect().run(pf::in_threads);
          }).find("pf::recycle") != std::string::npos);
  });
}

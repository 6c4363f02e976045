// pipeline_bench: source -> map(x*x) -> filter(x%3==0) -> reduce(sum) over int64 items, procflow
// in processes against a plain sequential loop and tbb::parallel_pipeline (batched tokens and one
// item per token) in the same run (SPEC §5, "pipeline overhead"). Also: peak RSS for 10x the
// input (bounded memory), and a large collect() against a push_back loop (collect_*).
//
//   pipeline_bench [--json] [--quick] [--repeats=N] [--only=...]
#include "bench_support.hpp"
#include "pipeline_peers.hpp"

#include <procflow/procflow.hpp>

#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sys/mman.h>

#include <array>
#include <atomic>
#include <csignal>
#include <thread>

namespace pf = procflow;

namespace {

// A lambda, not a function: a function pointer cannot be inlined into the stage's batch loop.
constexpr auto square = [](std::int64_t x) { return static_cast<std::uint64_t>(x) * static_cast<std::uint64_t>(x); };

// The same as a function, for the function-pointer rows.
std::uint64_t square_function(std::int64_t x) { return static_cast<std::uint64_t>(x) * static_cast<std::uint64_t>(x); }

struct Run {
  std::uint64_t sum;
  double seconds;
};

// The splittable fused pipeline with `map_fn` as the map's callable: `&square_function` (a
// function pointer: one indirect call per item) or pf::fn<&square_function> (inlined).
template <class MapFn>
Run procflow_map_callable(std::uint64_t n, std::uint32_t replicas, MapFn map_fn) {
  const auto t0 = std::chrono::steady_clock::now();
  const std::uint64_t sum = pf::pipeline("trivial", pf::allow_threads)
                                .source("numbers", pf::iota<std::int64_t>(0, static_cast<std::int64_t>(n)))
                                .map("square", map_fn, pf::replicas(replicas))
                                .filter("div3", [](std::uint64_t v) { return v % 3 == 0; })
                                .reduce("sum", std::uint64_t{0}, std::plus<>{}, std::plus<>{})
                                .run()
                                .value;
  return {sum, bench::seconds_since(t0)};
}

// The benchmark pipeline. `splittable`: an iota source claimed in chunks by the replicas (no ring
// before the first stage); otherwise a generator source in its own process feeding them.
// `latency_off`: pf::max_latency(pf::latency_off) instead of the default bound (the peer that
// shows what the latency flusher costs at full rate). `counters_off`: pf::counters_off (the peer
// that shows what the built-in counters and the supervisor's sampling cost).
// `restart`: pf::restart(3) on every stage (its bookkeeping without any death: issue 8's "on vs off").
Run procflow_trivial(std::uint64_t n, std::uint32_t replicas, bool splittable, bool fusion, bool latency_off = false, bool threads = false,
                     bool counters_off = false, bool restart = false, bool pinned = false) {
  const auto t0 = std::chrono::steady_clock::now();
  pf::profile_options profile;
  profile.counters = !counters_off;
  const pf::pinning pin(pinned);
  auto start = restart       ? pf::pipeline("trivial", pf::allow_threads, pf::fusion(fusion), pin, pf::restart(3), profile)
               : latency_off ? pf::pipeline("trivial", pf::allow_threads, pf::fusion(fusion), pin, pf::max_latency(pf::latency_off), profile)
                             : pf::pipeline("trivial", pf::allow_threads, pf::fusion(fusion), pin, profile);
  auto run = [&](auto flow) {
    return flow.map("square", square, pf::replicas(replicas))
        .filter("div3", [](std::uint64_t v) { return v % 3 == 0; })
        .reduce("sum", std::uint64_t{0}, std::plus<>{}, std::plus<>{});
  };
  auto go = [&](auto flow) { return threads ? run(flow).run(pf::in_threads) : run(flow).run(); };
  std::uint64_t sum = 0;
  if (splittable) {
    sum = go(start.source("numbers", pf::iota<std::int64_t>(0, static_cast<std::int64_t>(n)))).value;
  } else {
    sum = go(start.source("numbers", [i = std::int64_t{0}, end = static_cast<std::int64_t>(n)]() mutable -> std::optional<std::int64_t> {
            if (i == end) return std::nullopt;
            return i++;
          })).value;
  }
  return {sum, bench::seconds_since(t0)};
}

// pf::restart's recovery: the trivial pipeline (iota chunks, `replicas` fused replicas, restart(3))
// where one replica SIGKILLs itself at the middle item. Returns the run's seconds and the time from
// that death to the replacement's first item (its slot working again), from a shared page.
struct Recovery {
  Run run;
  double death_to_resume_s;
};
Recovery restart_recovery(std::uint64_t n, std::uint32_t replicas) {
  struct Page {
    std::atomic<std::int64_t> death_ns{0};
    std::atomic<std::int64_t> resume_ns{0};
    std::atomic<std::int32_t> dead_pid{0};
    std::atomic<std::uint32_t> dead_index{0};
  };
  void* mem = ::mmap(nullptr, sizeof(Page), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) std::exit(1);
  auto* page = new (mem) Page{};
  const auto now_ns = [] { return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count(); };
  const auto t0 = std::chrono::steady_clock::now();
  const auto mid = static_cast<std::int64_t>(n / 2);
  const std::uint64_t sum =
      pf::pipeline("recovery", pf::allow_threads, pf::restart(3))
          .source("numbers", pf::iota<std::int64_t>(0, static_cast<std::int64_t>(n)))
          .map("square", [page, mid, now_ns](std::int64_t x) {
            if (page->death_ns.load(std::memory_order_relaxed) != 0 && page->resume_ns.load(std::memory_order_relaxed) == 0) {
              const auto me = pf::this_replica();
              if (me.index == page->dead_index.load() && me.pid != page->dead_pid.load()) page->resume_ns.store(now_ns());
            }
            if (x == mid) {
              std::int64_t none = 0;
              if (page->death_ns.compare_exchange_strong(none, now_ns())) {
                page->dead_index.store(pf::this_replica().index);
                page->dead_pid.store(pf::this_replica().pid);
                ::raise(SIGKILL);
              }
            }
            return static_cast<std::uint64_t>(x) * static_cast<std::uint64_t>(x);
          }, pf::replicas(replicas))
          .filter("div3", [](std::uint64_t v) { return v % 3 == 0; })
          .reduce("sum", std::uint64_t{0}, std::plus<>{}, std::plus<>{})
          .run()
          .value;
  const double seconds = bench::seconds_since(t0);
  const double gap = static_cast<double>(page->resume_ns.load() - page->death_ns.load()) / 1e9;
  ::munmap(mem, sizeof(Page));
  return {{sum, seconds}, gap};
}

// Runs the generator-fed pipeline over `n` items in a fresh child and returns the peak RSS (KiB)
// of the child (supervisor) and of its largest replica.
std::pair<long, long> peak_rss_kib(std::uint64_t n) {
  int fds[2];
  if (::pipe(fds) != 0) std::exit(1);
  const pid_t pid = bench::fork_child([&] {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    ::close(fds[0]);
    procflow_trivial(n, 2, /*splittable=*/false, true);
    rusage self{}, kids{};
    getrusage(RUSAGE_SELF, &self);
    getrusage(RUSAGE_CHILDREN, &kids);
    long v[2] = {self.ru_maxrss, kids.ru_maxrss};
    if (::write(fds[1], v, sizeof v) != static_cast<ssize_t>(sizeof v)) return 1;
    return 0;
  });
  ::close(fds[1]);
  long v[2] = {0, 0};
  if (::read(fds[0], v, sizeof v) != static_cast<ssize_t>(sizeof v)) std::exit(1);
  ::close(fds[0]);
  bench::wait_child(pid);
  return {v[0], v[1]};
}

}  // namespace

int main(int argc, char** argv) {
  const auto o = bench::parse_options(argc, argv);
  const auto n = static_cast<std::uint64_t>(100e6 * o.scale);
  const std::uint64_t expected = bench::peers::trivial_expected(n);
  const std::size_t cores = std::max(1u, std::thread::hardware_concurrency());
  std::vector<bench::Row> rows;
  double sequential_rate = 0;

  auto measure = [&](const std::string& variant, std::uint64_t items, const std::function<Run()>& once, const std::string& note) {
    if (!o.wants(variant)) return;
    std::vector<double> rates, cpus;
    for (int i = 0; i < o.repeats; ++i) {
      const double cpu0 = bench::tree_cpu_seconds();
      const Run r = once();
      cpus.push_back(bench::tree_cpu_seconds() - cpu0);
      if (r.sum != (items == n ? expected : bench::peers::trivial_expected(items))) {
        fmt::print(stderr, "{}: wrong sum {}\n", variant, r.sum);
        std::exit(1);
      }
      rates.push_back(static_cast<double>(items) / r.seconds);
    }
    const double rate = bench::median(rates);
    if (variant == "sequential") sequential_rate = rate;
    bench::Row row{"pipeline", variant, rate, {}, note};
    if (sequential_rate > 0) row.extra = {{"speedup", rate / sequential_rate}};
    // CPU ns per item of the whole process tree (the run's replicas included), median.
    row.extra.emplace_back("cpu_ns_per_item", bench::median(cpus) * 1e9 / static_cast<double>(items));
    rows.push_back(row);
  };
  auto wrap = [](bench::peers::TrivialResult r) { return Run{r.sum, r.seconds}; };

  measure("sequential", n, [&] { return wrap(bench::peers::sequential_trivial(n)); }, "plain loop");
  measure("tbb_batched", n, [&] { return wrap(bench::peers::tbb_trivial(n, 1024, cores)); }, "parallel_pipeline, 1024 items/token");
  measure("tbb_batched_8k", n, [&] { return wrap(bench::peers::tbb_trivial(n, 8192, cores)); }, "parallel_pipeline, 8192 items/token (procflow's chunk)");
  const std::uint64_t n_small = std::max<std::uint64_t>(1, n / 100);
  measure("tbb_per_item", n_small, [&] { return wrap(bench::peers::tbb_trivial(n_small, 1, cores)); }, "one item per token (n/100)");
  const auto r = static_cast<std::uint32_t>(cores);
  measure("procflow", n, [&] { return procflow_trivial(n, r, true, true); }, fmt::format("iota claimed in chunks, {} fused replicas", r));
  measure("procflow_pinned", n, [&] { return procflow_trivial(n, r, true, true, false, false, false, false, true); },
          "as procflow, each replica pinned to a CPU (pf::pinning)");
  measure("procflow_1_replica", n, [&] { return procflow_trivial(n, 1, true, true); }, "iota chunks, 1 fused replica");
  measure("procflow_generator", n, [&] { return procflow_trivial(n, r, false, true); }, "generator process -> rings -> fused replicas");
  measure("procflow_generator_pinned", n, [&] { return procflow_trivial(n, r, false, true, false, false, false, false, true); },
          "as procflow_generator, each process pinned to a CPU (pf::pinning)");
  measure("procflow_function_pointer", n, [&] { return procflow_map_callable(n, r, &square_function); },
          "as procflow, the map given a function pointer (&square_function)");
  measure("procflow_fn_constant", n, [&] { return procflow_map_callable(n, r, pf::fn<&square_function>); },
          "as procflow, the map given pf::fn<&square_function>");
  measure("procflow_threads", n, [&] { return procflow_trivial(n, r, true, true, false, true); },
          fmt::format("run(pf::in_threads): iota chunks, {} replicas as oneTBB parallel_pipeline filters", r));
  measure("procflow_threads_generator", n, [&] { return procflow_trivial(n, r, false, true, false, true); },
          "run(pf::in_threads): generator pulled by a serial filter");
  // flat_map: every item fans out to 4 (x, x+1, x+2, x+3) through the emitter, and through a
  // returned range; fused with the reduce, 2 replicas claiming iota chunks. 4n items summed.
  auto flat = [&](bool emitter) {
    const auto t0 = std::chrono::steady_clock::now();
    auto src = pf::pipeline("flat", pf::allow_threads).source("numbers", pf::iota<std::int64_t>(0, static_cast<std::int64_t>(n / 4)));
    auto red = [&](auto f) {
      return f.reduce("sum", std::uint64_t{0}, [](std::uint64_t a, std::int64_t x) { return a + static_cast<std::uint64_t>(x); }, std::plus<>{}).run().value;
    };
    const std::uint64_t sum =
        emitter ? red(src.flat_map<std::int64_t>("fan4", [](std::int64_t x, pf::emitter<std::int64_t>& emit) {
                    for (std::int64_t k = 0; k < 4; ++k) emit(x + k);
                  }, pf::replicas(r)))
                : red(src.flat_map("fan4", [](std::int64_t x) { return std::array<std::int64_t, 4>{x, x + 1, x + 2, x + 3}; }, pf::replicas(r)));
    const std::uint64_t m = n / 4;
    if (sum != 4 * (m * (m - 1) / 2) + 6 * m) {
      fmt::print(stderr, "flat_map: wrong sum {}\n", sum);
      std::exit(1);
    }
    return bench::seconds_since(t0);
  };
  for (const bool emitter : {true, false}) {
    const std::string variant = emitter ? "procflow_flat_map_emitter" : "procflow_flat_map_range";
    if (!o.wants(variant)) continue;
    std::vector<double> rates;
    for (int i = 0; i < o.repeats; ++i) rates.push_back(static_cast<double>(n / 4 * 4) / flat(emitter));
    rows.push_back({"pipeline", variant, bench::median(rates), {}, "iota -> flat_map x4 -> reduce, 2 fused replicas (output items/s)"});
  }
  // A large result: iota(0, n/2) -> map x r -> collect(), every item kept, against a push_back loop
  // of the same values (rows collect_sequential, collect_procflow; items/s, speedup over the loop).
  {
    const auto m = static_cast<std::int64_t>(n / 2);
    auto checked = [&](const std::vector<std::int64_t>& v, const char* variant) {
      std::uint64_t sum = 0;
      for (const std::int64_t x : v) sum += static_cast<std::uint64_t>(x);
      const auto um = static_cast<std::uint64_t>(m);
      if (v.size() != um || sum != 3 * (um * (um - 1) / 2) + um) {
        fmt::print(stderr, "{}: wrong result ({} items)\n", variant, v.size());
        std::exit(1);
      }
    };
    const auto value = [](std::int64_t x) { return 3 * x + 1; };
    double loop_rate = 0;
    for (const char* variant : {"collect_sequential", "collect_procflow"}) {
      if (!o.wants(variant)) continue;
      const bool loop = variant == std::string_view("collect_sequential");
      std::vector<double> rates;
      for (int i = 0; i < o.repeats; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        std::vector<std::int64_t> v;
        if (loop) {
          for (std::int64_t x = 0; x < m; ++x) v.push_back(value(x));
        } else {
          v = pf::pipeline("collect", pf::allow_threads).source("numbers", pf::iota<std::int64_t>(0, m)).map("f", value, pf::replicas(r)).collect().run().value;
        }
        rates.push_back(static_cast<double>(m) / bench::seconds_since(t0));
        checked(v, variant);
      }
      bench::Row row{"pipeline", variant, bench::median(rates), {}, loop ? "push_back loop, n/2 items" : "iota -> map x r -> collect(), n/2 items"};
      if (loop) loop_rate = row.items_per_s;
      else if (loop_rate > 0) row.extra = {{"speedup", row.items_per_s / loop_rate}};
      rows.push_back(row);
    }
  }
  measure("procflow_unfused", n_small * 10, [&] { return procflow_trivial(n_small * 10, r, false, false); },
          "every stage in its own processes (n/10)");
  // The latency bound at full rate: each procflow variant against the same with the bound off,
  // runs interleaved (the machine's load drifts), medians of the per-pair ratios.
  auto measure_bound = [&](const std::string& variant, std::uint64_t items, bool splittable, bool fusion) {
    if (!o.wants(variant + "_latency")) return;
    std::vector<double> with, without, ratio;
    for (int i = 0; i < o.repeats; ++i) {
      // Alternate the order, as measure_counters does: the second run of a pair may find warmer
      // caches, and always running the bound first charged that to it.
      Run a{}, b{};
      if (i % 2 == 0) {
        a = procflow_trivial(items, r, splittable, fusion, false);
        b = procflow_trivial(items, r, splittable, fusion, true);
      } else {
        b = procflow_trivial(items, r, splittable, fusion, true);
        a = procflow_trivial(items, r, splittable, fusion, false);
      }
      with.push_back(static_cast<double>(items) / a.seconds);
      without.push_back(static_cast<double>(items) / b.seconds);
      ratio.push_back(b.seconds / a.seconds);
    }
    rows.push_back({"pipeline", variant + "_latency_default", bench::median(with), {{"vs_off", bench::median(ratio)}}, "default bound (5 ms)"});
    rows.push_back({"pipeline", variant + "_latency_off", bench::median(without), {}, "max_latency(latency_off), same run"});
  };
  measure_bound("procflow", n, true, true);
  measure_bound("procflow_generator", n, false, true);
  measure_bound("procflow_unfused", n_small * 10, false, false);
  // What the built-in counters and sampling cost (SPEC §3: under 3%): each variant with them on
  // (the default) against pf::counters_off, runs interleaved, medians of the per-pair ratios.
  // `overhead` = 1 - (on rate / off rate) of the median pair: positive when counting costs.
  // `cpu_vs_off`: the same for the CPU time of the run (the caller and its reaped replicas), which a
  // loaded machine disturbs less than wall time.
  auto cpu_now = [] {
    rusage self{}, kids{};
    getrusage(RUSAGE_SELF, &self);
    getrusage(RUSAGE_CHILDREN, &kids);
    const auto s = [](const timeval& t) { return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) * 1e-6; };
    return s(self.ru_utime) + s(self.ru_stime) + s(kids.ru_utime) + s(kids.ru_stime);
  };
  auto measure_counters = [&](const std::string& variant, std::uint64_t items, bool splittable, bool fusion) {
    if (!o.wants(variant + "_counters")) return;
    std::vector<double> on, off, ratio, cpu_ratio;
    for (int i = 0; i < o.repeats; ++i) {
      const bool on_first = i % 2 == 0;  // alternate the order: the second run of a pair may find warmer caches
      Run a{}, b{};
      double cpu_a = 0, cpu_b = 0;
      auto run_on = [&] {
        const double c0 = cpu_now();
        a = procflow_trivial(items, r, splittable, fusion);
        cpu_a = cpu_now() - c0;
      };
      auto run_off = [&] {
        const double c0 = cpu_now();
        b = procflow_trivial(items, r, splittable, fusion, false, false, true);
        cpu_b = cpu_now() - c0;
      };
      if (on_first) {
        run_on();
        run_off();
      } else {
        run_off();
        run_on();
      }
      if (cpu_a > 0) cpu_ratio.push_back(cpu_b / cpu_a);
      if (a.sum != bench::peers::trivial_expected(items) || b.sum != a.sum) {
        fmt::print(stderr, "{}_counters: wrong sum {} / {}\n", variant, a.sum, b.sum);
        std::exit(1);
      }
      on.push_back(static_cast<double>(items) / a.seconds);
      off.push_back(static_cast<double>(items) / b.seconds);
      ratio.push_back(b.seconds / a.seconds);
    }
    const double median_ratio = bench::median(ratio);
    rows.push_back({"pipeline", variant + "_counters_on", bench::median(on),
                    {{"vs_off", median_ratio}, {"overhead", 1 - median_ratio}, {"cpu_vs_off", cpu_ratio.empty() ? 0.0 : bench::median(cpu_ratio)}},
                    "counters and sampling on (the default)"});
    rows.push_back({"pipeline", variant + "_counters_off", bench::median(off), {}, "pf::counters_off, same run, interleaved"});
  };
  measure_counters("procflow", n, true, true);
  measure_counters("procflow_generator", n, false, true);
  measure_counters("procflow_unfused", n_small * 10, false, false);
  // pf::restart (issue 8): its bookkeeping on the same pipeline, on vs off, runs interleaved,
  // medians of the per-pair ratios; then one death per run: how long from the death to the
  // replacement's first item, and what the run lost against the same run without the death.
  auto measure_restart = [&](const std::string& variant, bool splittable) {
    if (!o.wants(variant + "_restart")) return;
    std::vector<double> on, off, ratio;
    for (int i = 0; i < o.repeats; ++i) {
      const Run a = procflow_trivial(n, r, splittable, true, false, false, false, true);
      const Run b = procflow_trivial(n, r, splittable, true);
      if (a.sum != expected || b.sum != expected) {
        fmt::print(stderr, "{}: wrong sum\n", variant);
        std::exit(1);
      }
      on.push_back(static_cast<double>(n) / a.seconds);
      off.push_back(static_cast<double>(n) / b.seconds);
      ratio.push_back(b.seconds / a.seconds);
    }
    rows.push_back({"pipeline", variant + "_restart_on", bench::median(on), {{"vs_off", bench::median(ratio)}}, "pf::restart(3), no death"});
    rows.push_back({"pipeline", variant + "_restart_off", bench::median(off), {}, "same pipeline without restart, same run"});
  };
  measure_restart("procflow", true);
  measure_restart("procflow_generator", false);
  if (o.wants("restart_recovery")) {
    std::vector<double> gap, rate, ratio;
    for (int i = 0; i < o.repeats; ++i) {
      const Recovery a = restart_recovery(n, r);
      const Run b = procflow_trivial(n, r, true, true, false, false, false, true);
      if (a.run.sum != expected) {
        fmt::print(stderr, "restart_recovery: wrong sum {}\n", a.run.sum);
        std::exit(1);
      }
      gap.push_back(a.death_to_resume_s * 1e3);
      rate.push_back(static_cast<double>(n) / a.run.seconds);
      ratio.push_back(b.seconds / a.run.seconds);
    }
    rows.push_back({"pipeline", "procflow_restart_recovery", bench::median(rate),
                    {{"death_to_resume_ms", bench::median(gap)}, {"vs_no_death", bench::median(ratio)}},
                    "one replica SIGKILLs itself mid-run; restart(3) on, peer: procflow_restart_on without the death"});
  }
  bench::report(o, rows, "tbb_batched");

  if (o.wants("rss")) {
    std::vector<bench::Row> rss;
    const auto [sup1, rep1] = peak_rss_kib(n);
    const auto [sup10, rep10] = peak_rss_kib(n * 10);
    rss.push_back({"memory", "procflow_rss_1x", static_cast<double>(n), {{"supervisor_kib", double(sup1)}, {"replica_kib", double(rep1)}}, "generator pipeline"});
    rss.push_back({"memory", "procflow_rss_10x", static_cast<double>(n * 10),
                   {{"supervisor_kib", double(sup10)}, {"replica_kib", double(rep10)}, {"growth", double(std::max(sup10, rep10)) / double(std::max(sup1, rep1))}},
                   "10x the items"});
    if (!o.json) fmt::print("\n");
    bench::report(o, rss);
  }
  return 0;
}

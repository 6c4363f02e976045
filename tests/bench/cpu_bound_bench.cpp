// cpu_bound_bench: a map costing ~20 us per item on every core — procflow's parallel efficiency
// against the sequential loop, oneTBB and a hand-written static fork split, in the same run
// (SPEC §5: target >= 95% efficiency on all cores).
//
//   cpu_bound_bench [--json] [--quick] [--repeats=N] [--us=20]
#include "bench_support.hpp"
#include "pipeline_peers.hpp"

#include <procflow/procflow.hpp>

#include <thread>

namespace pf = procflow;

int main(int argc, char** argv) {
  const auto o = bench::parse_options(argc, argv);
  const std::uint32_t iters = bench::peers::calibrate_burn(20.0);
  const auto n = static_cast<std::uint64_t>(100'000 * o.scale);
  const std::size_t cores = std::max(1u, std::thread::hardware_concurrency());
  const std::uint64_t expected = bench::peers::sequential_cpu(std::min<std::uint64_t>(n, 100), iters).sum;  // warm-up
  (void)expected;

  std::vector<bench::Row> rows;
  double sequential_rate = 0;
  std::uint64_t reference_sum = 0;
  auto measure = [&](const std::string& variant, const std::function<bench::peers::CpuResult()>& once, const std::string& note) {
    if (!o.wants(variant) && variant != "sequential") return;
    std::vector<double> rates, cpus;
    for (int i = 0; i < o.repeats; ++i) {
      const double cpu0 = bench::tree_cpu_seconds();
      const auto r = once();
      cpus.push_back(bench::tree_cpu_seconds() - cpu0);
      if (variant == "sequential") reference_sum = r.sum;
      if (r.sum != reference_sum) {
        fmt::print(stderr, "{}: wrong sum {} (expected {})\n", variant, r.sum, reference_sum);
        std::exit(1);
      }
      rates.push_back(static_cast<double>(n) / r.seconds);
    }
    const double rate = bench::median(rates);
    if (variant == "sequential") sequential_rate = rate;
    const double speedup = rate / sequential_rate;
    const double workers = variant == "sequential" ? 1.0 : static_cast<double>(cores);
    // cpu_s: the median run's user + system CPU of the whole process tree (replicas included).
    rows.push_back({"cpu_bound", variant, rate, {{"speedup", speedup}, {"efficiency", speedup / workers}, {"cpu_s", bench::median(cpus)}}, note});
  };

  measure("sequential", [&] { return bench::peers::sequential_cpu(n, iters); }, fmt::format("{} iterations ~ 20 us/item", iters));
  measure("tbb", [&] { return bench::peers::tbb_cpu(n, iters, cores); }, "parallel_pipeline, 16 items/token");
  measure("fork_static_split", [&] { return bench::peers::fork_static_split(n, iters, cores); }, "hand-written fork farm");
  measure("procflow", [&] {
    const auto t0 = std::chrono::steady_clock::now();
    const auto r = pf::pipeline("cpu_bound", pf::allow_threads)
                       .source("numbers", pf::iota<std::uint64_t>(0, n))
                       .map("burn", [iters](std::uint64_t x) { return bench::peers::burn(x, iters); },
                            pf::replicas(static_cast<std::uint32_t>(cores)))
                       .reduce("sum", std::uint64_t{0}, std::plus<>{}, std::plus<>{})
                       .run();
    return bench::peers::CpuResult{r.value, bench::seconds_since(t0)};
  }, fmt::format("{} replicas, iota claimed in chunks", cores));
  measure("procflow_threads", [&] {
    const auto t0 = std::chrono::steady_clock::now();
    const auto r = pf::pipeline("cpu_bound")
                       .source("numbers", pf::iota<std::uint64_t>(0, n))
                       .map("burn", [iters](std::uint64_t x) { return bench::peers::burn(x, iters); },
                            pf::replicas(static_cast<std::uint32_t>(cores)))
                       .reduce("sum", std::uint64_t{0}, std::plus<>{}, std::plus<>{})
                       .run(pf::in_threads);
    return bench::peers::CpuResult{r.value, bench::seconds_since(t0)};
  }, fmt::format("run(pf::in_threads): {} replicas as a parallel oneTBB filter, iota in chunks", cores));
  measure("procflow_generator", [&] {
    const auto t0 = std::chrono::steady_clock::now();
    const auto r = pf::pipeline("cpu_bound", pf::allow_threads)
                       .source("numbers", [i = std::uint64_t{0}, n]() mutable -> std::optional<std::uint64_t> {
                         if (i == n) return std::nullopt;
                         return i++;
                       })
                       .map("burn", [iters](std::uint64_t x) { return bench::peers::burn(x, iters); },
                            pf::replicas(static_cast<std::uint32_t>(cores)), pf::batch_bytes(256))
                       .reduce("sum", std::uint64_t{0}, std::plus<>{}, std::plus<>{})
                       .run();
    return bench::peers::CpuResult{r.value, bench::seconds_since(t0)};
  }, "generator process -> rings (256 B batches) -> replicas");
  bench::report(o, rows, "sequential");
  return 0;
}

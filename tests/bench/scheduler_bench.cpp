// scheduler_bench: the auto scheduler (pf::auto_scale) against every static split of the same core
// budget, in the same run (SPEC §5: auto >= 90-95% of the best hand-picked replica counts).
//
// Workloads (stages that cannot all be fused away: a generator process feeds three CPU-bound maps
// in processes of their own, then a reduce):
//   cost_4_1_2  map costs 4:1:2 (units of --unit-us microseconds of CPU work per item)
//   phase_swap  4:1:2 for the first half of the items, then the first two maps swap costs (1:4:2)
// Variants: one_each; static_A_B_C for every split of the budget left after the generator;
// oversubscribed (every map at budget replicas, the kernel shares); fused (the three maps in one
// process group of budget-1 replicas); best_static (the best of those); auto.
// Fields: items_per_s, replicas (each map's peak count), processes (replica processes forked over
// the run, the generator's included) and peak_processes (the most alive at once: what the budget
// bounds; auto forks a new process for every replica it adds, so it may fork more than it runs).
// Then workload end_of_stream, variants auto and fixed (field lag_ms; selected with --only=
// end_of_stream_auto / end_of_stream_fixed, since the other workloads have an `auto` too): how
// long a run's end takes to cross each boundary between groups in processes of their own.
//
//   scheduler_bench [--json] [--quick] [--repeats=N] [--cores=6] [--unit-us=5] [--pin] [--only=...]
//
// --pin runs every variant with pf::pinning(true) (each replica process on one CPU); the rows say
// "pinned":true.
//
// The budget defaults to 6 cores whatever the machine has: on a 2-core machine every variant is
// oversubscribed relative to the hardware and the figures measure how well each split shares it.
#include "bench_support.hpp"
#include "pipeline_peers.hpp"

#include <procflow/procflow.hpp>

#include <optional>

namespace pf = procflow;

namespace {

struct Result {
  double items_per_s = 0;
  std::string split;       // replicas of the three maps ("4/1/2"; auto: peak counts)
  std::uint32_t processes = 0;       // replica processes forked over the run (the generator's included)
  std::uint32_t peak_processes = 0;  // the most alive at once
  std::string decisions;
};

struct Workload {
  std::string name;
  bool swap = false;
};

struct Costs {
  std::uint32_t unit = 1;  // burn() iterations per cost unit
  std::uint64_t n = 0;
  bool swap = false;
  std::uint32_t iters(int map, std::uint64_t x) const {
    static constexpr int base[3] = {4, 1, 2};
    int k = base[map];
    if (swap && x >= n / 2 && map < 2) k = base[1 - map];
    return unit * static_cast<std::uint32_t>(k);
  }
};

bool pin = false;  // --pin

Result run_pipeline(const Costs& c, std::uint32_t cores, bool fused, pf::replicas ra, pf::replicas rb, pf::replicas rc) {
  const auto t0 = std::chrono::steady_clock::now();
  // Each item carries its id (for the phase) and accumulates its work into a checksum.
  using Item = std::pair<std::uint64_t, std::uint64_t>;
  auto gen = [i = std::uint64_t{0}, n = c.n]() mutable -> std::optional<Item> {
    if (i == n) return std::nullopt;
    return Item{i++, 0};
  };
  auto step = [c](int map) {
    return [c, map](Item v) { return Item{v.first, v.second + bench::peers::burn(v.first, c.iters(map, v.first))}; };
  };
  auto sum_fold = [](std::uint64_t a, const Item& v) { return a + v.second; };
  auto start = pf::pipeline("scheduler_bench", pf::cores(cores), pf::pinning(pin), pf::batch_bytes(4096), pf::ring_slots(8)).source("gen", gen);
  std::optional<pf::run_report> report;
  if (fused) {
    auto r = start.map("a", step(0), ra).map("b", step(1)).map("c", step(2)).reduce("sum", std::uint64_t{0}, sum_fold, std::plus<>{}).run();
    report = r.report;
  } else {
    auto r = start.map("a", step(0), ra, pf::own_process)
                 .map("b", step(1), rb, pf::own_process)
                 .map("c", step(2), rc, pf::own_process)
                 .reduce("sum", std::uint64_t{0}, sum_fold, std::plus<>{})
                 .run();
    report = r.report;
  }
  Result res;
  res.items_per_s = static_cast<double>(c.n) / bench::seconds_since(t0);
  std::uint32_t peaks[3] = {0, 0, 0};
  for (const auto& s : report->stages) {
    if (s.name == "a") peaks[0] = s.peak_replicas;
    if (s.name == "b") peaks[1] = s.peak_replicas;
    if (s.name == "c") peaks[2] = s.peak_replicas;
  }
  res.split = fmt::format("{}/{}/{}", peaks[0], peaks[1], peaks[2]);
  res.processes = report->processes;
  res.peak_processes = report->peak_processes;
  for (const auto& d : report->decisions) res.decisions += fmt::format("{}@{:.2f}s:{}->{} ", d.stages, d.time_s, d.from, d.to);
  return res;
}

// The end of a run through scalable boundaries: 2 000 cheap items through three maps in processes
// of their own, auto or fixed at one replica each. Returns the median, over the repeats, of the
// mean lag (ms) between one group's last replica ending and the next group's: a scalable group's
// consumers see their end of stream only once the supervisor has closed the lanes of its slots
// never started, so this is the supervisor's reaction time per boundary.
double end_of_stream_lag_ms(bool automatic, int repeats) {
  std::vector<double> lags;
  for (int k = 0; k < repeats; ++k) {
    const pf::replicas r = automatic ? pf::replicas(pf::auto_scale) : pf::replicas(1);
    const auto id = [](std::uint64_t x) { return x; };
    auto run = pf::pipeline("end_of_stream", pf::cores(2))
                   .source("n", pf::iota<std::uint64_t>(0, 2000))
                   .map("a", id, r, pf::own_process)
                   .map("b", id, r, pf::own_process)
                   .map("c", id, r, pf::own_process)
                   .reduce("sum", std::uint64_t{0}, std::plus<>{}, std::plus<>{})
                   .run();
    std::vector<double> ends;  // per process group: when its last replica ended
    for (const auto& row : run.report.replica_rows) {
      if (ends.size() <= row.process_group) ends.resize(row.process_group + 1, 0.0);
      ends[row.process_group] = std::max(ends[row.process_group], row.end_s);
    }
    double lag = 0;
    for (std::size_t g = 1; g < ends.size(); ++g) lag += ends[g] - ends[g - 1];
    lags.push_back(ends.size() > 1 ? 1e3 * lag / static_cast<double>(ends.size() - 1) : 0.0);
  }
  return bench::median(lags);
}

}  // namespace

int main(int argc, char** argv) {
  std::uint32_t cores = 6;
  double unit_us = 5;
  std::vector<char*> rest{argv[0]};
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    if (a.rfind("--cores=", 0) == 0) {
      cores = static_cast<std::uint32_t>(std::max(2, std::atoi(argv[i] + 8)));
    } else if (a == "--pin") {
      pin = true;
    } else if (a.rfind("--unit-us=", 0) == 0) {
      unit_us = std::atof(argv[i] + 10);
    } else {
      rest.push_back(argv[i]);
    }
  }
  auto o = bench::parse_options(static_cast<int>(rest.size()), rest.data());
  if (o.repeats == 5) o.repeats = 1;  // each run is a second or more of CPU work: once, by default
  Costs costs;
  costs.unit = bench::peers::calibrate_burn(unit_us);
  costs.n = static_cast<std::uint64_t>(60'000 * o.scale);
  const std::uint32_t maps_budget = cores - 1;  // the generator takes one

  for (const Workload& w : {Workload{"cost_4_1_2", false}, Workload{"phase_swap", true}}) {
    costs.swap = w.swap;
    struct Line {
      std::string variant;
      Result r;
      bool oversubscribes = false;
    };
    std::vector<Line> lines;
    auto measure = [&](const std::string& variant, bool over, const std::function<Result()>& once) {
      if (!o.wants(variant)) return;
      std::vector<Result> runs;
      for (int i = 0; i < o.repeats; ++i) runs.push_back(once());
      std::sort(runs.begin(), runs.end(), [](const Result& a, const Result& b) { return a.items_per_s < b.items_per_s; });
      lines.push_back({variant, runs[runs.size() / 2], over});
    };
    auto fixed = [&](std::uint32_t a, std::uint32_t b, std::uint32_t c) {
      return [&, a, b, c] { return run_pipeline(costs, cores, false, pf::replicas(a), pf::replicas(b), pf::replicas(c)); };
    };
    measure("one_each", false, fixed(1, 1, 1));
    for (std::uint32_t a = 1; a + 2 <= maps_budget; ++a)
      for (std::uint32_t b = 1; a + b + 1 <= maps_budget; ++b) {
        const std::uint32_t c = maps_budget - a - b;
        measure(fmt::format("static_{}_{}_{}", a, b, c), false, fixed(a, b, c));
      }
    measure("oversubscribed", true, fixed(maps_budget, maps_budget, maps_budget));
    measure("fused", false, [&] { return run_pipeline(costs, cores, true, pf::replicas(maps_budget), pf::replicas(1), pf::replicas(1)); });
    measure("auto", false, [&] {
      const pf::replicas automatic(pf::auto_scale);
      return run_pipeline(costs, cores, false, automatic, automatic, automatic);
    });
    const Line* best = nullptr;
    for (const auto& l : lines)
      if (l.variant != "auto" && (!best || l.r.items_per_s > best->r.items_per_s)) best = &l;
    // Copied out before the push_back below, which may move `lines` (and leave `best` dangling).
    const std::string best_variant = best ? best->variant : "";
    if (best) lines.push_back(Line{"best_static", best->r, best->oversubscribes});
    const Line* auto_line = nullptr;
    for (const auto& l : lines)
      if (l.variant == "auto") auto_line = &l;
    for (const auto& l : lines) {
      if (o.json) {
        fmt::print("{{\"bench\":\"scheduler_bench\",\"workload\":\"{}\",\"variant\":\"{}\",\"items_per_s\":{:.1f},\"replicas\":\"{}\","
                   "\"processes\":{},\"peak_processes\":{},\"cores\":{},\"pinned\":{}{}}}\n",
                   w.name, l.variant, l.r.items_per_s, l.r.split, l.r.processes, l.r.peak_processes, cores, pin,
                   l.variant == "best_static" ? fmt::format(",\"of\":\"{}\"", best_variant) : "");
      } else {
        fmt::print("{:<11} {:<16} {:>11.4g} items/s  maps {:<9} {:>2} processes ({} at once){}{}\n", w.name, l.variant, l.r.items_per_s, l.r.split,
                   l.r.processes, l.r.peak_processes, auto_line && l.variant != "auto" ? fmt::format("  auto/this {:.2f}", auto_line->r.items_per_s / l.r.items_per_s) : "",
                   l.r.decisions.empty() ? "" : "  decisions: " + l.r.decisions);
      }
    }
  }
  // Rows: workload end_of_stream, variants auto and fixed, field lag_ms (see above).
  for (const bool automatic : {true, false}) {
    const std::string variant = automatic ? "auto" : "fixed";
    if (!o.wants("end_of_stream_" + variant)) continue;
    const double lag = end_of_stream_lag_ms(automatic, std::max(o.repeats, 5));
    if (o.json) {
      fmt::print("{{\"bench\":\"scheduler_bench\",\"workload\":\"end_of_stream\",\"variant\":\"{}\",\"lag_ms\":{:.2f}}}\n", variant, lag);
    } else {
      fmt::print("{:<11} {:<16} {:>8.2f} ms from one group's end to the next's (median)\n", "end_of_stream", variant, lag);
    }
  }
  return 0;
}

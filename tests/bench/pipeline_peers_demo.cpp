// Small driver for the pipeline peers: runs each peer at modest sizes, checks that every peer
// computes the same result as the sequential loop, and reports items/s plus speedup and
// efficiency relative to the sequential loop.
//
//   g++ -std=c++20 -O2 -I tests/bench tests/bench/pipeline_peers.cpp
//       tests/bench/pipeline_peers_demo.cpp -o /tmp/pp_demo -ltbb -lfmt -pthread
//   /tmp/pp_demo [--json] [--quick] [--repeats=N] [--scale=F] [--only=a,b]
#include "bench_support.hpp"
#include "pipeline_peers.hpp"

#include <thread>

namespace peers = bench::peers;

namespace {

constexpr std::size_t kWorkers = 2;  // threads / processes for the parallel peers

// Measured outcome of one peer: median items/s over the repeats and the (checked) result.
struct Measured {
  double items_per_s = 0;
  uint64_t sum = 0;
};

// Runs `once` (returning {sum, seconds}) `repeats` times; exits if any run's sum differs from
// `expected`.
template <class F>
Measured measure(const bench::Options& o, std::string_view variant, uint64_t items, uint64_t expected, F once) {
  Measured m;
  m.items_per_s = bench::median_of(o.repeats, [&] {
    const auto r = once();
    if (r.sum != expected) {
      fmt::print(stderr, "{}: wrong result {} (expected {})\n", variant, r.sum, expected);
      std::exit(1);
    }
    m.sum = r.sum;
    return static_cast<double>(items) / r.seconds;
  });
  return m;
}

// Adds a row with speedup and efficiency relative to `sequential_ips`.
void add_row(std::vector<bench::Row>& rows, std::string_view bench_name, std::string_view variant, double ips,
             double sequential_ips, std::size_t workers, std::string note = {}) {
  bench::Row row{std::string(bench_name), std::string(variant), ips, {}, std::move(note)};
  if (workers > 0 && sequential_ips > 0) {
    row.extra.emplace_back("speedup", ips / sequential_ips);
    row.extra.emplace_back("efficiency", ips / sequential_ips / static_cast<double>(workers));
  }
  rows.push_back(std::move(row));
}

void run_trivial(const bench::Options& o) {
  const auto n = static_cast<uint64_t>(20'000'000 * o.scale);
  // One item per token costs on the order of a microsecond per item; use far fewer items.
  const uint64_t n_fine = std::max<uint64_t>(1, n / 20);
  const uint64_t expected = peers::trivial_expected(n);
  const uint64_t expected_fine = peers::trivial_expected(n_fine);

  std::vector<bench::Row> rows;
  const auto seq = measure(o, "sequential", n, expected, [&] { return peers::sequential_trivial(n); });
  add_row(rows, "trivial", "sequential", seq.items_per_s, 0, 0, fmt::format("n={} sum={}", n, seq.sum));
  if (o.wants("tbb_chunk10000")) {
    const auto m = measure(o, "tbb_chunk10000", n, expected, [&] { return peers::tbb_trivial(n, 10000, kWorkers); });
    add_row(rows, "trivial", "tbb_chunk10000", m.items_per_s, seq.items_per_s, kWorkers);
  }
  if (o.wants("tbb_chunk1")) {
    const auto m = measure(o, "tbb_chunk1", n_fine, expected_fine,
                           [&] { return peers::tbb_trivial(n_fine, 1, kWorkers); });
    add_row(rows, "trivial", "tbb_chunk1", m.items_per_s, seq.items_per_s, kWorkers, fmt::format("n={}", n_fine));
  }
  bench::report(o, rows, "sequential");
}

void run_cpu(const bench::Options& o) {
  constexpr double target_us = 20;
  const uint32_t iters = peers::calibrate_burn(target_us);
  const auto n = std::max<uint64_t>(1, static_cast<uint64_t>(20'000 * o.scale));

  std::vector<bench::Row> rows;
  const auto reference = peers::sequential_cpu(n, iters);
  const auto seq = measure(o, "sequential", n, reference.sum, [&] { return peers::sequential_cpu(n, iters); });
  add_row(rows, "cpu_20us", "sequential", seq.items_per_s, 0, 0,
          fmt::format("n={} iters={} us/item={:.1f}", n, iters, 1e6 / seq.items_per_s));
  // The fork peer runs before any TBB work so that idle TBB workers cannot compete with the
  // children for the two cores.
  if (o.wants("fork_static_split")) {
    const auto m = measure(o, "fork_static_split", n, reference.sum,
                           [&] { return peers::fork_static_split(n, iters, kWorkers); });
    add_row(rows, "cpu_20us", "fork_static_split", m.items_per_s, seq.items_per_s, kWorkers);
  }
  if (o.wants("tbb_chunk16")) {
    const auto m = measure(o, "tbb_chunk16", n, reference.sum, [&] { return peers::tbb_cpu(n, iters, kWorkers, 16); });
    add_row(rows, "cpu_20us", "tbb_chunk16", m.items_per_s, seq.items_per_s, kWorkers);
  }
  if (o.wants("tbb_chunk1")) {
    const auto m = measure(o, "tbb_chunk1", n, reference.sum, [&] { return peers::tbb_cpu(n, iters, kWorkers, 1); });
    add_row(rows, "cpu_20us", "tbb_chunk1", m.items_per_s, seq.items_per_s, kWorkers);
  }
  bench::report(o, rows, "sequential");
}

}  // namespace

int main(int argc, char** argv) {
  const auto o = bench::parse_options(argc, argv);
  if (!o.json)
    fmt::print("pipeline peers: {} workers, {} hardware threads, {} repeats (median)\n\n", kWorkers,
               std::thread::hardware_concurrency(), o.repeats);
  run_cpu(o);
  if (!o.json) fmt::print("\n");
  run_trivial(o);
  return 0;
}

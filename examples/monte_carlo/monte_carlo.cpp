// blocks of draws -> hits in the quarter circle -> sum: π by Monte Carlo, timed against its peers
//
//   monte_carlo [--draws N] [--replicas N] [--seed S] [--no-python] [--output FILE]
//
// Each item is the number of a block of 4096 points (the last block may be shorter); the map draws
// the block's points from pf::item_rng(block), a counter-based generator keyed by (run seed, stage,
// block), and counts those inside the unit circle. The draws of a block depend on nothing else, so
// with --seed the estimate is the same for any --replicas (and any scheduling), and equals the
// sequential loop's, which recomputes the same streams with pf::stream_key. Without --seed every run
// draws fresh entropy. Prints the estimate with its standard error, and the wall time against the same
// computation as a sequential C++ loop and as Python's multiprocessing.Pool (pure Python `random`,
// which reseeds itself in each worker) on the same number of draws. --output writes
// draws,hits,estimate,standard_error,seed.
#include <procflow/procflow.hpp>

#include "example_cli.hpp"

#include <fmt/core.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <random>
#include <string>

namespace pf = procflow;

namespace {

constexpr std::uint64_t block_points = 4096;
std::uint64_t draws = 20'000'000;
std::optional<std::uint64_t> seed;
bool with_python = true;

// Points of block `block` inside the quarter circle (two uniform draws per point).
std::uint64_t block_hits(pf::counter_rng rng, std::uint64_t block) {
  const std::uint64_t n = std::min(block_points, draws - block * block_points);
  std::uint64_t hits = 0;
  for (std::uint64_t i = 0; i < n; ++i) {
    const double x = rng.uniform(), y = rng.uniform();
    hits += x * x + y * y < 1.0 ? 1 : 0;
  }
  return hits;
}

// The same job in Python: multiprocessing.Pool over chunks of the draws; prints "hits seconds".
constexpr const char* python_job = R"(
import random, sys, time
from multiprocessing import Pool
def work(n):
    rnd = random.random
    h = 0
    for _ in range(n):
        x = rnd(); y = rnd()
        if x * x + y * y < 1.0:
            h += 1
    return h
if __name__ == "__main__":
    n, procs = int(sys.argv[1]), int(sys.argv[2])
    parts = procs * 8
    chunks = [n // parts] * parts
    chunks[-1] += n - sum(chunks)
    t = time.perf_counter()
    with Pool(procs) as pool:
        hits = sum(pool.map(work, chunks))
    print(hits, time.perf_counter() - t)
)";

struct python_result {
  std::uint64_t hits = 0;
  double seconds = 0;
};

std::optional<python_result> run_python(std::uint64_t n, std::uint32_t procs) {
  std::string script = python_job;
  std::string quoted = "'";
  for (char c : script) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
  quoted += "'";
  const std::string cmd = fmt::format("python3 -c {} {} {} 2>/dev/null", quoted, n, procs);
  std::FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return std::nullopt;
  python_result r;
  const int got = std::fscanf(p, "%lu %lf", &r.hits, &r.seconds);
  const int status = ::pclose(p);
  if (got != 2 || status != 0) return std::nullopt;
  return r;
}

int run(const example::options& o) {
  using clock = std::chrono::steady_clock;
  const std::uint64_t blocks = draws / block_points + (draws % block_points != 0 ? 1 : 0);

  // procflow: replicas claim chunks of the block numbers; item_rng(block) gives the block's stream.
  auto t0 = clock::now();
  auto job = [&](auto p) {
    return p.source("blocks", pf::iota<std::uint64_t>(0, blocks))
        .map("hits", [](std::uint64_t block) { return block_hits(pf::item_rng(block), block); }, pf::replicas(o.replicas))
        .reduce("sum", std::uint64_t{0}, std::plus<>{}, std::plus<>{})
        .run();
  };
  auto result = seed ? job(pf::pipeline("monte_carlo", pf::seed(*seed))) : job(pf::pipeline("monte_carlo"));
  const double procflow_s = std::chrono::duration<double>(clock::now() - t0).count();
  const std::uint64_t hits = result.value;

  // The sequential loop: the same streams (stage 1 of a run with the same seed) when seeded.
  const std::uint64_t loop_seed = seed ? *seed : (std::uint64_t{std::random_device{}()} << 32 | std::random_device{}());
  const std::uint64_t key = pf::stream_key(loop_seed, 1);
  t0 = clock::now();
  std::uint64_t loop_hits = 0;
  for (std::uint64_t b = 0; b < blocks; ++b) loop_hits += block_hits(pf::counter_rng(key, b), b);
  const double loop_s = std::chrono::duration<double>(clock::now() - t0).count();
  if (seed && loop_hits != hits) {
    fmt::print(stderr, "monte_carlo: the pipeline counted {} hits, the sequential loop {}\n", hits, loop_hits);
    return 1;
  }

  const double p = static_cast<double>(hits) / static_cast<double>(draws);
  const double estimate = 4 * p;
  const double standard_error = 4 * std::sqrt(p * (1 - p) / static_cast<double>(draws));
  fmt::print("pi estimate {:.9f}  standard error {:.9f}  ({} draws, {} hits{})\n", estimate, standard_error, draws, hits,
             seed ? fmt::format(", seed {}", *seed) : std::string(", fresh entropy"));
  fmt::print("sequential C++ loop                  {:8.3f} s\n", loop_s);
  fmt::print("procflow, {:>3} replicas               {:8.3f} s   speedup {:.2f}x vs the loop\n", o.replicas, procflow_s,
             loop_s / procflow_s);
  if (with_python) {
    if (auto py = run_python(draws, o.replicas)) {
      fmt::print("Python multiprocessing.Pool, {:>3} proc {:8.3f} s   procflow is {:.1f}x faster (Python's estimate {:.6f})\n",
                 o.replicas, py->seconds, py->seconds / procflow_s, 4.0 * static_cast<double>(py->hits) / static_cast<double>(draws));
    } else {
      fmt::print("Python multiprocessing.Pool: python3 did not run (skipped)\n");
    }
  }
  fmt::print("(wall times: on a machine shared with other work every figure falls; compare the ratios)\n");
  std::fflush(stdout);

  if (!o.output.empty()) {
    example::csv_file out(o.output, {"draws", "hits", "estimate", "standard_error", "seed"});
    out.row({std::to_string(draws), std::to_string(hits), fmt::format("{:.9f}", estimate), fmt::format("{:.9f}", standard_error),
             seed ? std::to_string(*seed) : std::string()});
    out.commit();
  }
  fmt::print(stderr, "{}\n", result.report);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return example::main_guard(
      {"monte_carlo",
       "block numbers -> hits in the quarter circle -> sum: pi by Monte Carlo with counter-based random streams;\n"
       "with --seed the estimate is the same for any --replicas.",
       "", "", "draws,hits,estimate,standard_error,seed",
       "  --draws N      points drawn (default 20000000)\n"
       "  --seed S       run seed (default: fresh entropy per run)\n"
       "  --no-python    skip the Python multiprocessing.Pool comparison\n",
       ""},
      argc, argv, run, [](std::string_view flag, const char* value) {
        if (flag == "--no-python") {
          with_python = false;
          return 1;
        }
        if (flag != "--draws" && flag != "--seed") return 0;
        if (!value) throw example::usage_error(fmt::format("{} needs a value", flag));
        if (flag == "--draws") {
          draws = example::parse_count(flag, value, std::uint64_t{1} << 50);
        } else {
          std::uint64_t s = 0;
          const std::string_view text = value;
          const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), s);
          if (ec != std::errc{} || end != text.data() + text.size())
            throw example::usage_error(fmt::format("--seed needs a whole number, got '{}'", text));
          seed = s;
        }
        return 2;
      });
}

// numbers -> square -> keep multiples of 3 -> sum          (the pipeline from the README)
//
// Runs the same job as a plain loop, then as a procflow pipeline on every core, checks that both
// agree and prints the per-stage report.
#include <procflow/procflow.hpp>

#include <fmt/core.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <thread>

namespace pf = procflow;

int main(int argc, char** argv) {
  const std::int64_t n = argc > 1 ? std::atoll(argv[1]) : 200'000'000;
  const auto cores = static_cast<std::uint32_t>(std::max(1u, std::thread::hardware_concurrency()));

  auto t0 = std::chrono::steady_clock::now();
  std::uint64_t expected = 0;
  for (std::int64_t x = 0; x < n; ++x) {
    const auto v = static_cast<std::uint64_t>(x) * static_cast<std::uint64_t>(x);
    if (v % 3 == 0) expected += v;
  }
  const double loop_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  t0 = std::chrono::steady_clock::now();
  const auto result =
      pf::pipeline("quickstart")
          .source("numbers", pf::iota<std::int64_t>(0, n))
          .map("square", [](std::int64_t x) { return static_cast<std::uint64_t>(x) * static_cast<std::uint64_t>(x); },
               pf::replicas(cores))
          .filter("multiple of 3", [](std::uint64_t v) { return v % 3 == 0; })
          .reduce("sum", std::uint64_t{0}, std::plus<>{}, std::plus<>{})
          .run();
  const double procflow_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  fmt::print("{}\n", result.report);
  fmt::print("sum of x*x over x in [0, {}) where x*x % 3 == 0 (mod 2^64): {}\n", n, result.value);
  fmt::print("plain loop: {:.3f} s ({:.3g} items/s)   procflow, {} processes: {:.3f} s ({:.3g} items/s)\n", loop_s,
             static_cast<double>(n) / loop_s, result.report.processes, procflow_s, static_cast<double>(n) / procflow_s);
  if (result.value != expected) {
    fmt::print(stderr, "MISMATCH: the plain loop says {}\n", expected);
    return 1;
  }
  return 0;
}

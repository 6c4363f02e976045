// latency_bench: how long an item takes from a slow source to the third stage, per setting of
// pf::max_latency (0, the default, off). Jobs (issue 14):
//   trickle  one item every 20 ms, 50 items
//   bursty   100 items at full speed, then a 1 s pause, repeated (3 bursts; --quick: 2)
// Pipeline: generator (stamps each item with CLOCK_MONOTONIC) -> map x2 (2 replicas) -> map in
// its own process recording now - stamp -> collect. Rows: p50_ms, p99_ms, max_ms.
#include "bench_support.hpp"

#include <procflow/procflow.hpp>

#include <chrono>
#include <optional>
#include <thread>

namespace pf = procflow;
using namespace std::chrono_literals;

namespace {

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const auto k = static_cast<std::size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(k, v.size() - 1)];
}

template <class Gen>
std::vector<double> latencies_ms(Gen gen, const std::optional<pf::max_latency>& bound) {
  auto p = bound ? pf::pipeline("latency", *bound) : pf::pipeline("latency");
  auto r = p.source("gen", gen)
               .map("x2", [](std::int64_t stamp) { return stamp; }, pf::replicas(2))
               .map("arrival", [](std::int64_t stamp) { return static_cast<double>(now_ns() - stamp) / 1e6; },
                    pf::own_process, pf::replicas(1))
               .collect()
               .run();
  return r.value;
}

// -1: off; the default is 5 ms (lib/runtime/plan.cpp).
double bound_ms(const std::optional<pf::max_latency>& b) {
  if (!b) return 5;
  return b->ns < 0 ? -1.0 : static_cast<double>(b->ns) / 1e6;
}

}  // namespace

int main(int argc, char** argv) {
  const bench::Options o = bench::parse_options(argc, argv);
  const bool quick = o.scale < 1.0;
  struct Setting {
    const char* name;
    std::optional<pf::max_latency> bound;  // nullopt: the default
  };
  const Setting settings[] = {{"0", pf::max_latency(0ms)}, {"default", std::nullopt}, {"off", pf::max_latency(pf::latency_off)}};
  std::vector<bench::Row> rows;
  for (const auto& s : settings) {
    if (o.wants("trickle")) {
      const int n = quick ? 20 : 50;
      int i = 0;
      auto trickle = [&i, n]() -> std::optional<std::int64_t> {
        if (i == n) return std::nullopt;
        if (i++ > 0) std::this_thread::sleep_for(20ms);
        return now_ns();
      };
      const auto t0 = std::chrono::steady_clock::now();
      auto lat = latencies_ms(trickle, s.bound);
      const double secs = bench::seconds_since(t0);
      rows.push_back({"latency_bench", "trickle", static_cast<double>(lat.size()) / secs,
                      {{"bound_ms", bound_ms(s.bound)},
                       {"p50_ms", percentile(lat, 0.5)}, {"p99_ms", percentile(lat, 0.99)}, {"max_ms", percentile(lat, 1.0)}},
                      std::string("bound ") + s.name});
    }
    if (o.wants("bursty")) {
      const int bursts = quick ? 2 : 3;
      int i = 0;
      auto bursty = [&i, bursts]() -> std::optional<std::int64_t> {
        if (i == bursts * 100) return std::nullopt;
        if (i > 0 && i % 100 == 0) std::this_thread::sleep_for(1s);
        ++i;
        return now_ns();
      };
      const auto t0 = std::chrono::steady_clock::now();
      auto lat = latencies_ms(bursty, s.bound);
      const double secs = bench::seconds_since(t0);
      rows.push_back({"latency_bench", "bursty", static_cast<double>(lat.size()) / secs,
                      {{"bound_ms", bound_ms(s.bound)},
                       {"p50_ms", percentile(lat, 0.5)}, {"p99_ms", percentile(lat, 0.99)}, {"max_ms", percentile(lat, 1.0)}},
                      std::string("bound ") + s.name});
    }
  }
  bench::report(o, rows);
  return 0;
}

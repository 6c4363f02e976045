// Smoke test / demo for the channel benchmark's IPC peers: runs each peer once with small counts
// and prints the figures. Accepts bench_support's options (--json, --scale=F, --only=a,b, ...).
#include "bench_support.hpp"
#include "channel_peers.hpp"

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace {

uint64_t scaled(const bench::Options& o, double n) {
  return static_cast<uint64_t>(std::max(1.0, n * o.scale));
}

// cpus_used = (producer + consumer CPU) / wall time. Near 2 for the spinning ring means both
// sides really ran on their own CPU; near 1 means they shared one CPU (e.g. other load on the box).
bench::Row transfer_row(const std::string& variant, uint64_t items, const bench::peers::TransferResult& r) {
  const double wall_s = r.items_per_s > 0 ? static_cast<double>(items) / r.items_per_s : 0;
  return {"channel_peers",
          variant,
          r.items_per_s,
          {{"prod_cpu_s", r.producer_cpu_s},
           {"cons_cpu_s", r.consumer_cpu_s},
           {"cpus_used", wall_s > 0 ? (r.producer_cpu_s + r.consumer_cpu_s) / wall_s : 0}},
          ""};
}

}  // namespace

int main(int argc, char** argv) {
  namespace peers = bench::peers;
  const bench::Options o = bench::parse_options(argc, argv);
  const uint64_t ring_items = scaled(o, 10e6);
  const uint64_t slow_items = scaled(o, 200e3);
  const uint64_t round_trips = scaled(o, 100e3);
  constexpr std::size_t kRingBytes = 64 * 1024;

  std::vector<bench::Row> rows;
  auto transfer = [&](const std::string& variant, uint64_t items, auto&& run) {
    if (o.wants(variant)) rows.push_back(transfer_row(variant, items, run(items)));
  };
  transfer("ring_b1", ring_items, [&](uint64_t n) { return peers::minimal_ring(n, kRingBytes, 1, false); });
  transfer("ring_b1_pinned", ring_items, [&](uint64_t n) { return peers::minimal_ring(n, kRingBytes, 1, true); });
  transfer("ring_b512", ring_items, [&](uint64_t n) { return peers::minimal_ring(n, kRingBytes, 512, false); });
  transfer("ring_b512_pinned", ring_items, [&](uint64_t n) { return peers::minimal_ring(n, kRingBytes, 512, true); });
  transfer("message_queue", slow_items, [&](uint64_t n) { return peers::message_queue(n); });
  transfer("pipe_b512", ring_items, [&](uint64_t n) { return peers::pipe_batched(n, 512); });
  transfer("pipe_per_item", slow_items, [&](uint64_t n) { return peers::pipe_per_item(n); });

  // Round trips/s go in the items/s column; one round trip = two sleep/wake hand-offs.
  if (o.wants("semaphore_pingpong"))
    rows.push_back({"channel_peers", "semaphore_pingpong", peers::semaphore_pingpong(round_trips), {}, "round trips/s"});
  if (o.wants("futex_pingpong"))
    rows.push_back({"channel_peers", "futex_pingpong", peers::futex_pingpong(round_trips), {}, "round trips/s"});

  bench::report(o, rows, "ring_b1");
  return 0;
}

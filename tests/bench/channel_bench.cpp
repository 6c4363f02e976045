// channel_bench: 8-byte items from one process to another through procflow's channel, against
// the peers measured in the same run (SPEC §5): a minimal hand-written SPSC ring (the practical
// limit), a pipe carrying the same batches, boost::interprocess::message_queue (one item per
// message) and a pipe with one write per item. Then the blocking path: a deliberately slow
// consumer (how much CPU the blocked producer burns) and the sleep/wake hand-off cost of
// procflow's futex event against interprocess_semaphore.
//
//   channel_bench [--json] [--quick] [--repeats=N] [--only=procflow,pipe]
#include "bench_support.hpp"
#include "channel_peers.hpp"

#include "channel/flusher.hpp"
#include "channel/inbox.hpp"
#include "channel/outbox.hpp"

#include <sys/prctl.h>
#include <sys/resource.h>

#include <atomic>
#include <cstring>
#include <optional>

namespace {

using namespace procflow;

enum class Writer { bulk, per_item };

// Sends `items` values 0..items-1 through a 1x1 channel; the consumer verifies every value.
// `consumer_ns_per_item` > 0 makes the consumer deliberately slow (busy work per item).
// `flusher`: a latency Flusher (5 ms, the pipeline default) runs beside the producer, which
// brackets every write (each item, or each bulk fill) as "user code" the way a generator does.
bench::peers::TransferResult procflow_transfer(std::uint64_t items, channel::RingGeometry geometry, Writer writer,
                                               std::uint64_t consumer_ns_per_item = 0, bool flusher = false) {
  shm::SegmentLayout layout;
  channel::Channel ch(layout, 1, 1, geometry);
  shm::Segment segment(layout);
  ch.create(segment);
  auto producer = [&](const bench::peers::TransferHooks& hooks) {
    channel::Outbox out(ch, 0);
    std::optional<channel::Flusher> flush;
    if (flusher) flush.emplace(out, std::chrono::milliseconds(5));
    const detail::user_code_gate gate(out);
    hooks.go();
    std::uint64_t next = 0;
    if (writer == Writer::bulk) {
      while (next < items) {
        if (flusher) {
          gate.enter();
          gate.leave();
        }
        const std::span<std::byte> room = out.reserve_bulk(8);
        const std::uint64_t fit = std::min<std::uint64_t>(items - next, room.size() / 8);
        auto* p = reinterpret_cast<std::uint64_t*>(room.data());
        for (std::uint64_t i = 0; i < fit; ++i) p[i] = next + i;
        out.commit_bulk(fit * 8, static_cast<std::uint32_t>(fit));
        next += fit;
      }
    } else {
      for (; next < items; ++next) {
        if (flusher) {
          gate.enter();
          gate.leave();
        }
        std::memcpy(out.reserve(8), &next, 8);
        out.commit(8);
      }
    }
    flush.reset();
    out.close();
    return 0;
  };
  auto consumer = [&](const bench::peers::TransferHooks& hooks) {
    channel::Inbox in(ch, 0);
    hooks.go();
    detail::batch_view batch;
    std::uint64_t expected = 0;
    while (in.receive(batch)) {
      const auto* p = reinterpret_cast<const std::uint64_t*>(batch.bytes.data());
      for (std::uint32_t i = 0; i < batch.items; ++i, ++expected) {
        if (p[i] != expected) {
          fmt::print(stderr, "procflow channel: item {} arrived as {}\n", expected, p[i]);
          return 1;
        }
        if (consumer_ns_per_item) {
          const auto until = std::chrono::steady_clock::now() + std::chrono::nanoseconds(consumer_ns_per_item);
          while (std::chrono::steady_clock::now() < until) {
          }
        }
      }
      in.release();
    }
    hooks.done();
    if (expected != items) {
      fmt::print(stderr, "procflow channel: {} items arrived, {} sent\n", expected, items);
      return 1;
    }
    return 0;
  };
  return bench::peers::timed_transfer(items, producer, consumer);
}

// Ping-pong through two procflow events (the futex eventcount the channel sleeps on).
double event_pingpong(std::uint64_t round_trips) {
  shm::SegmentLayout layout;
  const auto offset = layout.add(3 * sizeof(channel::EventShared));
  shm::Segment segment(layout);
  auto* events = segment.at<channel::EventShared>(offset, 3);
  for (int i = 0; i < 3; ++i) new (events + i) channel::EventShared{};
  // events[2].epoch doubles as the shared turn counter: even = ping's turn, odd = pong's.
  auto& turn = events[2].epoch;
  auto side = [&](std::uint32_t parity, channel::EventShared& mine, channel::EventShared& theirs) {
    for (std::uint64_t i = 0; i < round_trips; ++i) {
      channel::wait(mine, [&] { return turn.load(std::memory_order_acquire) % 2 == parity; }, channel::Clock::time_point::max(), 0);
      turn.fetch_add(1, std::memory_order_release);
      channel::notify(theirs);
    }
  };
  const auto t0 = std::chrono::steady_clock::now();
  const pid_t pong = bench::fork_child([&] {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    side(1, events[1], events[0]);
    return 0;
  });
  side(0, events[0], events[1]);
  bench::wait_child(pong);
  return static_cast<double>(round_trips) / bench::seconds_since(t0);
}

}  // namespace

int main(int argc, char** argv) {
  const auto o = bench::parse_options(argc, argv);
  const auto n = [&](double base) { return static_cast<std::uint64_t>(std::max(1.0, base * o.scale)); };
  std::vector<bench::Row> rows;
  auto add = [&](const char* variant, std::uint64_t items, const std::function<bench::peers::TransferResult()>& once,
                 const std::string& note = {}) {
    if (!o.wants(variant)) return;
    std::vector<double> rates, prod_cpu, cons_cpu;
    for (int i = 0; i < o.repeats; ++i) {
      const auto r = once();
      rates.push_back(r.items_per_s);
      prod_cpu.push_back(r.producer_cpu_s);
      cons_cpu.push_back(r.consumer_cpu_s);
    }
    rows.push_back({"channel", variant, bench::median(rates),
                    {{"items", static_cast<double>(items)}, {"producer_cpu_s", bench::median(prod_cpu)}, {"consumer_cpu_s", bench::median(cons_cpu)}},
                    note});
  };

  const std::uint64_t big = n(400e6), small = n(4e6);
  const channel::RingGeometry standard{16, 64 * 1024};  // the pipeline default: 16 x 64 KiB = 1 MiB
  add("procflow", big, [&] { return procflow_transfer(big, standard, Writer::bulk); }, "16 x 64 KiB slots, bulk writes");
  add("procflow_per_item", big, [&] { return procflow_transfer(big, standard, Writer::per_item); }, "16 x 64 KiB slots, reserve/commit per item");
  add("procflow_flusher", big, [&] { return procflow_transfer(big, standard, Writer::bulk, 0, true); },
      "same, with the 5 ms latency flusher beside the producer");
  add("procflow_per_item_flusher", big, [&] { return procflow_transfer(big, standard, Writer::per_item, 0, true); },
      "reserve/commit per item, flusher, enter/leave user code per item");
  add("procflow_small_slots", big, [&] { return procflow_transfer(big, {64, 4096}, Writer::bulk); }, "64 x 4 KiB slots");
  add("minimal_ring", big, [&] { return bench::peers::minimal_ring(big, 1 << 20, 256, false); }, "1 MiB, batches of 256, spinning");
  add("minimal_ring_pinned", big, [&] { return bench::peers::minimal_ring(big, 1 << 20, 256, true); }, "same, pinned to cpus 0/1");
  add("minimal_ring_per_item", n(100e6), [&] { return bench::peers::minimal_ring(n(100e6), 1 << 20, 1, false); }, "one item per push");
  add("pipe_batches_64k", big, [&] { return bench::peers::pipe_batched(big, 8192); }, "the same 64 KiB batches");
  add("pipe_batches_4k", n(100e6), [&] { return bench::peers::pipe_batched(n(100e6), 512); }, "4 KiB writes of 512 items");
  add("message_queue", small, [&] { return bench::peers::message_queue(small); }, "one item per message");
  add("pipe_per_item", small, [&] { return bench::peers::pipe_per_item(small); }, "one 8-byte write per item");
  bench::report(o, rows, "minimal_ring");

  // How the default slot size (64 KiB, 16 slots = 1 MiB per ring) was chosen: throughput by slot
  // size at a constant 1 MiB of ring.
  std::vector<bench::Row> sweep;
  if (o.wants("slot_sweep")) {
    for (std::uint32_t kib : {4u, 16u, 64u, 256u}) {
      const channel::RingGeometry g{1024 / kib, kib * 1024};
      sweep.push_back({"slot_size", fmt::format("procflow_{}k_x{}", kib, g.slot_count),
                       bench::median_of(o.repeats, [&] { return procflow_transfer(big, g, Writer::bulk).items_per_s; }),
                       {{"slot_kib", double(kib)}}, "1 MiB ring"});
    }
    if (!o.json) fmt::print("\n");
    bench::report(o, sweep);
  }

  // Blocking path: the consumer spends ~200 ns per item, so the producer waits most of the time.
  std::vector<bench::Row> blocking;
  if (o.wants("slow_consumer")) {
    const std::uint64_t items = n(20e6);
    std::vector<double> rates, cpu_share;
    for (int i = 0; i < o.repeats; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      const auto r = procflow_transfer(items, {4, 64 * 1024}, Writer::bulk, 200);
      const double wall = bench::seconds_since(t0);
      rates.push_back(r.items_per_s);
      cpu_share.push_back(r.producer_cpu_s / wall);
    }
    blocking.push_back({"blocking", "procflow_slow_consumer", bench::median(rates),
                        {{"producer_cpu_share", bench::median(cpu_share)}}, "consumer busy 200 ns/item; producer CPU / wall"});
  }
  auto pingpong = [&](const char* variant, const std::function<double()>& once, const char* note) {
    if (!o.wants(variant)) return;
    blocking.push_back({"wake", variant, bench::median_of(o.repeats, once), {}, note});
  };
  const std::uint64_t trips = n(200e3);
  pingpong("procflow_event_pingpong", [&] { return event_pingpong(trips); }, "round trips/s, futex eventcount");
  pingpong("semaphore_pingpong", [&] { return bench::peers::semaphore_pingpong(trips); }, "round trips/s, interprocess_semaphore");
  pingpong("futex_pingpong", [&] { return bench::peers::futex_pingpong(trips); }, "round trips/s, raw futex");
  if (!blocking.empty()) {
    if (!o.json) fmt::print("\n");
    bench::report(o, blocking);
  }
  return 0;
}

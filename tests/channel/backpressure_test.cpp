// Checks the blocking layer of lib/channel (Outbox/Inbox over Event) across processes: a producer
// facing a slow consumer sleeps instead of spinning and does not buffer (its memory does not grow
// with the number of items), close() wakes a consumer asleep on an empty ring, and a producer
// asleep on a full ring wakes when the consumer releases a slot.
//
// These are behaviour checks, not benchmarks, and assert no absolute time: orderings (the producer
// could not finish before the consumer had released all but a ring's worth of slots; nobody woke
// before the event it waited for), counts, and CPU used while blocked as a ratio of the time spent
// blocked, with slack (a spinning producer's ratio would be ~1, a sleeping one's ~0). A buffering
// producer would grow by hundreds of MB; a lost wake-up would hang until the watchdog
// (ChildProcess::wait_for) fails the test.
#include "channel/channel.hpp"
#include "channel/inbox.hpp"
#include "channel/outbox.hpp"
#include "channel_test_support.hpp"
#include "shm/segment.hpp"
#include "support/child_process.hpp"
#include "support/isolated.hpp"

#include <doctest/doctest.h>
#include <fmt/core.h>

#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using namespace procflow::channel;
using procflow::detail::batch_view;
using procflow::detail::output_port;
namespace shm = procflow::shm;
namespace pt = procflow::test;

namespace {

constexpr auto any_lane = output_port::any_lane;

// steady_clock is CLOCK_MONOTONIC, one clock for every process on the machine, so time points
// taken in different children compare directly.
std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

long max_rss_kb() {
  rusage ru{};
  ::getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss;
}

// Written by the children into the shared segment, read by the parent after it reaped them
// (wait() orders the children's writes before the parent's reads).
struct Report {
  std::int64_t start_ns;
  std::int64_t end_ns;
  std::int64_t event_ns;  // the moment the test is about (close, release, unblock)
  std::uint64_t blocked_ns;
  std::uint64_t items;
  long rss_start_kb;
  long rss_end_kb;
  std::uint64_t released;        // slots the consumer has released so far (atomic_ref: read live by the producer)
  std::uint64_t released_seen;  // `released` as the producer saw it when its last item was written
};

// The consumer's progress, published with a release store after every slot it hands back and read
// (acquire) by the producer: what the producer sees was really released before.
void publish_released(Report& r, std::uint64_t slots) { std::atomic_ref<std::uint64_t>(r.released).store(slots, std::memory_order_release); }
std::uint64_t read_released(Report& r) { return std::atomic_ref<std::uint64_t>(r.released).load(std::memory_order_acquire); }

// A segment holding a channel and one Report per process (reports[0..P) producers, then consumers).
struct Setup {
  shm::SegmentLayout layout;
  Channel channel;
  std::uint64_t reports_offset;
  shm::Segment segment;
  Report* reports;

  Setup(std::uint32_t producers, std::uint32_t consumers, RingGeometry g)
      : channel(layout, producers, consumers, g),
        reports_offset(layout.add(sizeof(Report) * (producers + consumers))),
        segment(layout),
        reports(segment.at<Report>(reports_offset, producers + consumers)) {
    channel.create(segment);
    std::fill(reports, reports + producers + consumers, Report{});
  }
};

// Items of this test: `length`-byte strings whose first 8 bytes are their index.
void write_indexed(Outbox& out, const std::string& encoded_template, std::uint64_t index) {
  std::byte* p = out.reserve(encoded_template.size());
  std::memcpy(p, encoded_template.data(), encoded_template.size());
  std::memcpy(p + 2, &index, 8);  // after the 2-byte length varint
  out.commit(encoded_template.size());
}

std::string encoded_template(std::size_t length) {
  REQUIRE((length >= 128 && length < 16384));  // two-byte varint length: the index sits at offset 2
  const auto bytes = procflow::encode_to_bytes(std::string(length, 'x'));
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

// Receives everything, checking indices count up from 0; returns the number of items or -1.
// With `progress`, publishes the number of slots released after each one.
std::int64_t drain_indexed(Inbox& in, std::chrono::microseconds pause_per_batch, Report* progress = nullptr) {
  batch_view b;
  std::uint64_t next = 0;
  std::uint64_t released = 0;
  while (in.receive(b)) {
    procflow::decoder d(b.bytes);
    for (std::uint32_t i = 0; i < b.items; ++i) {
      const std::size_t n = d.take_count();
      const std::byte* p = d.take(n);
      std::uint64_t index = 0;
      std::memcpy(&index, p, 8);
      if (index != next++) {
        fmt::print(stderr, "item {} arrived while expecting {}\n", index, next - 1);
        return -1;
      }
    }
    if (pause_per_batch.count() > 0) std::this_thread::sleep_for(pause_per_batch);
    in.release();
    if (progress) publish_released(*progress, ++released);
  }
  return static_cast<std::int64_t>(next);
}

void check_clean(const std::set<std::string>& shm_before) {
  CHECK(pt::count_children() == 0);
  CHECK(pt::dev_shm_entries() == shm_before);
}

}  // namespace

TEST_CASE("backpressure: a producer facing a slow consumer sleeps instead of spinning") {
  const auto shm_before = pt::dev_shm_entries();
  {
    constexpr std::uint64_t ring_slots = 2;
    constexpr std::uint64_t slots = 150;
    Setup s(1, 1, {ring_slots, 4096});
    const std::string item = encoded_template(200);  // 20 items per slot
    const std::uint64_t count = 20 * slots;          // 150 slots, >= 2 ms each at the consumer
    pt::ChildProcess consumer([&] {
      Inbox in(s.channel, 0);
      const auto n = drain_indexed(in, 2ms, &s.reports[1]);
      s.reports[1].items = static_cast<std::uint64_t>(n);
      return n == static_cast<std::int64_t>(count) ? 0 : 1;
    });
    pt::ChildProcess producer([&] {
      Report& r = s.reports[0];
      r.start_ns = now_ns();
      Outbox out(s.channel, 0);
      for (std::uint64_t i = 0; i < count; ++i) write_indexed(out, item, i);
      r.released_seen = read_released(s.reports[1]);
      out.close();
      r.end_ns = now_ns();
      r.blocked_ns = out.stats().blocked_ns;
      r.items = out.stats().slots;
      return 0;
    });
    const auto producer_status = producer.wait_for(30s);
    const auto consumer_status = consumer.wait_for(30s);
    REQUIRE(producer_status.has_value());
    REQUIRE(consumer_status.has_value());
    CHECK(*producer_status == 0);
    CHECK(*consumer_status == 0);
    CHECK(s.reports[1].items == count);

    const Report& p = s.reports[0];
    const double wall = static_cast<double>(p.end_ns - p.start_ns) / 1e9;
    const double blocked = static_cast<double>(p.blocked_ns) / 1e9;
    const double cpu = producer.cpu_seconds();
    MESSAGE(fmt::format("producer: {} slots, wall {:.3f} s, blocked {:.3f} s, cpu {:.3f} s; the consumer had released {} slots when the last item was written",
                        p.items, wall, blocked, cpu, p.released_seen));
    CHECK(p.items == slots);
    // The consumer's pace held the producer back: it could not get further ahead than the ring
    // (plus the slot it was filling) ...
    CHECK(p.released_seen + ring_slots + 2 >= slots);
    // ... because it waited for free slots ...
    CHECK(p.blocked_ns > 0);
    // ... asleep, not spinning: CPU used is a small fraction of the time spent blocked (the
    // producer's own work, 3000 small copies, is a few ms).
    CHECK(cpu < 0.5 * blocked);
  }
  check_clean(shm_before);
}

TEST_CASE("backpressure: producer and consumer memory does not grow with the item count") {
  const auto shm_before = pt::dev_shm_entries();
  const std::string item = encoded_template(1000);
  const auto run = [&](std::uint64_t count, long& producer_growth_kb, long& consumer_growth_kb) {
    Setup s(1, 1, {4, 64 * 1024});
    pt::ChildProcess consumer([&] {
      Report& r = s.reports[1];
      r.rss_start_kb = max_rss_kb();
      Inbox in(s.channel, 0);
      const auto n = drain_indexed(in, 0us);
      r.rss_end_kb = max_rss_kb();
      return n == static_cast<std::int64_t>(count) ? 0 : 1;
    });
    pt::ChildProcess producer([&] {
      Report& r = s.reports[0];
      r.rss_start_kb = max_rss_kb();
      Outbox out(s.channel, 0);
      for (std::uint64_t i = 0; i < count; ++i) write_indexed(out, item, i);
      out.close();
      r.rss_end_kb = max_rss_kb();
      return 0;
    });
    CHECK(producer.succeeded_within(30s));
    CHECK(consumer.succeeded_within(30s));
    producer_growth_kb = s.reports[0].rss_end_kb - s.reports[0].rss_start_kb;
    consumer_growth_kb = s.reports[1].rss_end_kb - s.reports[1].rss_start_kb;
  };
  long p1 = 0, c1 = 0, p10 = 0, c10 = 0;
  run(20'000, p1, c1);     // ~20 MB through a 256 KiB ring
  run(200'000, p10, c10);  // ~200 MB
  MESSAGE(fmt::format("max RSS growth (KiB): producer {} -> {}, consumer {} -> {}", p1, p10, c1, c10));
  // Buffering would add ~180 MB at 10x; allow 16 MB of noise (page tables, allocator, sanitizer).
  CHECK(p10 <= p1 + 16 * 1024);
  CHECK(c10 <= c1 + 16 * 1024);
  check_clean(shm_before);
}

TEST_CASE("backpressure: close() wakes a consumer asleep on empty rings, after the last producer") {
  for (const std::uint32_t producers : {1u, 2u}) {
    CAPTURE(producers);
    const auto shm_before = pt::dev_shm_entries();
    {
      Setup s(producers, 1, {4, 1024});
      // A lost wake-up would leave the consumer asleep: wait_for() below then fails the test.
      pt::ChildProcess consumer([&] {
        Report& r = s.reports[producers];
        r.start_ns = now_ns();
        Inbox in(s.channel, 0);
        batch_view b;
        const bool got = in.receive(b);  // nothing is ever sent: sleeps until every producer closed
        r.event_ns = now_ns();
        return got ? 1 : 0;
      });
      std::vector<std::unique_ptr<pt::ChildProcess>> children;
      for (std::uint32_t p = 0; p < producers; ++p)
        children.push_back(std::make_unique<pt::ChildProcess>([&, p] {
          Outbox out(s.channel, p);
          std::this_thread::sleep_for(std::chrono::milliseconds(200 + 150 * p));
          s.reports[p].event_ns = now_ns();
          out.close();
          return 0;
        }));
      for (const auto& f : pt::wait_all(children, 10s)) FAIL_CHECK(f);
      const auto status = consumer.wait_for(5s);
      REQUIRE(status.has_value());  // a lost wake-up would hang here until killed
      CHECK(*status == 0);

      std::int64_t last_close = 0;
      for (std::uint32_t p = 0; p < producers; ++p) last_close = std::max(last_close, s.reports[p].event_ns);
      const Report& c = s.reports[producers];
      const double latency = static_cast<double>(c.event_ns - last_close) / 1e9;
      const double waited = static_cast<double>(c.event_ns - c.start_ns) / 1e9;
      MESSAGE(fmt::format("consumer woke {:.3f} ms after the last close, waited {:.3f} s; cpu {:.3f} s", latency * 1e3, waited,
                          consumer.cpu_seconds()));
      CHECK(c.event_ns >= last_close);                 // not before every producer was done
      CHECK(consumer.cpu_seconds() < 0.5 * waited);  // slept through the wait (>= 200 ms), did not spin
    }
    check_clean(shm_before);
  }
}

TEST_CASE("backpressure: a producer asleep on a full ring wakes when the consumer releases") {
  const auto shm_before = pt::dev_shm_entries();
  {
    Setup s(1, 1, {1, 256});
    const std::string item = encoded_template(250);  // 252 bytes: one item per slot
    pt::ChildProcess producer([&] {
      Report& r = s.reports[0];
      r.start_ns = now_ns();
      Outbox out(s.channel, 0);
      write_indexed(out, item, 0);  // fills the only slot
      write_indexed(out, item, 1);  // publishes slot 0, then must wait for it to come back
      r.event_ns = now_ns();
      write_indexed(out, item, 2);
      out.close();
      r.blocked_ns = out.stats().blocked_ns;
      return 0;
    });
    pt::ChildProcess consumer([&] {
      Report& r = s.reports[1];
      Inbox in(s.channel, 0);
      std::this_thread::sleep_for(300ms);  // the producer is asleep on the full ring by now
      batch_view b;
      if (!in.receive(b) || b.items != 1) return 1;
      r.event_ns = now_ns();
      in.release();
      std::uint64_t items = 1;
      while (in.receive(b)) {
        items += b.items;
        in.release();
      }
      r.items = items;
      return 0;
    });
    // A lost wake-up would leave the producer asleep: wait_for() then fails the test.
    const auto producer_status = producer.wait_for(10s);
    const auto consumer_status = consumer.wait_for(10s);
    REQUIRE(producer_status.has_value());
    REQUIRE(consumer_status.has_value());
    CHECK(*producer_status == 0);
    CHECK(*consumer_status == 0);
    CHECK(s.reports[1].items == 3);

    const Report& p = s.reports[0];
    const Report& c = s.reports[1];
    const double latency = static_cast<double>(p.event_ns - c.event_ns) / 1e9;
    MESSAGE(fmt::format("producer woke {:.3f} ms after the release; blocked {:.3f} s; cpu {:.3f} s", latency * 1e3,
                        static_cast<double>(p.blocked_ns) / 1e9, producer.cpu_seconds()));
    CHECK(p.event_ns >= c.event_ns);  // not before the slot came back
    CHECK(p.blocked_ns > 0);          // it really waited
    // Asleep, not spinning: the consumer held the slot >= 300 ms while the producer waited.
    CHECK(producer.cpu_seconds() < 0.5 * static_cast<double>(p.blocked_ns) / 1e9);
  }
  check_clean(shm_before);
}

// Regression (review): a producer that dies after publishing part of a split item must not hold
// its consumer past the consumer's deadline (the supervisor has to get back to its children).
TEST_CASE("receive_until returns at its deadline when a split item's producer died mid-item") {
  const auto before = pt::dev_shm_entries();
  shm::SegmentLayout layout;
  Channel ch(layout, 1, 1, {4, 64});
  shm::Segment segment(layout);
  ch.create(segment);
  {
    pt::ChildProcess producer([&] {
      RingWriter w(ch.ring(0, 0));
      SlotHeader* s = w.try_claim();
      *s = SlotHeader{64, 0, 0, 0, 1000, slot_fragment, 0, 0, 0, 0};  // first 64 of 1000 bytes, then nothing
      w.publish();
      notify(ch.data_event(0));
      return 0;
    });
    REQUIRE(producer.succeeded_within(5s));
  }
  // In a child under a watchdog: without the bound, receive_until would wait forever for the rest
  // of the item.
  pt::run_isolated(30s, [&] {
    Inbox in(ch, 0);
    batch_view batch;
    const auto deadline = Clock::now() + 200ms;
    CHECK_FALSE(in.receive_until(batch, deadline));
    CHECK(Clock::now() >= deadline);  // it waited until its deadline, not less
    CHECK_FALSE(in.receive_until(batch, Clock::now() + 50ms));  // still resumable, still bounded
  });
  CHECK(pt::count_children() == 0);
  CHECK(pt::dev_shm_entries() == before);
}

// Checks lib/channel (Channel, Outbox, Inbox) across processes: producers and consumers are forked
// children exchanging self-checking items through anonymous shared memory.
//
// Property tests: for every seed (a fixed list, plus PROCFLOW_SEED from the environment when set)
// and every P x Q topology (1x1, 2x1, 1x3, 2x2) and Dispatch policy, a random geometry (payload
// 64 B .. 64 KiB, 1..64 slots, indices sometimes starting just below 2^64) carries random items
// (some larger than a slot, split by write_large). Every item must arrive exactly once, intact,
// in per-producer FIFO order (exactly in order for 1x1 and for ordered streams), with by_key items
// on their key's consumer, and end of stream seen exactly once. Plus: empty streams, a 10 MB
// item, empty ordered batches, and misuse of the Outbox.
#include "channel/channel.hpp"
#include "channel/inbox.hpp"
#include "channel/outbox.hpp"
#include "channel_test_support.hpp"
#include "shm/segment.hpp"
#include "support/child_process.hpp"

#include <doctest/doctest.h>
#include <fmt/core.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

using namespace std::chrono_literals;
using namespace procflow::channel;
using procflow::detail::batch_view;
using procflow::detail::output_port;
namespace shm = procflow::shm;
namespace pt = procflow::test;

namespace {

constexpr auto any_lane = output_port::any_lane;

const char* dispatch_name(Dispatch d) {
  switch (d) {
    case Dispatch::round_robin:
      return "round_robin";
    case Dispatch::least_loaded:
      return "least_loaded";
    case Dispatch::by_sequence:
      return "by_sequence";
    case Dispatch::by_key:
      return "by_key";
  }
  return "?";
}

std::vector<std::uint64_t> seeds() {
  std::vector<std::uint64_t> s{1, 20240607, 0x5eed5eed};
  if (const char* env = std::getenv("PROCFLOW_SEED"); env && *env) s.push_back(std::strtoull(env, nullptr, 0));
  return s;
}

// A consumer or producer child reports a failure by printing it and exiting non-zero; the parent
// prints the child's stderr through ctest's output.
template <class... Args>
int fail(fmt::format_string<Args...> format, Args&&... args) {
  fmt::print(stderr, "child {}: {}\n", ::getpid(), fmt::format(format, std::forward<Args>(args)...));
  std::fflush(stderr);
  return 1;
}

std::uint64_t mix(std::uint64_t x) {  // splitmix64 finaliser: the by_key "hash"
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Everything a run sends, decided by the parent before it forks (children inherit it).
struct Plan {
  std::uint32_t producers = 1;
  std::uint32_t consumers = 1;
  Dispatch dispatch = Dispatch::round_robin;
  RingGeometry geometry;
  std::uint64_t initial_index = 0;
  std::vector<std::vector<std::size_t>> lengths;  // [producer][index] item length
  struct Batch {
    std::uint32_t producer;
    std::uint64_t first;  // index of its first item within its producer
    std::uint32_t count;
  };
  std::vector<Batch> batches;  // ordered runs only; batches[seq]

  bool ordered() const { return dispatch == Dispatch::by_sequence; }
  std::size_t key_lane(std::uint32_t p, std::uint64_t i) const { return mix((std::uint64_t{p} << 40) ^ i) % consumers; }
  std::uint64_t total_items() const {
    std::uint64_t n = 0;
    for (const auto& l : lengths) n += l.size();
    return n;
  }
  std::string describe() const {
    return fmt::format("{}x{} {} slots={} payload={} initial_index={:#x} items={}", producers, consumers,
                       dispatch_name(dispatch), geometry.slot_count, geometry.payload_bytes, initial_index,
                       total_items());
  }
};

// `run` cycles the slot count through 1, 2, 4, ..., 64 so every seed covers each of them.
Plan make_plan(std::uint64_t seed, std::uint64_t run, std::uint32_t producers, std::uint32_t consumers,
               Dispatch dispatch) {
  std::mt19937_64 rng(mix(seed ^ mix(producers * 131 + consumers * 17 + static_cast<std::uint64_t>(dispatch))));
  Plan plan;
  plan.producers = producers;
  plan.consumers = consumers;
  plan.dispatch = dispatch;
  plan.geometry.slot_count = 1u << ((seed + run) % 7);                           // 1 .. 64
  plan.geometry.payload_bytes = static_cast<std::uint32_t>(64 << (rng() % 11));  // 64 B .. 64 KiB
  plan.geometry.payload_bytes += static_cast<std::uint32_t>(rng() % 64);         // not always a power of two
  if (plan.geometry.payload_bytes > 64 * 1024) plan.geometry.payload_bytes = 64 * 1024;
  plan.initial_index = rng() % 2 ? std::numeric_limits<std::uint64_t>::max() - rng() % 200 : rng() % 1000;

  const std::size_t payload = plan.geometry.payload_bytes;
  const std::size_t small_max =
      std::max<std::size_t>(pt::item_header_bytes + 1, std::min<std::size_t>(400, payload / 3));
  const auto random_length = [&]() -> std::size_t {
    const auto r = rng() % 100;
    if (r < 3) return std::min<std::size_t>(payload + rng() % (2 * payload), 200 * 1024);  // split over slots
    if (r < 8) return payload - 4 + rng() % 8;  // around the largest in-place item
    return pt::item_header_bytes + rng() % (small_max - pt::item_header_bytes);
  };
  plan.lengths.resize(producers);
  if (plan.ordered()) {
    const std::uint64_t batch_count = 1000 + rng() % 1000;
    std::vector<std::uint64_t> next(producers, 0);
    for (std::uint64_t s = 0; s < batch_count; ++s) {
      const auto p = static_cast<std::uint32_t>(s % producers);
      const auto count = static_cast<std::uint32_t>(rng() % 8);  // 0: an empty batch
      plan.batches.push_back({p, next[p], count});
      for (std::uint32_t k = 0; k < count; ++k) plan.lengths[p].push_back(random_length());
      next[p] += count;
    }
  } else {
    for (auto& l : plan.lengths) {
      const std::uint64_t n = 3000 + rng() % 5000;
      for (std::uint64_t i = 0; i < n; ++i) l.push_back(random_length());
    }
  }
  return plan;
}

int run_producer(const Plan& plan, const Channel& ch, std::uint32_t p) {
  OutboxOptions options;
  options.dispatch = plan.dispatch;
  Outbox out(ch, p, options);
  const auto& lengths = plan.lengths[p];
  if (plan.ordered()) {
    for (std::uint64_t s = p; s < plan.batches.size(); s += plan.producers) {
      const auto& batch = plan.batches[s];
      out.begin_batch({s, 0, false});
      for (std::uint64_t i = batch.first; i < batch.first + batch.count; ++i)
        pt::send_item(out, any_lane, pt::make_item(p, i, lengths[i]));
      out.end_batch();
    }
  } else {
    for (std::uint64_t i = 0; i < lengths.size(); ++i) {
      const std::size_t lane = plan.dispatch == Dispatch::by_key ? plan.key_lane(p, i) : any_lane;
      pt::send_item(out, lane, pt::make_item(p, i, lengths[i]));
    }
  }
  out.close();
  if (out.stats().items != lengths.size())
    return fail("producer {} published {} of {} items", p, out.stats().items, lengths.size());
  return 0;
}

// After the first false, receive() and try_receive() must keep returning false.
int check_end_is_sticky(Inbox& in) {
  batch_view b;
  if (!in.at_end()) return fail("receive() returned false but at_end() is false");
  for (int k = 0; k < 3; ++k)
    if (in.receive(b) || in.try_receive(b)) return fail("a batch arrived after end of stream");
  return 0;
}

int run_consumer(const Plan& plan, const Channel& ch, std::uint32_t q, std::atomic<std::uint32_t>* seen,
                 const std::vector<std::uint64_t>& seen_base) {
  InboxOptions options;
  if (plan.ordered()) {
    options.ordered = true;
    options.first_seq = q;
    options.seq_stride = plan.consumers;
  }
  Inbox in(ch, q, options);
  batch_view b;
  std::uint64_t received = 0;
  // Unordered: per-producer FIFO (each ring is FIFO); exact order for a single producer.
  std::vector<std::uint64_t> next_min(plan.producers, 0);
  // Ordered: the batch we are in and the position within it.
  std::uint64_t seq = q;
  std::uint64_t in_batch = 0;
  while (in.receive(b)) {
    std::vector<std::string> items;
    try {
      items = pt::decode_batch(b);
    } catch (const std::exception& e) {
      return fail("consumer {}: undecodable batch: {}", q, e.what());
    }
    if (plan.ordered()) {
      if (b.meta.seq != seq) return fail("consumer {}: batch {} arrived while expecting {}", q, b.meta.seq, seq);
      if (seq >= plan.batches.size()) return fail("consumer {}: batch {} was never sent", q, seq);
    }
    for (const auto& item : items) {
      pt::item_id id;
      try {
        id = pt::check_item(item);
      } catch (const std::exception& e) {
        return fail("consumer {}: {}", q, e.what());
      }
      if (id.producer >= plan.producers || id.index >= plan.lengths[id.producer].size())
        return fail("consumer {}: item {}/{} was never sent", q, id.producer, id.index);
      if (id.length != plan.lengths[id.producer][id.index])
        return fail("consumer {}: item {}/{} has {} bytes, sent {}", q, id.producer, id.index, id.length,
                    plan.lengths[id.producer][id.index]);
      if (plan.ordered()) {
        const auto& batch = plan.batches[seq];
        if (id.producer != batch.producer || id.index != batch.first + in_batch)
          return fail("consumer {}: batch {} position {} holds item {}/{}", q, seq, in_batch, id.producer, id.index);
        ++in_batch;
      } else {
        if (id.index < next_min[id.producer])
          return fail("consumer {}: item {}/{} after {}/{}", q, id.producer, id.index, id.producer,
                      next_min[id.producer] - 1);
        if (plan.producers == 1 && plan.consumers == 1 && id.index != next_min[0])
          return fail("1x1: item {} arrived while expecting {}", id.index, next_min[0]);
        next_min[id.producer] = id.index + 1;
        if (plan.dispatch == Dispatch::by_key && plan.key_lane(id.producer, id.index) != q)
          return fail("consumer {}: item {}/{} belongs to lane {}", q, id.producer, id.index,
                      plan.key_lane(id.producer, id.index));
      }
      seen[seen_base[id.producer] + id.index].fetch_add(1, std::memory_order_relaxed);
      ++received;
    }
    const bool batch_end = b.batch_end;
    in.release();
    if (plan.ordered() && batch_end) {
      if (in_batch != plan.batches[seq].count)
        return fail("consumer {}: batch {} ended after {} of {} items", q, seq, in_batch, plan.batches[seq].count);
      in_batch = 0;
      seq += plan.consumers;
    }
  }
  if (plan.ordered() && seq < plan.batches.size()) return fail("consumer {}: stream ended before batch {}", q, seq);
  if (in.stats().items != received)
    return fail("consumer {}: stats say {} items, counted {}", q, in.stats().items, received);
  return check_end_is_sticky(in);
}

// Forks the plan's producers and consumers and checks every item arrived exactly once.
void run_plan(const Plan& plan) {
  INFO(plan.describe());
  const auto shm_before = pt::dev_shm_entries();
  {
    shm::SegmentLayout layout;
    Channel ch(layout, plan.producers, plan.consumers, plan.geometry);
    std::vector<std::uint64_t> seen_base;
    std::uint64_t total = 0;
    for (const auto& l : plan.lengths) {
      seen_base.push_back(total);
      total += l.size();
    }
    const auto seen_offset = layout.add(sizeof(std::atomic<std::uint32_t>) * std::max<std::uint64_t>(total, 1));
    const shm::Segment segment(layout);
    ch.create(segment, plan.initial_index);
    auto* seen = segment.at<std::atomic<std::uint32_t>>(seen_offset, total);
    for (std::uint64_t i = 0; i < total; ++i) new (&seen[i]) std::atomic<std::uint32_t>(0);

    std::vector<std::unique_ptr<pt::ChildProcess>> children;
    for (std::uint32_t q = 0; q < plan.consumers; ++q)
      children.push_back(
          std::make_unique<pt::ChildProcess>([&, q] { return run_consumer(plan, ch, q, seen, seen_base); }));
    for (std::uint32_t p = 0; p < plan.producers; ++p)
      children.push_back(std::make_unique<pt::ChildProcess>([&, p] { return run_producer(plan, ch, p); }));
    const auto failures = pt::wait_all(children, 20s);
    for (const auto& f : failures) FAIL_CHECK(f);

    if (failures.empty()) {
      std::uint64_t lost = 0;
      std::uint64_t duplicated = 0;
      for (std::uint64_t i = 0; i < total; ++i) {
        const auto n = seen[i].load();
        lost += n == 0;
        duplicated += n > 1;
      }
      CHECK(lost == 0);
      CHECK(duplicated == 0);
    }
  }
  CHECK(pt::count_children() == 0);
  CHECK(pt::dev_shm_entries() == shm_before);
}

struct Topology {
  std::uint32_t producers;
  std::uint32_t consumers;
};
constexpr Topology topologies[] = {{1, 1}, {2, 1}, {1, 3}, {2, 2}};
constexpr Dispatch policies[] = {Dispatch::round_robin, Dispatch::least_loaded, Dispatch::by_sequence,
                                 Dispatch::by_key};

}  // namespace

TEST_CASE("channel: every item arrives exactly once for every topology, dispatch and seed") {
  for (const auto seed : seeds()) {
    MESSAGE("seed " << seed << " (set PROCFLOW_SEED to add one)");
    CAPTURE(seed);
    std::uint64_t run = 0;
    for (const auto& t : topologies)
      for (const auto d : policies) run_plan(make_plan(seed, run++, t.producers, t.consumers, d));
  }
}

TEST_CASE("channel: an empty stream ends at once, for every topology") {
  for (const auto& t : topologies) {
    CAPTURE(t.producers);
    CAPTURE(t.consumers);
    for (const bool ordered : {false, true}) {
      CAPTURE(ordered);
      const auto shm_before = pt::dev_shm_entries();
      {
        shm::SegmentLayout layout;
        Channel ch(layout, t.producers, t.consumers, {2, 256});
        const shm::Segment segment(layout);
        ch.create(segment);
        std::vector<std::unique_ptr<pt::ChildProcess>> children;
        for (std::uint32_t q = 0; q < t.consumers; ++q)
          children.push_back(std::make_unique<pt::ChildProcess>([&, q] {
            InboxOptions options;
            options.ordered = ordered;
            options.first_seq = q;
            options.seq_stride = t.consumers;
            Inbox in(ch, q, options);
            batch_view b;
            if (in.receive(b)) return fail("empty stream delivered a batch");
            return check_end_is_sticky(in);
          }));
        for (std::uint32_t p = 0; p < t.producers; ++p)
          children.push_back(std::make_unique<pt::ChildProcess>([&, p] {
            OutboxOptions options;
            options.dispatch = ordered ? Dispatch::by_sequence : Dispatch::least_loaded;
            Outbox out(ch, p, options);
            out.flush();  // nothing to publish
            out.close();
            return out.stats().slots == 0 ? 0 : fail("empty stream published {} slots", out.stats().slots);
          }));
        for (const auto& f : pt::wait_all(children, 10s)) FAIL_CHECK(f);
      }
      CHECK(pt::count_children() == 0);
      CHECK(pt::dev_shm_entries() == shm_before);
    }
  }
}

TEST_CASE("channel: a 10 MB item crosses a 4 x 64 KiB ring between small items") {
  const auto shm_before = pt::dev_shm_entries();
  for (const auto initial : {std::uint64_t{0}, std::numeric_limits<std::uint64_t>::max() - 7}) {
    CAPTURE(initial);
    shm::SegmentLayout layout;
    Channel ch(layout, 1, 1, {4, 64 * 1024});
    const shm::Segment segment(layout);
    ch.create(segment, initial);
    constexpr std::size_t big = 10 * 1000 * 1000;
    pt::ChildProcess consumer([&] {
      Inbox in(ch, 0);
      batch_view b;
      std::vector<std::size_t> lengths;
      std::uint64_t next = 0;
      while (in.receive(b)) {
        for (const auto& item : pt::decode_batch(b)) {
          const auto id = pt::check_item(item);  // verifies every byte of the 10 MB
          if (id.index != next++) return fail("item {} out of order", id.index);
          lengths.push_back(id.length);
        }
        in.release();
      }
      if (lengths != std::vector<std::size_t>{100, big, 100}) return fail("got {} items", lengths.size());
      return check_end_is_sticky(in);
    });
    pt::ChildProcess producer([&] {
      Outbox out(ch, 0);
      pt::send_item(out, any_lane, pt::make_item(0, 0, 100));
      pt::send_item(out, any_lane, pt::make_item(0, 1, big));
      pt::send_item(out, any_lane, pt::make_item(0, 2, 100));
      out.close();
      return out.stats().slots >= big / (64 * 1024) ? 0 : fail("only {} slots", out.stats().slots);
    });
    CHECK(producer.succeeded_within(20s));
    CHECK(consumer.succeeded_within(20s));
  }
  CHECK(pt::count_children() == 0);
  CHECK(pt::dev_shm_entries() == shm_before);
}

TEST_CASE("channel: a streamed split item is read in pieces straight from its fragments") {
  // InboxOptions::stream_large_items (issue 14): a 300 000-byte item written from three parts
  // through a 4 x 64 KiB ring arrives as a large_item_reader, read in uneven pieces across
  // fragment boundaries while the producer still writes; reading past its end throws; an item
  // read only in part is stepped past by release(), and the next item arrives intact.
  const auto shm_before = pt::dev_shm_entries();
  shm::SegmentLayout layout;
  Channel ch(layout, 1, 1, {4, 64 * 1024});
  const shm::Segment segment(layout);
  ch.create(segment);
  constexpr std::size_t big = 300000;
  auto byte_at = [](std::size_t item, std::size_t k) { return static_cast<std::byte>((k * 31 + item * 7 + (k >> 9)) & 0xff); };
  pt::ChildProcess consumer([&] {
    InboxOptions options;
    options.stream_large_items = true;
    Inbox in(ch, 0, options);
    batch_view b;
    // Item 0: read whole, in pieces.
    if (!in.receive(b) || !b.large || !b.bytes.empty() || b.items != 1 || b.large_bytes != big || b.large->size() != big)
      return fail("item 0 not streamed");
    std::vector<std::byte> got(big);
    std::size_t done = 0;
    for (const std::size_t piece : {std::size_t{1}, std::size_t{7}, std::size_t{65535}, std::size_t{70000}, big - 135543}) {
      b.large->read(got.data() + done, piece);
      done += piece;
    }
    for (std::size_t k = 0; k < big; ++k)
      if (got[k] != byte_at(0, k)) return fail("item 0 differs at byte {}", k);
    std::byte extra;
    try {
      b.large->read(&extra, 1);
      return fail("read past the end of the item did not throw");
    } catch (const procflow::shm_error&) {
    }
    in.release();
    // Item 1: only its first 10 bytes are read; release() steps past the rest.
    if (!in.receive(b) || !b.large) return fail("item 1 not streamed");
    b.large->read(got.data(), 10);
    in.release();
    // Item 2: a small one, delivered in place after the skipped fragments.
    if (!in.receive(b) || b.large || b.items != 1 || b.bytes.size() != 100) return fail("item 2 not found after the skipped item");
    for (std::size_t k = 0; k < 100; ++k)
      if (b.bytes[k] != byte_at(2, k)) return fail("item 2 differs at byte {}", k);
    in.release();
    return in.receive(b) ? fail("an item after the last") : 0;
  });
  pt::ChildProcess producer([&] {
    Outbox out(ch, 0);
    for (std::size_t item = 0; item < 2; ++item) {
      std::vector<std::byte> bytes(big);
      for (std::size_t k = 0; k < big; ++k) bytes[k] = byte_at(item, k);
      const std::span<const std::byte> all(bytes);
      const std::span<const std::byte> parts[] = {all.first(3), all.subspan(3, 200000), all.subspan(200003)};
      out.write_large_parts(any_lane, parts);
    }
    std::byte* p = out.reserve(100);
    for (std::size_t k = 0; k < 100; ++k) p[k] = byte_at(2, k);
    out.commit(100);
    out.close();
    return 0;
  });
  CHECK(producer.succeeded_within(20s));
  CHECK(consumer.succeeded_within(20s));
  CHECK(pt::count_children() == 0);
  CHECK(pt::dev_shm_entries() == shm_before);
}

TEST_CASE("channel: a split item wakes a sleeping peer once per half ring, not once per fragment") {
  // Issue 14: a producer writing a large item faster than it is read fills the ring and sleeps;
  // woken for every slot the reader gives back (and the reader for every fragment published),
  // the two sides paid a futex wake-up and two context switches per 64 KiB slot. A peer that
  // sleeps is simulated by a registered waiter on its event; every wake-up bumps the event's
  // epoch. 16 fragments through a 16-slot ring: the producer wakes its reader at fragments 0, 8
  // and the last (it woke it 16 times before); the reader wakes its producer after giving back
  // fragments 8 and 16 (16 times before). The item arrives intact.
  shm::SegmentLayout layout;
  constexpr std::uint32_t slots = 16;
  constexpr std::uint32_t payload = 4096;
  Channel ch(layout, 1, 1, {slots, payload});
  const shm::Segment segment(layout);
  ch.create(segment);
  constexpr std::size_t big = std::size_t{slots} * payload;  // exactly 16 fragments
  std::vector<std::byte> bytes(big);
  for (std::size_t k = 0; k < big; ++k) bytes[k] = static_cast<std::byte>((k * 13 + (k >> 12)) & 0xff);

  EventShared& data = ch.data_event(0);
  EventShared& space = ch.space_event(0);
  Outbox out(ch, 0);
  data.waiters.fetch_add(1);  // the reader "sleeps"
  const std::uint32_t data_before = data.epoch.load();
  const std::span<const std::byte> parts[] = {std::span<const std::byte>(bytes)};
  out.write_large_parts(any_lane, parts);
  data.waiters.fetch_sub(1);
  CHECK(data.epoch.load() - data_before == 3);

  InboxOptions options;
  options.stream_large_items = true;
  Inbox in(ch, 0, options);
  batch_view b;
  REQUIRE(in.receive(b));
  REQUIRE(b.large != nullptr);
  REQUIRE(b.large_bytes == big);
  space.waiters.fetch_add(1);  // the producer "sleeps"
  const std::uint32_t space_before = space.epoch.load();
  std::vector<std::byte> got(big);
  b.large->read(got.data(), big);
  space.waiters.fetch_sub(1);
  CHECK(space.epoch.load() - space_before == 2);
  CHECK(got == bytes);
  in.release();
  out.close();
  CHECK_FALSE(in.receive(b));
}

TEST_CASE("channel: empty ordered batches keep sequence numbers gap-free") {
  // Batch s carries counts[s] items; the empty ones must still arrive (as empty batch ends).
  const std::vector<std::uint32_t> counts{2, 0, 1, 0, 0, 3, 0};
  struct Record {
    std::uint64_t seq;
    std::uint32_t items;
    std::uint32_t batch_end;
  };
  const auto shm_before = pt::dev_shm_entries();
  {
    shm::SegmentLayout layout;
    Channel ch(layout, 1, 1, {2, 1024});
    const auto records_offset = layout.add(sizeof(Record) * 64);
    const auto count_offset = layout.add(sizeof(std::uint64_t));
    const shm::Segment segment(layout);
    ch.create(segment);
    auto* records = segment.at<Record>(records_offset, 64);
    auto* record_count = segment.at<std::uint64_t>(count_offset);

    pt::ChildProcess consumer([&] {
      InboxOptions options;
      options.ordered = true;
      Inbox in(ch, 0, options);
      batch_view b;
      while (in.receive(b)) {
        if (*record_count == 64) return fail("too many batches");
        records[(*record_count)++] = {b.meta.seq, b.items, b.batch_end ? 1u : 0u};
        in.release();
      }
      return check_end_is_sticky(in);
    });
    pt::ChildProcess producer([&] {
      OutboxOptions options;
      options.dispatch = Dispatch::by_sequence;
      Outbox out(ch, 0, options);
      std::uint64_t index = 0;
      for (std::uint64_t s = 0; s < counts.size(); ++s) {
        out.begin_batch({s, 0, false});
        for (std::uint32_t k = 0; k < counts[s]; ++k) pt::send_item(out, any_lane, pt::make_item(0, index++, 20));
        out.end_batch();
      }
      out.close();
      return 0;
    });
    REQUIRE(producer.succeeded_within(10s));
    REQUIRE(consumer.succeeded_within(10s));
    // Each batch fits one slot, so each arrives as one view carrying its items and the end mark.
    REQUIRE(*record_count == counts.size());
    for (std::uint64_t s = 0; s < counts.size(); ++s) {
      CAPTURE(s);
      CHECK(records[s].seq == s);
      CHECK(records[s].items == counts[s]);
      CHECK(records[s].batch_end == 1);
    }
  }
  CHECK(pt::count_children() == 0);
  CHECK(pt::dev_shm_entries() == shm_before);
}

TEST_CASE("channel: a gap in ordered sequence numbers is reported, not waited on forever") {
  // The producer skips batch 1 and closes: the consumer must fail instead of hanging.
  const auto shm_before = pt::dev_shm_entries();
  {
    shm::SegmentLayout layout;
    Channel ch(layout, 1, 1, {4, 1024});
    const shm::Segment segment(layout);
    ch.create(segment);
    pt::ChildProcess consumer([&] {
      InboxOptions options;
      options.ordered = true;
      Inbox in(ch, 0, options);
      batch_view b;
      try {
        while (in.receive(b)) in.release();
      } catch (const procflow::shm_error&) {
        return 0;
      }
      return fail("a missing batch went unnoticed");
    });
    pt::ChildProcess producer([&] {
      OutboxOptions options;
      options.dispatch = Dispatch::by_sequence;
      Outbox out(ch, 0, options);
      for (const std::uint64_t s : {std::uint64_t{0}, std::uint64_t{2}}) {
        out.begin_batch({s, 0, false});
        pt::send_item(out, any_lane, pt::make_item(0, s, 20));
        out.end_batch();
      }
      out.close();
      return 0;
    });
    CHECK(producer.succeeded_within(10s));
    CHECK(consumer.succeeded_within(10s));
  }
  CHECK(pt::count_children() == 0);
  CHECK(pt::dev_shm_entries() == shm_before);
}

TEST_CASE("channel: an ordered consumer's replacement reads on where its predecessor was, holding a slot or not") {
  // Producer 0 sends batch 0 over several slots, producer 1 batch 1 in one. A consumer "dies"
  // (its Inbox is dropped) after releasing a slot inside batch 0, and again while holding one;
  // each replacement starts from what a replica's record keeps (pf::restart): the position after
  // the release, or the ring whose head slot it held. Every item arrives once, in order.
  const auto shm_before = pt::dev_shm_entries();
  {
    shm::SegmentLayout layout;
    Channel ch(layout, 2, 1, {8, 1024});
    const shm::Segment segment(layout);
    ch.create(segment);
    constexpr std::uint64_t batch0_items = 12;  // 300-byte items, 3 to a 1 KiB slot: 4 slots
    for (std::uint32_t p = 0; p < 2; ++p) {
      pt::ChildProcess producer([&, p] {
        OutboxOptions options;
        options.dispatch = Dispatch::by_sequence;
        Outbox out(ch, p, options);
        out.begin_batch({p, 0, false});
        for (std::uint64_t i = 0; i < (p == 0 ? batch0_items : 2); ++i) pt::send_item(out, any_lane, pt::make_item(p, i, 300));
        out.end_batch();
        out.close();
        return 0;
      });
      REQUIRE(producer.succeeded_within(10s));
    }
    pt::ChildProcess consumer([&] {
      std::vector<std::pair<std::uint32_t, std::uint64_t>> got;  // (producer, index) in arrival order
      auto take = [&](const batch_view& b, std::uint64_t want_seq) {
        if (b.meta.seq != want_seq) throw std::runtime_error(fmt::format("batch {} where {} was due", b.meta.seq, want_seq));
        for (const auto& item : pt::decode_batch(b)) {
          const auto id = pt::check_item(item);
          got.emplace_back(id.producer, id.index);
        }
      };
      InboxOptions options;
      options.ordered = true;
      batch_view b;
      Inbox::position after{};
      {
        Inbox first(ch, 0, options);
        if (!first.receive(b) || b.batch_end) return fail("batch 0 should span slots");
        take(b, 0);
        after = first.position_after_release();
        if (after.seq != 0 || after.ring != std::optional<std::uint32_t>{0}) return fail("position inside batch 0 on ring 0");
        first.release();
      }  // dies after the release
      InboxOptions resumed = options;
      resumed.first_seq = after.seq;
      resumed.continue_ring = after.ring;
      {
        Inbox second(ch, 0, resumed);
        for (;;) {  // the rest of batch 0
          if (!second.receive(b)) return fail("batch 0 did not end");
          take(b, 0);
          const bool end = b.batch_end;
          second.release();
          if (end) break;
        }
        if (!second.receive(b)) return fail("no batch 1");
        const std::size_t before = got.size();
        take(b, 1);
        got.resize(before);  // its items are read again below
      }  // dies holding batch 1's slot, at the head of ring 1
      InboxOptions held = options;
      held.resume_at_head = 1;  // without it: batch 0 is due, and "never arrived"
      Inbox third(ch, 0, held);
      std::uint64_t seq = 1;
      while (third.receive(b)) {
        take(b, seq);
        if (b.batch_end) ++seq;
        third.release();
      }
      if (seq != 2) return fail("stream ended at batch {}", seq);
      std::vector<std::pair<std::uint32_t, std::uint64_t>> want;
      for (std::uint64_t i = 0; i < batch0_items; ++i) want.emplace_back(0, i);
      for (std::uint64_t i = 0; i < 2; ++i) want.emplace_back(1, i);
      return got == want ? 0 : fail("{} items, not each once in order", got.size());
    });
    CHECK(consumer.succeeded_within(10s));
  }
  CHECK(pt::count_children() == 0);
  CHECK(pt::dev_shm_entries() == shm_before);
}

TEST_CASE("channel: Outbox misuse throws instead of corrupting the stream") {
  shm::SegmentLayout layout;
  Channel ch(layout, 1, 2, {2, 256});
  const shm::Segment segment(layout);
  ch.create(segment);
  SUBCASE("an in-place item larger than a slot") {
    Outbox out(ch, 0);
    CHECK(out.max_item_bytes() == 256);
    CHECK(out.lane_count() == 2);
    CHECK_THROWS_AS(out.reserve(257), std::logic_error);
  }
  SUBCASE("by_key without a lane") {
    OutboxOptions options;
    options.dispatch = Dispatch::by_key;
    Outbox out(ch, 0, options);
    CHECK_THROWS_AS(out.reserve(8), std::logic_error);
    CHECK_NOTHROW(out.reserve_lane(1, 8));
  }
  SUBCASE("write after close") {
    Outbox out(ch, 0);
    out.close();
    CHECK_THROWS_AS(out.reserve(8), std::logic_error);
    const std::vector<std::byte> item(1000);
    CHECK_THROWS_AS(out.write_large(any_lane, item), std::logic_error);
  }
}

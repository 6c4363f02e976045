// Checks lib/channel/{ring,outbox,inbox}.hpp with producer and consumer as std::threads of one
// process: many items of random sizes arrive complete and in FIFO order. Built to be run under
// ThreadSanitizer (label tsan), which checks the acquire/release pairs of the ring and the
// eventcount's wait/notify protocol.
#include "channel/channel.hpp"
#include "channel/inbox.hpp"
#include "channel/outbox.hpp"
#include "channel/ring.hpp"
#include "channel_test_support.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

using namespace procflow::channel;
using procflow::detail::batch_view;
using procflow::detail::output_port;
namespace shm = procflow::shm;
namespace pt = procflow::test;

namespace {

#if defined(PROCFLOW_SANITIZED)
constexpr std::uint64_t scale = 1;  // sanitizers are 5-20x slower
#else
constexpr std::uint64_t scale = 5;
#endif

// Runs `body` on a thread, capturing an exception to rethrow on join (doctest asserts are not
// thread-safe, so threads report through this instead).
class Worker {
 public:
  template <class F>
  explicit Worker(F body)
      : thread_([this, body]() mutable {
          try {
            body();
          } catch (const std::exception& e) {
            error_ = e.what();
          } catch (...) {
            error_ = "unknown exception";
          }
        }) {}
  ~Worker() {
    if (thread_.joinable()) thread_.join();
  }
  std::string join() {
    thread_.join();
    return error_;
  }

 private:
  std::string error_;
  std::thread thread_;
};

}  // namespace

TEST_CASE("ring threads: RingWriter and RingReader keep FIFO under concurrency") {
  for (std::uint32_t capacity : {1u, 2u, 16u}) {
    CAPTURE(capacity);
    const RingGeometry g{capacity, 256};
    shm::SegmentLayout layout;
    const auto offset = reserve_ring(layout, g);
    const shm::Segment segment(layout);
    const RingView ring = create_ring(segment, offset, g, std::numeric_limits<std::uint64_t>::max() - 1000);
    const std::uint64_t count = 20000 * scale;

    Worker producer([&] {
      RingWriter w(ring);
      std::mt19937 rng(capacity);
      for (std::uint64_t i = 0; i < count; ++i) {
        SlotHeader* slot;
        while ((slot = w.try_claim()) == nullptr) std::this_thread::yield();
        const auto bytes = static_cast<std::uint32_t>(8 + rng() % (256 - 8 + 1));
        std::byte* p = w.payload(slot);
        std::memcpy(p, &i, 8);
        for (std::uint32_t k = 8; k < bytes; ++k) p[k] = static_cast<std::byte>(i + k);
        slot->bytes = bytes;
        slot->items = 1;
        slot->seq = i;
        w.publish();
      }
      w.close();
    });
    std::string consumer_error;
    Worker consumer([&] {
      RingReader r(ring);
      std::mt19937 rng(capacity);
      std::uint64_t expected = 0;
      for (;;) {
        const SlotHeader* slot = r.try_peek();
        if (!slot) {
          if (r.drained()) break;
          std::this_thread::yield();
          continue;
        }
        const auto bytes = static_cast<std::uint32_t>(8 + rng() % (256 - 8 + 1));
        std::uint64_t i = 0;
        std::memcpy(&i, r.payload(slot), 8);
        if (i != expected || slot->seq != expected || slot->bytes != bytes || slot->items != 1)
          throw std::runtime_error("slot " + std::to_string(expected) + " out of order or malformed (got " +
                                   std::to_string(i) + ")");
        for (std::uint32_t k = 8; k < bytes; ++k)
          if (r.payload(slot)[k] != static_cast<std::byte>(i + k)) throw std::runtime_error("slot payload corrupt");
        r.release();
        ++expected;
      }
      if (expected != count) throw std::runtime_error("got " + std::to_string(expected) + " slots");
    });
    CHECK(producer.join() == "");
    CHECK(consumer.join() == "");
  }
}

TEST_CASE("ring threads: Outbox to Inbox, random item sizes including split items, FIFO") {
  for (std::uint32_t capacity : {1u, 4u}) {
    CAPTURE(capacity);
    shm::SegmentLayout layout;
    Channel ch(layout, 1, 1, {capacity, 1024});
    const shm::Segment segment(layout);
    ch.create(segment, std::numeric_limits<std::uint64_t>::max() - 3);
    const std::uint64_t count = 4000 * scale;
    const auto length_of = [](std::mt19937_64& rng) -> std::size_t {
      return rng() % 50 == 0 ? 1000 + rng() % 5000 : 12 + rng() % 200;  // 2% larger than a slot
    };

    Worker producer([&] {
      OutboxOptions options;
      options.spin = 16;  // sleep often: exercises the futex path
      Outbox out(ch, 0, options);
      std::mt19937_64 rng(99);
      for (std::uint64_t i = 0; i < count; ++i)
        pt::send_item(out, output_port::any_lane, pt::make_item(0, i, length_of(rng)));
      out.close();
      out.close();  // idempotent
    });
    Worker consumer([&] {
      InboxOptions options;
      options.spin = 16;
      Inbox in(ch, 0, options);
      std::mt19937_64 rng(99);
      std::uint64_t expected = 0;
      batch_view b;
      while (in.receive(b)) {
        for (const auto& item : pt::decode_batch(b)) {
          const auto id = pt::check_item(item);
          if (id.index != expected || id.length != std::max<std::size_t>(length_of(rng), 12))
            throw std::runtime_error("item " + std::to_string(expected) + " out of order or wrong length");
          ++expected;
        }
        in.release();
      }
      if (expected != count) throw std::runtime_error("got " + std::to_string(expected) + " items");
      if (in.receive(b) || in.try_receive(b) || !in.at_end()) throw std::runtime_error("end of stream not sticky");
    });
    CHECK(producer.join() == "");
    CHECK(consumer.join() == "");
  }
}

TEST_CASE("ring threads: 2 producers x 2 consumers, least-loaded, nothing lost or duplicated") {
  shm::SegmentLayout layout;
  Channel ch(layout, 2, 2, {2, 512});
  const shm::Segment segment(layout);
  ch.create(segment);
  const std::uint64_t count = 3000 * scale;
  std::vector<std::atomic<std::uint32_t>> seen(2 * count);
  for (auto& s : seen) s.store(0);

  std::vector<std::unique_ptr<Worker>> workers;
  for (std::uint32_t p = 0; p < 2; ++p)
    workers.push_back(std::make_unique<Worker>([&, p] {
      Outbox out(ch, p);
      std::mt19937_64 rng(p);
      for (std::uint64_t i = 0; i < count; ++i)
        pt::send_item(out, output_port::any_lane,
                      pt::make_item(p, i, rng() % 40 == 0 ? 600 + rng() % 800 : 12 + rng() % 100));
      out.close();
    }));
  for (std::uint32_t q = 0; q < 2; ++q)
    workers.push_back(std::make_unique<Worker>([&ch, &seen, count, q] {
      Inbox in(ch, q);
      std::uint64_t last[2] = {0, 0};
      bool any[2] = {false, false};
      batch_view b;
      while (in.receive(b)) {
        for (const auto& item : pt::decode_batch(b)) {
          const auto id = pt::check_item(item);
          if (id.producer >= 2 || id.index >= count) throw std::runtime_error("item id out of range");
          // Each ring is FIFO, so one producer's items reach one consumer in increasing order.
          if (any[id.producer] && id.index <= last[id.producer]) throw std::runtime_error("per-producer order broken");
          any[id.producer] = true;
          last[id.producer] = id.index;
          seen[id.producer * count + id.index].fetch_add(1);
        }
        in.release();
      }
    }));
  for (auto& w : workers) CHECK(w->join() == "");
  std::uint64_t missing = 0, duplicated = 0;
  for (auto& s : seen) {
    missing += s.load() == 0;
    duplicated += s.load() > 1;
  }
  CHECK(missing == 0);
  CHECK(duplicated == 0);
}

TEST_CASE("ring threads: ordered 1 producer x 2 consumers by sequence") {
  shm::SegmentLayout layout;
  Channel ch(layout, 1, 2, {2, 256});
  const shm::Segment segment(layout);
  ch.create(segment);
  const std::uint64_t batches = 1000 * scale;
  // Batch s holds (s % 4) items (0: an empty batch); item indices count up across batches.
  const auto items_in = [](std::uint64_t s) { return s % 4; };

  std::vector<std::unique_ptr<Worker>> workers;
  workers.push_back(std::make_unique<Worker>([&] {
    OutboxOptions options;
    options.dispatch = Dispatch::by_sequence;
    Outbox out(ch, 0, options);
    std::uint64_t index = 0;
    for (std::uint64_t s = 0; s < batches; ++s) {
      out.begin_batch({s, 0, false});
      for (std::uint64_t k = 0; k < items_in(s); ++k, ++index)
        pt::send_item(out, output_port::any_lane, pt::make_item(0, index, 12 + (index * 37) % 100));
      out.end_batch();
    }
    out.close();
  }));
  for (std::uint64_t q = 0; q < 2; ++q)
    workers.push_back(std::make_unique<Worker>([&, q] {
      InboxOptions options;
      options.ordered = true;
      options.first_seq = q;
      options.seq_stride = 2;
      Inbox in(ch, static_cast<std::uint32_t>(q), options);
      std::uint64_t seq = q;
      std::uint64_t items_of_batch = 0;
      batch_view b;
      while (in.receive(b)) {
        if (b.meta.seq != seq)
          throw std::runtime_error("batch " + std::to_string(b.meta.seq) + " while expecting " + std::to_string(seq));
        items_of_batch += pt::decode_batch(b).size();
        const bool end = b.batch_end;
        in.release();
        if (end) {
          if (items_of_batch != items_in(seq))
            throw std::runtime_error("batch " + std::to_string(seq) + " has wrong item count");
          items_of_batch = 0;
          seq += 2;
        }
      }
      if (seq < batches) throw std::runtime_error("stream ended at batch " + std::to_string(seq));
    }));
  for (auto& w : workers) CHECK(w->join() == "");
}

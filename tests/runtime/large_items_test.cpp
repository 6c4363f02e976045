// Checks SPEC §1 ("items of any size — zero bytes to many MiB — travel") on the boundaries of
// the slot: items whose encoding is one byte under, exactly, and one byte over a slot's payload,
// two slots, and 64 MiB round-trip bit-exact through generator -> 2 replicas -> a stage in its
// own process -> collect, ordered and unordered. Also the two ways a large item is copied
// (issue 14 part 2): a head-and-body codec (std::string, std::vector of raw elements) goes from
// the object into the slots and from the slots into the reused object; any other codec through
// an encode buffer and a read buffer. And memory: peak RSS does not grow with the number of large
// items.
#include <procflow/procflow.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <utility>
#include <optional>
#include <string>
#include <vector>

namespace pf = procflow;

namespace {

constexpr std::size_t slot = 64 * 1024;  // the default batch_bytes

// Content that differs per item and per position, so a misplaced fragment cannot go unseen.
std::string make_item(std::size_t length, std::size_t index) {
  std::string s(length, '\0');
  std::uint32_t x = static_cast<std::uint32_t>(index) * 2654435761u + 12345u;
  for (auto& c : s) {
    x = x * 1664525u + 1013904223u;
    c = static_cast<char>(x >> 24);
  }
  return s;
}

// String lengths whose encodings are exactly `encoded` bytes.
std::size_t length_for(std::size_t encoded) {
  // The length prefix may be variable-sized: search just below `encoded`.
  for (std::size_t length = encoded; length + 16 > encoded; --length)
    if (pf::codec<std::string>::encoded_size(std::string(length, 'x')) == encoded) return length;
  FAIL("no string length encodes to " << encoded << " bytes");
  return 0;
}

}  // namespace

TEST_CASE("items around every slot boundary and 64 MiB round-trip bit-exact") {
  std::vector<std::size_t> lengths;
  for (const std::size_t encoded : {slot - 1, slot, slot + 1, 2 * slot - 1, 2 * slot, 2 * slot + 1})
    lengths.push_back(length_for(encoded));
  lengths.push_back(std::size_t{64} << 20);
  lengths.push_back(0);
  lengths.push_back(1);
  // Twice over, so the reused buffers of both sides see every size after a larger one too.
  std::vector<std::size_t> order = lengths;
  order.insert(order.end(), lengths.rbegin(), lengths.rend());

  for (const bool ordered : {false, true}) {
    CAPTURE(ordered);
    std::size_t next = 0;
    auto gen = [&next, &order]() -> std::optional<std::string> {
      if (next == order.size()) return std::nullopt;
      const std::size_t k = next++;
      return make_item(order[k], k);
    };
    auto flow = pf::pipeline("large")
                    .source("gen", gen)
                    .map("tag", [](std::string s) { return s; }, pf::replicas(2))
                    .map("own", [](std::string s) { return s; }, pf::own_process, pf::replicas(1));
    auto got = ordered ? flow.collect(pf::ordered).run().value : flow.collect().run().value;
    REQUIRE(got.size() == order.size());
    std::vector<std::string> want;
    for (std::size_t k = 0; k < order.size(); ++k) want.push_back(make_item(order[k], k));
    if (!ordered) {
      std::sort(got.begin(), got.end());
      std::sort(want.begin(), want.end());
    }
    std::size_t mismatches = 0;
    for (std::size_t k = 0; k < want.size(); ++k) mismatches += got[k] != want[k];
    CHECK(mismatches == 0);
  }
}

namespace {

// Per-position content for a vector of 32-bit numbers.
std::vector<std::uint32_t> make_numbers(std::size_t count, std::size_t index) {
  std::vector<std::uint32_t> v(count);
  std::uint32_t x = static_cast<std::uint32_t>(index) * 2246822519u + 7u;
  for (auto& e : v) e = x = x * 1664525u + 1013904223u;
  return v;
}

// Runs `items` (in order) through generator -> 2 replicas -> own process -> collect and checks
// they come out equal, ordered and unordered.
template <class T>
void round_trip(const std::vector<T>& items) {
  for (const bool ordered : {false, true}) {
    CAPTURE(ordered);
    std::size_t next = 0;
    auto gen = [&next, &items]() -> std::optional<T> {
      if (next == items.size()) return std::nullopt;
      return items[next++];
    };
    auto flow = pf::pipeline("large")
                    .source("gen", gen)
                    .map("tag", [](const T& v) { return v; }, pf::replicas(2))
                    .map("own", [](T v) { return v; }, pf::own_process, pf::replicas(1));
    auto got = ordered ? flow.collect(pf::ordered).run().value : flow.collect().run().value;
    REQUIRE(got.size() == items.size());
    std::vector<T> want = items;
    if (!ordered) {
      std::sort(got.begin(), got.end());
      std::sort(want.begin(), want.end());
    }
    std::size_t mismatches = 0;
    for (std::size_t k = 0; k < want.size(); ++k) mismatches += got[k] != want[k];
    CHECK(mismatches == 0);
  }
}

}  // namespace

TEST_CASE("vectors of numbers larger than a slot round-trip bit-exact (head-and-body path)") {
  // Element counts whose encodings straddle one and two slots (the count's varint shifts the
  // body by 1-3 bytes, so fragments split elements), then 16 MiB, then smaller again.
  std::vector<std::vector<std::uint32_t>> items;
  std::size_t index = 0;
  for (const std::size_t count : {slot / 4 - 2, slot / 4 - 1, slot / 4, slot / 4 + 1, slot / 2 - 1, slot / 2 + 1,
                                  std::size_t{4} << 20, std::size_t{0}, slot / 4 + 1, std::size_t{3}})
    items.push_back(make_numbers(count, index++));
  round_trip(items);
}

TEST_CASE("items of a codec without a head-and-body form round-trip bit-exact (buffered path)") {
  // A pair of strings: its codec encodes the whole pair, so a large one goes through the encode
  // buffer and, on the consumer side, through the stream's read buffer.
  std::vector<std::pair<std::string, std::string>> items;
  std::size_t index = 0;
  for (const std::size_t a : {std::size_t{1}, slot - 10, slot, 3 * slot + 7, std::size_t{8} << 20, std::size_t{5}}) {
    items.emplace_back(make_item(a, index), make_item(a / 3 + 1, index + 1000));
    ++index;
  }
  round_trip(items);
}

TEST_CASE("peak RSS does not grow with the number of large items") {
  // 8 MiB items through generator -> 2 replicas -> reduce: every process's peak RSS with 64 items
  // stays within 1.25x (plus 4 MiB) of its peak with 8 items: items are not kept after they were
  // read, and the reused buffers hold one item at a time.
  auto peak = [](std::size_t count) {
    std::size_t next = 0;
    auto result = pf::pipeline("rss")
                      .source("gen", [&next, count]() -> std::optional<std::string> {
                        if (next == count) return std::nullopt;
                        return std::string(std::size_t{8} << 20, static_cast<char>('a' + next++ % 26));
                      })
                      .map("size", [](const std::string& s) { return static_cast<std::uint64_t>(s.size()); }, pf::replicas(2))
                      .reduce("sum", std::uint64_t{0}, std::plus<>{}, std::plus<>{}, pf::own_process)
                      .run();
    CHECK(result.value == count * (std::size_t{8} << 20));
    std::uint64_t largest = 0;
    for (const auto& stage : result.report.stages) {
      CAPTURE(stage.name);
      CAPTURE(stage.peak_rss_bytes);
      largest = std::max(largest, stage.peak_rss_bytes);
    }
    return largest;
  };
  const std::uint64_t few = peak(8);
  const std::uint64_t many = peak(64);
  CAPTURE(few);
  CAPTURE(many);
  CHECK(few > 0);
  CHECK(many <= few + few / 4 + (std::uint64_t{4} << 20));
}

// Checks SPEC §1 ("items of any size — zero bytes to many MiB — travel") on the boundaries of
// the slot: items whose encoding is one byte under, exactly, and one byte over a slot's payload,
// two slots, and 64 MiB round-trip bit-exact through generator -> 2 replicas -> a stage in its
// own process -> collect, ordered and unordered.
#include <procflow/procflow.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
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

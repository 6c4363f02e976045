// Checks lib/shm/segment.hpp: the layout hands out aligned offsets, the header is validated on
// attach (magic, version, sizes), Segment::at refuses anything outside the mapping or misaligned,
// the mapping is shared with forked children, and nothing ever appears in /dev/shm.
#include "shm/segment.hpp"

#include "support/child_process.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <limits>

using namespace std::chrono_literals;
using procflow::shm_error;
using procflow::shm::Segment;
using procflow::shm::SegmentHeader;
using procflow::shm::SegmentLayout;
using procflow::test::ChildProcess;
using procflow::test::count_children;
using procflow::test::dev_shm_entries;

namespace {

SegmentHeader& header_of(const Segment& segment) { return *reinterpret_cast<SegmentHeader*>(segment.base()); }

}  // namespace

TEST_CASE("SegmentLayout hands out aligned, non-overlapping offsets after the header") {
  SegmentLayout layout;
  const auto a = layout.add(10);
  const auto b = layout.add(1, 8);
  const auto c = layout.add(300, 64);
  const auto d = layout.add(5000);
  CHECK(a >= sizeof(SegmentHeader));
  CHECK(a % procflow::shm::cache_line == 0);
  CHECK(b >= a + 10);
  CHECK(b % 8 == 0);
  CHECK(c >= b + 1);
  CHECK(c % 64 == 0);
  CHECK(d >= c + 300);
  CHECK(d % procflow::shm::cache_line == 0);
  CHECK(layout.total_bytes() >= d + 5000);
  CHECK(layout.total_bytes() % 4096 == 0);
}

TEST_CASE("a fresh segment is zeroed, carries a valid header, and validates") {
  SegmentLayout layout;
  const auto offset = layout.add(100000);
  const Segment segment(layout);
  REQUIRE(segment.base() != nullptr);
  CHECK(segment.size() == layout.total_bytes());
  CHECK_NOTHROW(segment.validate());
  const SegmentHeader& h = header_of(segment);
  CHECK(h.magic == procflow::shm::segment_magic);
  CHECK(h.layout_version == procflow::shm::layout_version);
  CHECK(h.header_bytes == sizeof(SegmentHeader));
  CHECK(h.total_bytes == segment.size());
  const auto* bytes = segment.at<std::uint8_t>(offset, 100000);
  bool all_zero = true;
  for (std::size_t i = 0; i < 100000; ++i) all_zero = all_zero && bytes[i] == 0;
  CHECK(all_zero);
}

TEST_CASE("a corrupt segment header is refused with a message naming the problem") {
  SegmentLayout layout;
  layout.add(4096);
  const Segment segment(layout);
  SegmentHeader& h = header_of(segment);
  const SegmentHeader good = h;

  SUBCASE("magic") {
    h.magic = 0xdeadbeef;
    CHECK_THROWS_WITH_AS(segment.validate(), doctest::Contains("bad magic"), shm_error);
  }
  SUBCASE("layout version") {
    h.layout_version = procflow::shm::layout_version + 1;
    CHECK_THROWS_WITH_AS(segment.validate(), doctest::Contains("layout version"), shm_error);
  }
  SUBCASE("header size") {
    h.header_bytes = 16;
    CHECK_THROWS_WITH_AS(segment.validate(), doctest::Contains("header is 16 bytes"), shm_error);
  }
  SUBCASE("total size") {
    h.total_bytes = segment.size() * 2;
    CHECK_THROWS_WITH_AS(segment.validate(), doctest::Contains("are mapped"), shm_error);
  }
  h = good;
  CHECK_NOTHROW(segment.validate());
}

TEST_CASE("Segment::at checks bounds, overflow and alignment") {
  SegmentLayout layout;
  layout.add(8192);
  const Segment segment(layout);
  const std::uint64_t size = segment.size();

  CHECK(segment.at<std::uint64_t>(128) == reinterpret_cast<std::uint64_t*>(segment.base() + 128));
  CHECK_NOTHROW(segment.at<std::uint64_t>(size - 8));
  CHECK_NOTHROW(segment.at<std::byte>(0, size));
  CHECK_NOTHROW(segment.at<std::byte>(size, 0));  // an empty range at the very end

  CHECK_THROWS_AS(segment.at<std::uint64_t>(size), shm_error);
  CHECK_THROWS_AS(segment.at<std::uint64_t>(size - 4), shm_error);
  CHECK_THROWS_AS(segment.at<std::byte>(0, size + 1), shm_error);
  CHECK_THROWS_AS(segment.at<std::byte>(1, size), shm_error);
  CHECK_THROWS_AS(segment.at<std::byte>(size + 1, 0), shm_error);
  CHECK_THROWS_WITH_AS(segment.at<std::uint32_t>(std::numeric_limits<std::uint64_t>::max()),
                       doctest::Contains("outside"), shm_error);
  CHECK_THROWS_AS(segment.at<std::byte>(16, std::numeric_limits<std::size_t>::max()), shm_error);
  // A count whose byte size overflows size_t must not wrap around to a small, "valid" range.
  CHECK_THROWS_AS(segment.at<std::uint64_t>(0, std::numeric_limits<std::size_t>::max() / 8 + 2), shm_error);
  CHECK_THROWS_AS(segment.at<std::uint32_t>(0, std::numeric_limits<std::size_t>::max() / 2), shm_error);

  CHECK_THROWS_WITH_AS(segment.at<std::uint64_t>(132), doctest::Contains("aligned"), shm_error);
  CHECK_THROWS_AS(segment.at<std::uint32_t>(130), shm_error);
  CHECK_NOTHROW(segment.at<std::uint32_t>(132));
}

TEST_CASE("a moved segment keeps its mapping") {
  SegmentLayout layout;
  const auto offset = layout.add(64);
  Segment a(layout);
  *a.at<int>(offset) = 41;
  std::byte* const base = a.base();
  Segment b(std::move(a));
  CHECK(b.base() == base);
  CHECK(*b.at<int>(offset) == 41);
  CHECK_NOTHROW(b.validate());
  Segment c(SegmentLayout{});
  c = std::move(b);
  CHECK(c.base() == base);
  CHECK(*c.at<int>(offset) == 41);
}

TEST_CASE("the segment is shared with forked children and leaves nothing in /dev/shm") {
  const auto shm_before = dev_shm_entries();
  {
    SegmentLayout layout;
    const auto offset = layout.add(sizeof(std::atomic<std::uint64_t>));
    const Segment segment(layout);
    auto* word = new (segment.at<std::atomic<std::uint64_t>>(offset)) std::atomic<std::uint64_t>(1);
    CHECK(dev_shm_entries() == shm_before);  // anonymous: no name while it lives

    ChildProcess child([&] {
      if (word->load() != 1) return 1;  // sees the parent's write made before fork
      try {
        segment.validate();
      } catch (...) {
        return 2;
      }
      word->store(2);  // and the parent sees ours
      return 0;
    });
    const auto status = child.wait_for(10s);
    REQUIRE(status.has_value());
    CHECK(WIFEXITED(*status));
    CHECK(WEXITSTATUS(*status) == 0);
    CHECK(word->load() == 2);
    CHECK(dev_shm_entries() == shm_before);
  }
  CHECK(dev_shm_entries() == shm_before);
  CHECK(count_children() == 0);
}

// Segment: one anonymous shared-memory mapping created by the supervisor before it forks.
//
// Anonymous memory (MAP_SHARED | MAP_ANONYMOUS, through Boost.Interprocess) has no name, so a
// crash at any point can leave nothing behind in /dev/shm: the mapping dies with the last process
// that has it mapped. Children inherit it across fork() at the same address.
//
// Layout: a SegmentHeader at offset 0, then objects placed at offsets handed out by a
// SegmentLayout before the segment is created. Everything inside is plain, fixed-size and
// pointer-free; handles resolve offsets through Segment::at(), which checks bounds.
#pragma once

#include <procflow/error.hpp>

#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>

namespace procflow::shm {

// Our shared layout is an ABI between processes, so the cache-line size is a fixed constant
// (as in oneTBB), not std::hardware_destructive_interference_size, which varies with flags.
// 128 covers adjacent-line prefetching on x86.
inline constexpr std::size_t cache_line = 128;

inline constexpr std::uint64_t segment_magic = 0x31574f4c46434f52ULL;  // "ROCFLOW1", little-endian
inline constexpr std::uint32_t layout_version = 1;

struct SegmentHeader {
  std::uint64_t magic;
  std::uint32_t layout_version;
  std::uint32_t header_bytes;  // sizeof(SegmentHeader) of the writer
  std::uint64_t total_bytes;   // size of the mapping
};
static_assert(sizeof(SegmentHeader) == 24);

constexpr std::size_t align_up(std::size_t n, std::size_t alignment) noexcept {
  return (n + alignment - 1) / alignment * alignment;
}

// Hands out offsets for objects before the segment exists (the segment cannot grow once shared).
class SegmentLayout {
 public:
  SegmentLayout() noexcept : used_(align_up(sizeof(SegmentHeader), cache_line)) {}
  std::uint64_t add(std::size_t bytes, std::size_t alignment = cache_line) {
    used_ = align_up(used_, alignment);
    const std::uint64_t offset = used_;
    used_ += bytes;
    return offset;
  }
  std::size_t total_bytes() const noexcept { return align_up(used_, 4096); }

 private:
  std::size_t used_;
};

class Segment {
 public:
  Segment();  // no mapping; assign a mapped Segment to it
  // Maps `layout.total_bytes()` of zeroed anonymous shared memory and writes the header.
  // Throws procflow::system_error naming the size on failure.
  explicit Segment(const SegmentLayout& layout);
  ~Segment();
  Segment(Segment&&) noexcept;
  Segment& operator=(Segment&&) noexcept;
  Segment(const Segment&) = delete;
  Segment& operator=(const Segment&) = delete;

  std::byte* base() const noexcept { return base_; }
  std::size_t size() const noexcept { return size_; }

  // Checks the header (magic, version, sizes). Throws shm_error describing the mismatch.
  void validate() const;

  // Pointer to `count` objects of type T at `offset`, after checking that they lie inside the
  // segment and are suitably aligned. Throws shm_error otherwise.
  template <class T>
  [[gnu::returns_nonnull]] T* at(std::uint64_t offset, std::size_t count = 1) const {
    // A count whose byte size would overflow size_t saturates (and so fails the range check).
    constexpr std::size_t saturated = std::numeric_limits<std::size_t>::max();
    const std::size_t bytes = count > saturated / sizeof(T) ? saturated : sizeof(T) * count;
    check_range(offset, bytes, alignof(T));
    return reinterpret_cast<T*>(base_ + offset);
  }

 private:
  void check_range(std::uint64_t offset, std::size_t bytes, std::size_t alignment) const;

  struct Mapping;  // holds the Boost.Interprocess region; defined in segment.cpp
  std::unique_ptr<Mapping> mapping_;
  std::byte* base_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace procflow::shm

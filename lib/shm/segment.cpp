#include "shm/segment.hpp"

#include <boost/interprocess/anonymous_shared_memory.hpp>
#include <boost/interprocess/mapped_region.hpp>

#include <fmt/format.h>

#include <cerrno>
#include <new>

namespace procflow::shm {

namespace bip = boost::interprocess;

struct Segment::Mapping {
  bip::mapped_region region;
};

Segment::Segment(const SegmentLayout& layout) : size_(layout.total_bytes()) {
  try {
    mapping_ = std::make_unique<Mapping>(Mapping{bip::anonymous_shared_memory(size_)});
  } catch (const bip::interprocess_exception& e) {
    const int err = e.get_native_error() ? e.get_native_error() : ENOMEM;
    throw procflow::system_error(err, fmt::format("cannot map {} bytes of anonymous shared memory: {}", size_, e.what()));
  }
  base_ = static_cast<std::byte*>(mapping_->region.get_address());
  // Anonymous mappings start zeroed; only the header needs writing.
  auto* header = new (base_) SegmentHeader{};
  header->magic = segment_magic;
  header->layout_version = layout_version;
  header->header_bytes = sizeof(SegmentHeader);
  header->total_bytes = size_;
}

Segment::Segment() = default;
Segment::~Segment() = default;
Segment::Segment(Segment&&) noexcept = default;
Segment& Segment::operator=(Segment&&) noexcept = default;

void Segment::validate() const {
  if (size_ < sizeof(SegmentHeader)) throw shm_error(fmt::format("shm segment of {} bytes is too small for its header", size_));
  const auto* header = reinterpret_cast<const SegmentHeader*>(base_);
  if (header->magic != segment_magic)
    throw shm_error(fmt::format("shm segment has bad magic {:#x} (expected {:#x})", header->magic, segment_magic));
  if (header->layout_version != layout_version)
    throw shm_error(fmt::format("shm segment has layout version {} (this build reads {})", header->layout_version, layout_version));
  if (header->header_bytes != sizeof(SegmentHeader))
    throw shm_error(fmt::format("shm segment header is {} bytes (expected {})", header->header_bytes, sizeof(SegmentHeader)));
  if (header->total_bytes != size_)
    throw shm_error(fmt::format("shm segment header says {} bytes but {} are mapped", header->total_bytes, size_));
}

void Segment::check_range(std::uint64_t offset, std::size_t bytes, std::size_t alignment) const {
  if (offset > size_ || bytes > size_ - offset)
    throw shm_error(fmt::format("shm offset {} + {} bytes is outside the {}-byte segment", offset, bytes, size_));
  if (offset % alignment != 0) throw shm_error(fmt::format("shm offset {} is not aligned to {}", offset, alignment));
}

}  // namespace procflow::shm

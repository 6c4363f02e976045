#include "channel/channel.hpp"

#include <fmt/format.h>

#include <new>
#include <stdexcept>

namespace procflow::channel {

Channel::Channel(shm::SegmentLayout& layout, std::uint32_t producers, std::uint32_t consumers, const RingGeometry& geometry)
    : producers_(producers), consumers_(consumers), geometry_(geometry) {
  if (producers == 0 || consumers == 0)
    throw std::invalid_argument(fmt::format("a channel needs at least one producer and one consumer (got {} x {})", producers, consumers));
  for (std::uint32_t i = 0; i < producers * consumers; ++i) ring_offsets_.push_back(reserve_ring(layout, geometry));
  for (std::uint32_t q = 0; q < consumers; ++q) data_event_offsets_.push_back(layout.add(sizeof(EventShared), shm::cache_line));
  for (std::uint32_t p = 0; p < producers; ++p) space_event_offsets_.push_back(layout.add(sizeof(EventShared), shm::cache_line));
}

void Channel::create(const shm::Segment& segment, std::uint64_t initial_index) {
  segment_ = &segment;
  for (auto offset : ring_offsets_) create_ring(segment, offset, geometry_, initial_index);
  for (auto offset : data_event_offsets_) new (segment.at<EventShared>(offset)) EventShared{};
  for (auto offset : space_event_offsets_) new (segment.at<EventShared>(offset)) EventShared{};
}

RingView Channel::ring(std::uint32_t producer, std::uint32_t consumer) const {
  if (producer >= producers_ || consumer >= consumers_)
    throw std::out_of_range(fmt::format("channel has no ring {} -> {} ({} x {})", producer, consumer, producers_, consumers_));
  return attach_ring(*segment_, ring_offsets_[std::size_t{producer} * consumers_ + consumer], geometry_);
}

EventShared& Channel::data_event(std::uint32_t consumer) const {
  return *segment_->at<EventShared>(data_event_offsets_.at(consumer));
}

EventShared& Channel::space_event(std::uint32_t producer) const {
  return *segment_->at<EventShared>(space_event_offsets_.at(producer));
}

}  // namespace procflow::channel

#include "mpi/rank_source.hpp"

#include <algorithm>
#include <stdexcept>

namespace procflow::mpi_detail {

RankSource::RankSource(std::shared_ptr<const detail::stage_base> inner, std::uint64_t chunk_units, const ChunkTable& table, bool ordered)
    : detail::stage_base(inner->name(), inner->kind(), inner->options()),
      inner_(std::move(inner)),
      source_(inner_->source()),
      size_(source_->size()),
      chunk_units_(chunk_units),
      table_(&table),
      ordered_(ordered) {}

std::uint64_t RankSource::chunk_units_for(const detail::source_base& source, int ranks) noexcept {
  if (const std::uint64_t preferred = source.preferred_chunk_units()) return preferred;  // e.g. file blocks
  // As the single-machine plan sizes them (at most 8192 items, many per replica for balance),
  // counting the replicas of every rank (assumed a few per rank).
  const std::uint64_t for_balance = source.size() / (static_cast<std::uint64_t>(std::max(ranks, 1)) * 4 * 256);
  return std::clamp<std::uint64_t>(for_balance, 1, 8192);
}

void RankSource::produce(detail::output_port& out) const {
  if (ordered_)
    throw std::logic_error(
        "procflow::mpi: under pf::ordered a splittable source must run fused into the first stage's replicas across ranks "
        "(remove fusion(false) from the pipeline and the source, and own_process from the first stage)");
  for (std::uint64_t local = 0;; ++local) {
    const std::uint64_t global = table_->wait_for(local);
    if (global == ChunkTable::exhausted) return;
    const std::uint64_t begin = global * chunk_units_;
    if (begin >= size_) return;
    source_->produce_units(out, begin, begin + std::min(chunk_units_, size_ - begin));
  }
}

std::size_t RankSource::fill_items(std::uint64_t first, std::uint64_t /*last*/, void* vector) const {
  const std::uint64_t global = table_->wait_for(first / chunk_units_);
  if (global == ChunkTable::exhausted || global >= size_ / chunk_units_ + 1) return source_->fill_items(size_, size_, vector);
  const std::uint64_t begin = global * chunk_units_;
  if (begin >= size_) return source_->fill_items(size_, size_, vector);
  return source_->fill_items(begin, begin + std::min(chunk_units_, size_ - begin), vector);
}

void RankSource::fill(std::uint64_t first, std::uint64_t last, void* vector) const { fill_items(first, last, vector); }

}  // namespace procflow::mpi_detail

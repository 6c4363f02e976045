// RankSource: the declared splittable source as one MPI rank sees it.
//
// It stands in for stage 0 of the rank's copy of the declaration. Its size and chunk length are
// the source's own, so the rank's replicas claim local chunks 0, 1, 2, ... as in a single-machine
// run; filling local chunk i fills the global chunk the ChunkTable maps it to (a chunk granted to
// this rank), or nothing once the global chunks are all taken. Everything else is the source's.
#pragma once

#include "mpi/chunk_table.hpp"

#include <procflow/detail/stage.hpp>

#include <cstdint>
#include <memory>

namespace procflow::mpi_detail {

class RankSource final : public detail::stage_base, public detail::source_base {
 public:
  // `inner` is the declared source stage (splittable); `chunk_units` the length of a chunk;
  // `ordered`: the pipeline is (see produce()).
  RankSource(std::shared_ptr<const detail::stage_base> inner, std::uint64_t chunk_units, const ChunkTable& table, bool ordered);

  const detail::source_base* source() const noexcept override { return this; }

  // In a process of its own (fusion(false), or own_process on the first stage): the rank's chunks
  // in the order granted, each encoded into `out`. Refused under pf::ordered, whose results are
  // put in order across ranks by chunk (a batch of such a process may span two chunks).
  void produce(detail::output_port& out) const override;
  bool splittable() const noexcept override { return true; }
  std::uint64_t size() const noexcept override { return size_; }
  std::uint64_t preferred_chunk_units() const noexcept override { return chunk_units_; }
  bool units_are_items() const noexcept override { return source_->units_are_items(); }
  void begin_run() const override { source_->begin_run(); }
  void fill(std::uint64_t first, std::uint64_t last, void* vector) const override;
  std::size_t fill_items(std::uint64_t first, std::uint64_t last, void* vector) const override;

  // The chunk length every rank uses for a source of `size` units on `ranks` ranks.
  static std::uint64_t chunk_units_for(const detail::source_base& source, int ranks) noexcept;

 private:
  std::shared_ptr<const detail::stage_base> inner_;  // keeps source_ alive
  const detail::source_base* source_;
  std::uint64_t size_;
  std::uint64_t chunk_units_;
  const ChunkTable* table_;
  bool ordered_;
};

}  // namespace procflow::mpi_detail

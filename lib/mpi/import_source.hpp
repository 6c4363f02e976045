// ImportSource: stage 0 of the declaration on ranks 1..N-1 when the declared source is a generator
// running on rank 0. A "splittable" source of unknown length: local chunk b is the b-th batch
// this rank received (ImportInbox), decoded by the declared source's own codec; once the stream
// has ended, ended() tells the claimers to stop (detail::source_base).
#pragma once

#include "mpi/import_inbox.hpp"

#include <procflow/detail/stage.hpp>

#include <memory>

namespace procflow::mpi_detail {

class ImportSource final : public detail::stage_base, public detail::source_base {
 public:
  // `ordered`: the pipeline is (see produce()).
  ImportSource(std::shared_ptr<const detail::stage_base> inner, const ImportInbox& inbox, bool ordered);

  const detail::source_base* source() const noexcept override { return this; }
  // When the next stage runs in a process of its own (fusion(false), own_process): every batch
  // this rank receives, decoded and encoded into `out`. Refused under pf::ordered, whose results
  // are put in order across ranks by received batch.
  void produce(detail::output_port& out) const override;
  bool splittable() const noexcept override { return true; }
  std::uint64_t size() const noexcept override { return std::uint64_t{1} << 62; }  // a bound: ended() says when
  std::uint64_t preferred_chunk_units() const noexcept override { return 1; }      // one batch per claim
  bool units_are_items() const noexcept override { return false; }
  bool ended() const noexcept override { return ended_; }
  void fill(std::uint64_t first, std::uint64_t last, void* vector) const override;
  std::size_t fill_items(std::uint64_t first, std::uint64_t last, void* vector) const override;

 private:
  std::shared_ptr<const detail::stage_base> inner_;
  const detail::source_base* source_;
  const ImportInbox* inbox_;
  bool ordered_;
  mutable bool ended_ = false;  // per replica process (each has its own copy after the fork)
};

}  // namespace procflow::mpi_detail

// RankCollector: the terminal's supervisor side on one MPI rank. It keeps the encoded result
// batches the rank's replicas send (collected items, reduce partials, keyed partials) instead of
// decoding them, so that rank 0 can feed every rank's batches to the declared terminal's own
// collector once all ranks are done (gather_to_root). A sink running in the caller's process has
// nothing to gather: its batches go straight to its collector on each rank.
#pragma once

#include "mpi/chunk_table.hpp"
#include "mpi/import_inbox.hpp"

#include <procflow/detail/stage.hpp>

#include <mpi.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace procflow::mpi_detail {

class RankCollector final : public detail::result_collector {
 public:
  // `table`: maps local chunk numbers (the batches' seq when ordered) to global ones; null when
  // the source is not split. `imports`: the same for a stage boundary between ranks (a local
  // batch's place in rank 0's export order); null without one. `forward`: a sink in the caller.
  RankCollector(detail::result_collector* target, const ChunkTable* table, const ImportInbox* imports, bool ordered, bool forward)
      : target_(target), table_(table), imports_(imports), ordered_(ordered), forward_(forward) {}

  void consume(const detail::batch_view& batch) override;
  void finish() override;

  // Collective over `comm`: sends this rank's batches to rank 0, which feeds them to the target
  // (in global source order when ordered) and finishes it. Returns the bytes this rank sent.
  std::uint64_t gather_to_root(MPI_Comm comm, const std::string& terminal_name);

 private:
  struct Kept {
    std::uint64_t order = 0;  // global chunk (ordered) or arrival number
    std::uint64_t seq = 0;
    std::uint64_t first_item = 0;
    bool dense = false;
    std::uint32_t items = 0;
    std::vector<std::byte> bytes;
  };
  detail::result_collector* target_;
  const ChunkTable* table_;
  const ImportInbox* imports_;
  bool ordered_;
  bool forward_;
  std::vector<Kept> kept_;
};

// Collective: every rank's `mine` on rank 0 (index = rank); empty elsewhere. Throws
// procflow::error when the total passes what MPI_Gatherv can count.
std::vector<std::vector<std::byte>> gather_bytes(MPI_Comm comm, const std::vector<std::byte>& mine);
// Collective: rank 0's `bytes` on every rank.
void broadcast_bytes(MPI_Comm comm, std::vector<std::byte>& bytes);

}  // namespace procflow::mpi_detail

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
#include <exception>
#include <functional>
#include <span>
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

  // A collective that throws on every rank when any rank passes a failure (null: none), so that
  // no rank goes on into the next collective without the others (lib/mpi/rank_run.cpp).
  using agreement = std::function<void(std::exception_ptr)>;

  // Collective over `comm`: sends this rank's batches to rank 0, which feeds them to the target
  // (in global source order when ordered) and finishes it. Returns the bytes this rank sent.
  std::uint64_t gather_to_root(MPI_Comm comm, const std::string& terminal_name, const agreement& agree);

  // Collective over `comm`, for a keyed terminal (reduce_by_key: target->keyed()) without
  // pf::ordered: each group goes to the rank that owns its partition (partition p of
  // keyed_partition_count: rank p % N) instead of every group to rank 0. Each rank merges its own
  // replicas' partials, sends each merged partition to its owner (one MPI_Alltoallv), and each
  // owner merges the pieces of its partitions, in rank order. Then with `keep_owned` every rank's
  // target holds (finished) the partitions it owns, disjoint from the others'; else those are
  // gathered on rank 0, whose target holds them all. Returns the bytes this rank sent.
  std::uint64_t route_keys(MPI_Comm comm, const std::string& terminal_name, bool keep_owned, const agreement& agree);

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
  // Feeds `batch` (a rank's keyed pieces, framed by frame_items) to the target as coming from `rank`.
  void consume_framed(std::span<const std::byte> batch, int rank);

  std::vector<Kept> kept_;
};

// Collective: every rank's `mine` on rank 0 (index = rank); empty elsewhere. Throws
// procflow::error when the total passes what MPI_Gatherv can count.
std::vector<std::vector<std::byte>> gather_bytes(MPI_Comm comm, const std::vector<std::byte>& mine);
// Collective: rank `root`'s `bytes` on every rank.
void broadcast_bytes(MPI_Comm comm, std::vector<std::byte>& bytes, int root = 0);

}  // namespace procflow::mpi_detail

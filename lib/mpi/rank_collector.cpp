#include "mpi/rank_collector.hpp"

#include "runtime/exception_info.hpp"

#include <procflow/codec.hpp>
#include <procflow/error.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <climits>
#include <tuple>
#include <unistd.h>

namespace procflow::mpi_detail {

namespace {

void check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING] = {};
  int length = 0;
  MPI_Error_string(rc, text, &length);
  throw procflow::error(fmt::format("procflow::mpi: {} failed: {}", what, std::string(text, static_cast<std::size_t>(std::max(length, 0)))));
}

// One kept batch on the wire: order, seq, first_item, dense, items, the encoded items.
using wire_batch = std::tuple<std::uint64_t, std::uint64_t, std::uint64_t, bool, std::uint32_t, std::vector<std::uint8_t>>;

}  // namespace

void RankCollector::consume(const detail::batch_view& batch) {
  if (forward_) {
    target_->consume(batch);
    return;
  }
  Kept k;
  k.seq = batch.meta.seq;
  k.order = !ordered_ ? kept_.size()
            : table_  ? table_->entry(batch.meta.seq)
            : imports_ ? imports_->place_of(batch.meta.seq)
                       : batch.meta.seq;
  k.first_item = batch.meta.first_item;
  k.dense = batch.meta.dense;
  k.items = batch.items;
  k.bytes.assign(batch.bytes.begin(), batch.bytes.end());
  kept_.push_back(std::move(k));
}

void RankCollector::finish() {
  if (forward_) target_->finish();
}

std::vector<std::vector<std::byte>> gather_bytes(MPI_Comm comm, const std::vector<std::byte>& mine) {
  int rank = 0;
  int size = 1;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  int count = mine.size() > static_cast<std::size_t>(INT_MAX) ? -1 : static_cast<int>(mine.size());  // -1: too large
  // Every rank learns every count, so that all of them refuse an oversized total together (a
  // throw on rank 0 alone would leave the others waiting in MPI_Gatherv).
  std::vector<int> counts(static_cast<std::size_t>(size));
  check(MPI_Allgather(&count, 1, MPI_INT, counts.data(), 1, MPI_INT, comm), "MPI_Allgather");
  std::vector<int> displs(counts.size());
  long long total = 0;
  for (std::size_t r = 0; r < counts.size(); ++r) {
    displs[r] = static_cast<int>(std::min<long long>(total, INT_MAX));
    total += counts[r] < 0 ? static_cast<long long>(INT_MAX) + 1 : counts[r];
  }
  if (total > INT_MAX) throw procflow::error("procflow::mpi: the gathered results pass 2 GiB (MPI_Gatherv counts are int)");
  std::vector<std::byte> all(rank == 0 ? static_cast<std::size_t>(total) : 0);
  check(MPI_Gatherv(mine.data(), count, MPI_BYTE, all.data(), counts.data(), displs.data(), MPI_BYTE, 0, comm), "MPI_Gatherv");
  std::vector<std::vector<std::byte>> out;
  if (rank == 0)
    for (std::size_t r = 0; r < counts.size(); ++r)
      out.emplace_back(all.begin() + displs[r], all.begin() + displs[r] + counts[r]);
  return out;
}

void broadcast_bytes(MPI_Comm comm, std::vector<std::byte>& bytes) {
  unsigned long long n = bytes.size();
  check(MPI_Bcast(&n, 1, MPI_UNSIGNED_LONG_LONG, 0, comm), "MPI_Bcast");
  if (n > static_cast<unsigned long long>(INT_MAX)) throw procflow::error("procflow::mpi: a broadcast value passes 2 GiB");
  bytes.resize(static_cast<std::size_t>(n));
  check(MPI_Bcast(bytes.data(), static_cast<int>(n), MPI_BYTE, 0, comm), "MPI_Bcast");
}

std::uint64_t RankCollector::gather_to_root(MPI_Comm comm, const std::string& terminal_name) {
  if (forward_ || !target_) return 0;
  std::vector<wire_batch> wire;
  wire.reserve(kept_.size());
  for (Kept& k : kept_)
    wire.emplace_back(k.order, k.seq, k.first_item, k.dense, k.items,
                      std::vector<std::uint8_t>(reinterpret_cast<const std::uint8_t*>(k.bytes.data()),
                                                reinterpret_cast<const std::uint8_t*>(k.bytes.data()) + k.bytes.size()));
  kept_.clear();
  const std::vector<std::byte> mine = encode_to_bytes(wire);
  wire.clear();
  const auto all = gather_bytes(comm, mine);
  if (all.empty()) return mine.size();  // not rank 0

  struct Entry {
    std::uint64_t order;
    std::size_t rank;
    std::size_t index;
  };
  std::vector<std::vector<wire_batch>> per_rank;
  std::vector<Entry> entries;
  // Caller-side errors follow run()'s rule: a stage_error naming the terminal, in the supervisor.
  const auto fail = [&](const std::string& where) {
    stage_error::details d;
    d.stage = terminal_name;
    d.in_supervisor = true;
    d.replica = stage_error::no_replica;
    d.pid = static_cast<std::int32_t>(::getpid());
    d.kind = stage_error::cause::exception;
    d.exception_type = runtime::current_exception_type();
    d.message = "on MPI rank 0, " + where + ": " + runtime::current_exception_message();
    std::throw_with_nested(stage_error(std::move(d)));
  };
  try {
    for (std::size_t r = 0; r < all.size(); ++r) {
      per_rank.push_back(decode_from_bytes<std::vector<wire_batch>>(all[r]));
      for (std::size_t i = 0; i < per_rank.back().size(); ++i) entries.push_back({std::get<0>(per_rank.back()[i]), r, i});
    }
  } catch (...) {
    fail("decoding the ranks' result batches");
  }
  // Ordered: by global chunk (a rank's batches of one chunk keep their arrival order; batches of
  // chunks granted to nobody, empty partials, go last). Unordered: rank by rank, as they arrived.
  if (ordered_) std::stable_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) { return a.order < b.order; });
  try {
    for (const Entry& e : entries) {
      const wire_batch& w = per_rank[e.rank][e.index];
      const auto& payload = std::get<5>(w);
      detail::batch_view view;
      view.bytes = {reinterpret_cast<const std::byte*>(payload.data()), payload.size()};
      view.items = std::get<4>(w);
      // Unordered partials are merged in seq order (replica index): keep ranks apart.
      view.meta.seq = ordered_ ? std::get<1>(w) : (static_cast<std::uint64_t>(e.rank) << 32) + std::get<1>(w);
      view.meta.first_item = std::get<2>(w);
      view.meta.dense = std::get<3>(w);
      view.batch_end = true;
      target_->consume(view);
    }
  } catch (...) {
    fail("merging the ranks' result batches");
  }
  try {
    target_->finish();
  } catch (...) {
    fail("at the end of the stream (merging partial results)");
  }
  return mine.size();
}

}  // namespace procflow::mpi_detail

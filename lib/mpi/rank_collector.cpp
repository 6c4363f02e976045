#include "mpi/rank_collector.hpp"

#include "runtime/exception_info.hpp"

#include <procflow/codec.hpp>
#include <procflow/error.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <climits>
#include <cstring>
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

// A whole result batch as the target consumes it (a kept batch, one off the wire, a rank's
// keyed groups).
detail::batch_view result_view(std::span<const std::byte> bytes, std::uint32_t items, std::uint64_t seq,
                               std::uint64_t first_item = 0, bool dense = false) {
  detail::batch_view view;
  view.bytes = bytes;
  view.items = items;
  view.meta.seq = seq;
  view.meta.first_item = first_item;
  view.meta.dense = dense;
  view.batch_end = true;
  return view;
}

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

void broadcast_bytes(MPI_Comm comm, std::vector<std::byte>& bytes, int root) {
  unsigned long long n = bytes.size();
  check(MPI_Bcast(&n, 1, MPI_UNSIGNED_LONG_LONG, root, comm), "MPI_Bcast");
  if (n > static_cast<unsigned long long>(INT_MAX)) throw procflow::error("procflow::mpi: a broadcast value passes 2 GiB");
  bytes.resize(static_cast<std::size_t>(n));
  check(MPI_Bcast(bytes.data(), static_cast<int>(n), MPI_BYTE, root, comm), "MPI_Bcast");
}

namespace {

// Collective: out[r] to rank r; returns what every rank sent this one (index = rank). Throws
// procflow::error on every rank together when any rank's sends or receives pass what
// MPI_Alltoallv can count.
std::vector<std::vector<std::byte>> exchange_bytes(MPI_Comm comm, const std::vector<std::vector<std::byte>>& out) {
  const std::size_t size = out.size();
  std::vector<int> send_counts(size);
  std::vector<int> send_displs(size);
  std::vector<std::byte> sending;
  long long total = 0;
  for (std::size_t r = 0; r < size; ++r) total += static_cast<long long>(out[r].size());
  int too_large = total > INT_MAX ? 1 : 0;
  if (!too_large) {
    sending.reserve(static_cast<std::size_t>(total));
    for (std::size_t r = 0; r < size; ++r) {
      send_displs[r] = static_cast<int>(sending.size());
      send_counts[r] = static_cast<int>(out[r].size());
      sending.insert(sending.end(), out[r].begin(), out[r].end());
    }
  }
  std::vector<int> recv_counts(size);
  check(MPI_Alltoall(send_counts.data(), 1, MPI_INT, recv_counts.data(), 1, MPI_INT, comm), "MPI_Alltoall");
  std::vector<int> recv_displs(size);
  long long received = 0;
  for (std::size_t r = 0; r < size; ++r) {
    recv_displs[r] = static_cast<int>(std::min<long long>(received, INT_MAX));
    received += recv_counts[r];
  }
  if (received > INT_MAX) too_large = 1;
  int any_too_large = 0;
  check(MPI_Allreduce(&too_large, &any_too_large, 1, MPI_INT, MPI_MAX, comm), "MPI_Allreduce");
  if (any_too_large) throw procflow::error("procflow::mpi: the keyed groups one rank sends or receives pass 2 GiB (MPI_Alltoallv counts are int)");
  std::vector<std::byte> all(static_cast<std::size_t>(received));
  check(MPI_Alltoallv(sending.data(), send_counts.data(), send_displs.data(), MPI_BYTE, all.data(), recv_counts.data(),
                      recv_displs.data(), MPI_BYTE, comm),
        "MPI_Alltoallv");
  std::vector<std::vector<std::byte>> in;
  for (std::size_t r = 0; r < size; ++r) in.emplace_back(all.begin() + recv_displs[r], all.begin() + recv_displs[r] + recv_counts[r]);
  return in;
}

// Encoded items back to back (each is self-delimiting), after their count: one batch on arrival.
void append_framed_item(std::vector<std::byte>& frame, const std::vector<std::byte>& item) {
  if (frame.empty()) frame.resize(sizeof(std::uint64_t));
  std::uint64_t count = 0;
  std::memcpy(&count, frame.data(), sizeof count);
  ++count;
  std::memcpy(frame.data(), &count, sizeof count);
  frame.insert(frame.end(), item.begin(), item.end());
}

// Caller-side errors follow run()'s rule: a stage_error naming the terminal, in the supervisor;
// `where` says what this rank was doing (the agreement adds which rank). Called in a catch block.
[[noreturn]] void throw_merge_error(const std::string& terminal_name, const std::string& where) {
  stage_error::details d;
  d.stage = terminal_name;
  d.in_supervisor = true;
  d.replica = stage_error::no_replica;
  d.pid = static_cast<std::int32_t>(::getpid());
  d.kind = stage_error::cause::exception;
  d.exception_type = runtime::current_exception_type();
  d.message = where + ": " + runtime::current_exception_message();
  std::throw_with_nested(stage_error(std::move(d)));
}

// Runs `step`; what it throws becomes the stage_error above, returned rather than thrown.
template <class Step>
std::exception_ptr merge_step(const std::string& terminal_name, const char* where, Step&& step) {
  try {
    try {
      step();
    } catch (...) {
      throw_merge_error(terminal_name, where);
    }
  } catch (...) {
    return std::current_exception();
  }
  return nullptr;
}

int rank_of(MPI_Comm comm) {
  int rank = 0;
  MPI_Comm_rank(comm, &rank);
  return rank;
}

}  // namespace

std::uint64_t RankCollector::gather_to_root(MPI_Comm comm, const std::string& terminal_name, const agreement& agree) {
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
  if (all.empty()) {  // not rank 0
    agree(nullptr);
    return mine.size();
  }

  struct Entry {
    std::uint64_t order;
    std::size_t rank;
    std::size_t index;
  };
  std::vector<std::vector<wire_batch>> per_rank;
  std::vector<Entry> entries;
  std::exception_ptr failure = merge_step(terminal_name, "decoding the ranks' result batches", [&] {
    for (std::size_t r = 0; r < all.size(); ++r) {
      per_rank.push_back(decode_from_bytes<std::vector<wire_batch>>(all[r]));
      for (std::size_t i = 0; i < per_rank.back().size(); ++i) entries.push_back({std::get<0>(per_rank.back()[i]), r, i});
    }
  });
  // Ordered: by global chunk (a rank's batches of one chunk keep their arrival order; batches of
  // chunks granted to nobody, empty partials, go last). Unordered: rank by rank, as they arrived.
  if (ordered_) std::stable_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) { return a.order < b.order; });
  if (!failure)
    failure = merge_step(terminal_name, "merging the ranks' result batches", [&] {
      for (const Entry& e : entries) {
        const wire_batch& w = per_rank[e.rank][e.index];
        const auto& payload = std::get<5>(w);
        // Unordered partials are merged in seq order (replica index): keep ranks apart.
        const std::uint64_t seq = ordered_ ? std::get<1>(w) : (static_cast<std::uint64_t>(e.rank) << 32) + std::get<1>(w);
        target_->consume(result_view({reinterpret_cast<const std::byte*>(payload.data()), payload.size()}, std::get<4>(w), seq,
                                     std::get<2>(w), std::get<3>(w)));
      }
    });
  if (!failure) failure = merge_step(terminal_name, "at the end of the stream (merging partial results)", [&] { target_->finish(); });
  agree(failure);
  return mine.size();
}

void RankCollector::consume_framed(std::span<const std::byte> batch, int rank) {
  if (batch.empty()) return;
  if (batch.size() < sizeof(std::uint64_t)) throw codec_error("codec: a rank's keyed groups are shorter than their count");
  std::uint64_t count = 0;
  std::memcpy(&count, batch.data(), sizeof count);
  // Merged in rank order.
  target_->consume(result_view(batch.subspan(sizeof count), static_cast<std::uint32_t>(count), static_cast<std::uint64_t>(rank)));
}

std::uint64_t RankCollector::route_keys(MPI_Comm comm, const std::string& terminal_name, bool keep_owned, const agreement& agree) {
  const int rank = rank_of(comm);
  int size = 1;
  MPI_Comm_size(comm, &size);
  std::uint64_t sent = 0;

  // 1. This rank's partials merged (in replica order, as run() merges them), then split by owner.
  std::vector<std::vector<std::byte>> to_owner(static_cast<std::size_t>(size));
  agree(merge_step(terminal_name, "merging this rank's partial results", [&] {
    for (const Kept& k : kept_) target_->consume(result_view(k.bytes, k.items, k.seq, k.first_item, k.dense));
    kept_.clear();
    target_->finish();
    for (const auto& part : target_->take_partitions())
      append_framed_item(to_owner[part.partition % static_cast<std::size_t>(size)], part.item);
  }));

  // 2. Each partition to its owner, which merges the ranks' pieces in rank order.
  for (int r = 0; r < size; ++r)
    if (r != rank) sent += to_owner[static_cast<std::size_t>(r)].size();
  const auto owned = exchange_bytes(comm, to_owner);
  to_owner.clear();
  agree(merge_step(terminal_name, "merging the ranks' groups of the keys this rank owns", [&] {
    for (std::size_t r = 0; r < owned.size(); ++r) consume_framed(owned[r], static_cast<int>(r));
    target_->finish();
  }));
  if (keep_owned) return sent;

  // 3. The owners' partitions to rank 0 (disjoint: nothing left to combine). Rank 0 files its own
  // back in first, as the target's next finish() builds its value from what it consumed.
  std::vector<std::byte> mine;
  for (const auto& part : target_->take_partitions()) append_framed_item(mine, part.item);
  const auto all = gather_bytes(comm, rank == 0 ? std::vector<std::byte>{} : mine);
  agree(merge_step(terminal_name, "gathering the merged groups on rank 0", [&] {
    if (all.empty()) return;  // not rank 0
    consume_framed(mine, 0);
    for (std::size_t r = 1; r < all.size(); ++r) consume_framed(all[r], static_cast<int>(r));
    target_->finish();
  }));
  return sent + (rank != 0 ? mine.size() : 0);
}

}  // namespace procflow::mpi_detail

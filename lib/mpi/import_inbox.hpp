// ImportInbox: the receiving end of a stage boundary between ranks, on ranks 1..N-1.
//
// K slots in anonymous shared memory (mapped before the replicas fork). The rank's broker thread
// posts one MPI receive per free slot straight into the slot's bytes, in batch order (batch b goes
// to slot b % K), and grants rank 0 one credit per slot it re-posts: rank 0 never sends a batch
// without a credit, so every batch lands in a posted receive and at most K batches per rank are
// ever in flight or waiting (Flink's credit-based flow control). The rank's replicas claim batch
// numbers 0, 1, 2, ... as chunks of an ImportSource, decode the batch in the slot and free it.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <span>
#include <type_traits>
#include <vector>

namespace procflow::mpi_detail {

// Bytes at the start of every data message: the item count, then the batch's place in rank 0's
// export order (what orders the results across ranks under pf::ordered); the encoded items follow.
inline constexpr std::size_t batch_header_bytes = 16;

struct ImportSlotShared {
  // Batch number + 1 of the batch the slot holds; 0: free. Stored by the broker with release
  // after the receive completed (SYNC POINT: the replica's acquire load sees the bytes), and back
  // to 0 by the replica with release once it has decoded them (SYNC POINT: the broker's acquire
  // load before it posts the next receive into these bytes).
  alignas(128) std::atomic<std::uint64_t> filled{0};
  std::uint64_t message_bytes = 0;  // header + items, written by the broker before `filled`
};
static_assert(std::is_standard_layout_v<ImportSlotShared>);

struct ImportInboxShared {
  static constexpr std::uint64_t magic_value = 0x70666d7069696e31ULL;  // "pfmpiin1"
  std::uint64_t magic = magic_value;
  std::uint32_t slots = 0;
  std::uint64_t slot_bytes = 0;
  // Batches this rank will receive in all, once known (rank 0's END); ~0 before. Release by the
  // broker, acquire by replicas (SYNC POINT): a replica that sees it knows no batch >= it comes.
  alignas(128) std::atomic<std::uint64_t> total{~std::uint64_t{0}};
};
static_assert(std::is_standard_layout_v<ImportInboxShared>);
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);

class ImportInbox {
 public:
  ImportInbox(std::uint32_t slots, std::size_t slot_bytes);
  ~ImportInbox();
  ImportInbox(const ImportInbox&) = delete;
  ImportInbox& operator=(const ImportInbox&) = delete;

  std::uint32_t slots() const noexcept { return shared_->slots; }
  std::size_t slot_bytes() const noexcept { return static_cast<std::size_t>(shared_->slot_bytes); }

  // Replica side. Waits for batch `b`; returns its encoded items and count, or an empty span and
  // `ended` true when the stream has fewer batches. Then release(b) once decoded.
  struct Batch {
    std::span<const std::byte> bytes;
    std::uint32_t items = 0;
    bool ended = false;
  };
  Batch wait_for(std::uint64_t b) const noexcept;
  void release(std::uint64_t b) const noexcept;
  bool ended_before(std::uint64_t b) const noexcept { return shared_->total.load(std::memory_order_acquire) <= b; }

  // Broker side.
  std::byte* slot_data(std::uint32_t slot) const noexcept { return data_ + std::size_t{slot} * slot_bytes(); }
  bool slot_free(std::uint32_t slot) const noexcept { return slot_shared(slot).filled.load(std::memory_order_acquire) == 0; }
  void publish(std::uint32_t slot, std::uint64_t batch, std::size_t message_bytes) const noexcept;
  void set_total(std::uint64_t total) const noexcept { shared_->total.store(total, std::memory_order_release); }

  // This rank's process only (not shared with the replicas): the export place of local batch b,
  // noted by the broker before it publishes b, read by the terminal's collector for a result of
  // batch b (so always after).
  void note_place(std::uint64_t batch, std::uint64_t place);
  std::uint64_t place_of(std::uint64_t batch) const;

 private:
  ImportSlotShared& slot_shared(std::uint32_t slot) const noexcept { return slots_[slot]; }
  ImportInboxShared* shared_ = nullptr;
  ImportSlotShared* slots_ = nullptr;
  std::byte* data_ = nullptr;
  std::size_t bytes_ = 0;
  mutable std::mutex places_mutex_;
  std::vector<std::uint64_t> places_;  // by local batch number
};

}  // namespace procflow::mpi_detail

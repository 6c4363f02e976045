// ChunkTable: which chunks of a splittable source this MPI rank was granted, in the order its
// local replicas claim them.
//
// Every rank runs the whole declaration; its local replicas claim *local* chunk numbers 0, 1, 2,
// ... from the supervisor's shared counter as usual (lib/runtime). Local chunk i stands for the
// i-th *global* chunk this rank was granted; the rank's ClaimBroker thread (which alone talks
// MPI: a forked replica never may) fetches grants ahead of the replicas and appends them here.
// A replica asks for entry i with wait_for(i) and gets a global chunk number, or `exhausted`
// once every global chunk went to some rank.
//
// The table lives in anonymous shared memory mapped before the replicas fork, so the broker (in
// the rank's process) and the replicas (its children) see the same words.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace procflow::mpi_detail {

inline constexpr std::size_t cache_line = 128;

// The shared layout (standard-layout, pointer-free), followed by `capacity` std::uint64_t entries.
struct ChunkTableShared {
  static constexpr std::uint64_t magic_value = 0x70666d7069746231ULL;  // "pfmpitb1"
  std::uint64_t magic = magic_value;
  std::uint64_t capacity = 0;  // entries after the header (= the global chunk count)
  // Highest local chunk + 1 a replica has asked for. Written by replicas (fetch_max by CAS),
  // read by the broker to decide how far to fetch ahead. Relaxed: a hint, it publishes nothing.
  alignas(cache_line) std::atomic<std::uint64_t> wanted{0};
  // Entries [0, granted) are final. Stored by the broker with release after writing them
  // (SYNC POINT), loaded by replicas with acquire before reading an entry.
  alignas(cache_line) std::atomic<std::uint64_t> granted{0};
};
static_assert(std::is_standard_layout_v<ChunkTableShared>);
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);
static_assert(sizeof(ChunkTableShared) % alignof(std::uint64_t) == 0);

// The process-local handle. Created before the fork; children use the inherited mapping.
class ChunkTable {
 public:
  static constexpr std::uint64_t exhausted = ~std::uint64_t{0};

  // Maps room for `capacity` entries. Throws procflow::system_error if mmap fails.
  explicit ChunkTable(std::uint64_t capacity);
  ~ChunkTable();
  ChunkTable(const ChunkTable&) = delete;
  ChunkTable& operator=(const ChunkTable&) = delete;

  std::uint64_t capacity() const noexcept { return shared_->capacity; }

  // Replica side: the global chunk behind local chunk `local` (or `exhausted`), waiting (briefly
  // spinning, then sleeping in short steps) until the broker has granted it.
  std::uint64_t wait_for(std::uint64_t local) const noexcept;

  // Broker side (one thread). How many entries replicas want, and how many are granted.
  std::uint64_t wanted() const noexcept { return shared_->wanted.load(std::memory_order_relaxed); }
  std::uint64_t granted() const noexcept { return shared_->granted.load(std::memory_order_relaxed); }
  // Appends global chunks [first, first + count) as the next entries.
  void append(std::uint64_t first, std::uint64_t count) noexcept;
  // Marks every remaining entry `exhausted` (no chunk is left anywhere).
  void close() noexcept;

  // After the run (the replicas are gone): entry `local`, or `exhausted` past what was granted.
  std::uint64_t entry(std::uint64_t local) const noexcept;

 private:
  std::uint64_t* entries() const noexcept { return reinterpret_cast<std::uint64_t*>(shared_ + 1); }
  ChunkTableShared* shared_ = nullptr;
  std::size_t bytes_ = 0;
};

}  // namespace procflow::mpi_detail

#include "mpi/chunk_table.hpp"

#include <procflow/error.hpp>

#include <sys/mman.h>

#include <cerrno>
#include <ctime>
#include <new>
#include <string>

namespace procflow::mpi_detail {

ChunkTable::ChunkTable(std::uint64_t capacity) {
  bytes_ = sizeof(ChunkTableShared) + static_cast<std::size_t>(capacity) * sizeof(std::uint64_t);
  // Anonymous and shared: inherited by the replicas forked later, nothing to leak in /dev/shm.
  // NORESERVE: pages are touched only as far as chunks are granted.
  void* p = ::mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED)
    throw procflow::system_error(errno, "procflow::mpi: cannot map the chunk table (" + std::to_string(bytes_) + " bytes)");
  shared_ = ::new (p) ChunkTableShared;
  shared_->capacity = capacity;
}

ChunkTable::~ChunkTable() {
  if (shared_) ::munmap(shared_, bytes_);
}

std::uint64_t ChunkTable::wait_for(std::uint64_t local) const noexcept {
  if (local >= shared_->capacity) return exhausted;  // never trust an index
  // Relaxed: `wanted` is a hint for the broker (see ChunkTableShared).
  std::uint64_t seen = shared_->wanted.load(std::memory_order_relaxed);
  while (seen < local + 1 && !shared_->wanted.compare_exchange_weak(seen, local + 1, std::memory_order_relaxed)) {
  }
  long sleep_ns = 0;
  for (int spins = 0;; ++spins) {
    // SYNC POINT (acquire): pairs with the broker's release store of `granted` in append/close.
    if (shared_->granted.load(std::memory_order_acquire) > local) return entries()[local];
    if (spins < 256) continue;
    sleep_ns = sleep_ns == 0 ? 20'000 : std::min<long>(sleep_ns * 2, 500'000);
    timespec ts{0, sleep_ns};
    ::nanosleep(&ts, nullptr);
  }
}

void ChunkTable::append(std::uint64_t first, std::uint64_t count) noexcept {
  std::uint64_t at = shared_->granted.load(std::memory_order_relaxed);  // only this thread writes it
  for (std::uint64_t k = 0; k < count && at < shared_->capacity; ++k) entries()[at++] = first + k;
  // SYNC POINT (release): the entries above are visible to a replica that reads the new count.
  shared_->granted.store(at, std::memory_order_release);
}

void ChunkTable::close() noexcept {
  std::uint64_t at = shared_->granted.load(std::memory_order_relaxed);
  for (; at < shared_->capacity; ++at) entries()[at] = exhausted;
  // SYNC POINT (release): as in append.
  shared_->granted.store(at, std::memory_order_release);
}

std::uint64_t ChunkTable::entry(std::uint64_t local) const noexcept {
  if (local >= shared_->granted.load(std::memory_order_acquire)) return exhausted;
  return entries()[local];
}

}  // namespace procflow::mpi_detail

// table_memory: where reduce_by_key's tables (flat_table's entry and index arrays, the pieces
// they travel in) get their memory.
//
// In the caller's process: operator new, as any vector. In a replica process (a child procflow
// forked, which exits when its run ends) arrays of 64 KiB and more come from an arena of
// 2 MiB-aligned regions advised for transparent huge pages (MADV_HUGEPAGE; this kernel's default
// policy is `madvise`). A replica's partial of a million keys is tens of MiB spread over 64
// partitions whose arrays double as they grow: in 4 KiB pages every first touch faults and every
// probe misses the TLB. The arena keeps what is freed for reuse (a free list per power-of-two
// size) and never gives it back: the replica's exit does. The caller's process, a library
// host, keeps malloc's behaviour.
//
// groupby_bench at 1e6 keys (pre-aggregating replicas) gained the most; see README's group-by
// section for the figures.
#pragma once

#include <cstddef>
#include <limits>
#include <new>

namespace procflow::detail {

namespace table_memory {

// Arrays below this many bytes always come from operator new.
inline constexpr std::size_t arena_min_bytes = std::size_t{1} << 16;

void* allocate(std::size_t bytes, std::size_t align);
void deallocate(void* p, std::size_t bytes, std::size_t align) noexcept;

// From now on this process draws arrays of arena_min_bytes and more from the arena. Called in
// every replica process procflow forks (not under AddressSanitizer, whose checks need malloc's
// memory); irreversible.
void use_arena_in_this_process() noexcept;
bool arena_in_use() noexcept;
// For tests: whether p lies in memory the arena handed out; how many bytes it has cut from its
// regions so far (what was freed and reused is not counted again).
bool from_arena(const void* p) noexcept;
std::size_t carved_bytes() noexcept;

}  // namespace table_memory

template <class T>
struct table_allocator {
  using value_type = T;
  table_allocator() noexcept = default;
  template <class U>
  table_allocator(const table_allocator<U>&) noexcept {}  // NOLINT(google-explicit-constructor)
  T* allocate(std::size_t n) {
    if (n > std::numeric_limits<std::size_t>::max() / sizeof(T)) throw std::bad_array_new_length();
    return static_cast<T*>(table_memory::allocate(n * sizeof(T), alignof(T)));
  }
  void deallocate(T* p, std::size_t n) noexcept { table_memory::deallocate(p, n * sizeof(T), alignof(T)); }
  template <class U>
  bool operator==(const table_allocator<U>&) const noexcept {
    return true;
  }
};

}  // namespace procflow::detail

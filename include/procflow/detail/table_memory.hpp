// table_memory: where reduce_by_key's tables (flat_table's entry and index arrays, the pieces
// they travel in) get their memory.
//
// Arrays of 64 KiB and more come from an arena of 2 MiB-aligned regions advised for transparent
// huge pages (MADV_HUGEPAGE; this kernel's default policy is `madvise`): every such array in a
// replica process (a child procflow forked, which exits when its run ends), and in the caller's
// process the index arrays (written whole when allocated) of the tables the merge threads build,
// and the entries of the pre-aggregated pieces it decodes (sized once and written whole; only when
// they fill their power-of-two block: fills_its_block) (arena_scope). Everything
// else: operator new, as any vector. A partial of millions of keys
// spreads over 64 partitions whose arrays double as they grow; in 4 KiB pages every first touch
// faults (costly under this machine's hypervisor) and nearly every probe misses the TLB. The
// entry arrays the caller's merges grow stay in 4 KiB pages: they fill as they go, and a huge page would make
// their unfilled half resident (tried: 2.3x the loop at 5 M keys, but 40 MB more, over the 1.5x
// memory budget). Inside each 2 MiB page the arena is a buddy system, so what a table outgrew is
// merged and reused by the next growth; whole free huge pages go back to the kernel. A replica's
// arena keeps the rest (its exit gives it back); the caller's gives every region back when its
// last block is freed (the result, once the user lets it go), so a host is not left holding memory.
//
// Figures: README's group-by section.
#pragma once

#include <bit>
#include <cstddef>
#include <limits>
#include <new>

namespace procflow::detail {

namespace table_memory {

// Arrays below this many bytes always come from operator new.
inline constexpr std::size_t arena_min_bytes = std::size_t{1} << 16;

// `filled`: the array is written whole as soon as it is allocated (a table's index), so a huge
// page costs no memory it would not have touched anyway; an array filled as it goes (a table's
// entries, capacity doubling) comes from the arena in replicas only, whose tables are short-lived.
void* allocate(std::size_t bytes, std::size_t align, bool filled);
void deallocate(void* p, std::size_t bytes, std::size_t align) noexcept;

// From now on this process draws arrays of arena_min_bytes and more from the arena. Called in
// every replica process procflow forks (not when built with AddressSanitizer, whose checks of the
// tables need malloc's memory; the caller's merge threads use the arena under it too, so its own
// code is checked); irreversible.
void use_arena_in_this_process() noexcept;
bool arena_in_use() noexcept;
// While one lives, the `filled` arrays this thread allocates come from the arena too (the index
// arrays of the tables the caller's merge threads build from reduce_by_key pieces), or with
// arrays::every all of them (the pieces the caller decodes: each sized once and written whole at
// once; what stays unwritten is the block's power-of-two rounding, which the caller bounds).
// Outside a replica the arena gives all its memory
// back when the last of its blocks is freed (the result the merges built, once the user lets it go).
// The arena's blocks are powers of two: whether an array of `bytes` wastes at most a quarter of
// the block it would get (1.25 MB in a 2 MiB block does not: pre_aggregate::always() at 5 M keys
// held 140 MB more with its pieces on the arena). arrays::every is for arrays that pass.
inline bool fills_its_block(std::size_t bytes) noexcept {
  const std::size_t block = std::bit_ceil(bytes);
  return block - bytes <= block / 4;
}

class arena_scope {
 public:
  enum class arrays : unsigned char { none, filled, every };
  explicit arena_scope(arrays which = arrays::filled) noexcept;
  ~arena_scope();
  arena_scope(const arena_scope&) = delete;
  arena_scope& operator=(const arena_scope&) = delete;

 private:
  arrays outer_;
};

// For tests: whether p lies in memory the arena handed out; how many bytes it has cut from its
// regions so far (what was freed and reused is not counted again); how many it has mapped now.
bool from_arena(const void* p) noexcept;
std::size_t carved_bytes() noexcept;
std::size_t mapped_bytes() noexcept;

}  // namespace table_memory

template <class T, bool Filled = false>
struct table_allocator {
  using value_type = T;
  template <class U>
  struct rebind {
    using other = table_allocator<U, Filled>;
  };
  table_allocator() noexcept = default;
  template <class U>
  table_allocator(const table_allocator<U, Filled>&) noexcept {}  // NOLINT(google-explicit-constructor)
  T* allocate(std::size_t n) {
    if (n > std::numeric_limits<std::size_t>::max() / sizeof(T)) throw std::bad_array_new_length();
    return static_cast<T*>(table_memory::allocate(n * sizeof(T), alignof(T), Filled));
  }
  void deallocate(T* p, std::size_t n) noexcept { table_memory::deallocate(p, n * sizeof(T), alignof(T)); }
  template <class U>
  bool operator==(const table_allocator<U, Filled>&) const noexcept {
    return true;
  }
};

}  // namespace procflow::detail

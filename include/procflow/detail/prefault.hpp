// prefault: map a block's pages in one system call instead of one page fault per page.
//
// A stage's batch buffer (and a grown one) is written end to end right after it is allocated.
// Touching fresh anonymous memory costs one page fault per 4 KiB page. On the virtual machines
// this project is measured on (paravirtualized, shadow page tables) a fault costs ~11 us; after
// MADV_POPULATE_WRITE (~0.6 us a page) the first write to each page still costs ~5 us (the
// hypervisor fills its own table), so a prefaulted page costs about half (`fault_bench`). On bare
// metal both are cheaper and the ratio smaller, not inverted. A hint: false when the kernel does
// not know the advice (Linux < 5.14) or the block holds no whole page, and nothing else changes.
#pragma once

#include <cstddef>

namespace procflow::detail {

// Blocks below this size are left to fault page by page (a system call costs more than a few faults).
inline constexpr std::size_t prefault_min_bytes = std::size_t{64} << 10;

// Maps the whole pages inside [p, p + bytes) writable, as a write to each would.
bool prefault(void* p, std::size_t bytes) noexcept;

// prefault() for a block of prefault_min_bytes or more (what a fresh block that is about to be
// written whole gets); a smaller one is left to fault.
inline void prefault_large(void* p, std::size_t bytes) noexcept {
  if (bytes >= prefault_min_bytes) prefault(p, bytes);
}

// The machine's physical memory in bytes (0 if unknown): a bound for what is worth reserving
// ahead.
std::size_t physical_memory_bytes() noexcept;

// Grows a std::string or std::vector to room for `n` elements, the new memory mapped in one call:
// a large item decoded into it (codec resize_body) is then written without a fault per page.
template <class Container>
void reserve_mapped(Container& c, std::size_t n) {
  if (n <= c.capacity()) return;
  c.reserve(n);
  prefault_large(c.data(), c.capacity() * sizeof(typename Container::value_type));
}

}  // namespace procflow::detail

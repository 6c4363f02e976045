// Checks that a forked replica gives back the free heap memory it inherited (lib/process/child.cpp):
// blocks the caller freed before run() are still mapped in the child after the fork, shared
// copy-on-write with the caller, so the first write to each of their pages (malloc handing the
// block out again in the replica) would copy it and flush the TLB of every CPU the replica ran on.
// The replica returns them (malloc_trim) before it runs anything: their pages are no longer
// resident in it, while a block the caller still holds is.
#include "support/cleanup_check.hpp"

#include <procflow/detail/sanitizers.hpp>
#include <procflow/procflow.hpp>

#include <doctest/doctest.h>

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace pf = procflow;

namespace {

const std::size_t page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));

// Resident pages among the whole pages inside [p, p + bytes) in this process.
std::uint64_t resident_pages(std::uintptr_t p, std::size_t bytes) {
  const std::uintptr_t begin = (p + page - 1) & ~(page - 1);
  const std::uintptr_t end = (p + bytes) & ~(page - 1);
  if (end <= begin) return 0;
  std::vector<unsigned char> in((end - begin) / page);
  if (::mincore(reinterpret_cast<void*>(begin), end - begin, in.data()) != 0) return UINT64_MAX;
  std::uint64_t n = 0;
  for (unsigned char c : in) n += c & 1;
  return n;
}

}  // namespace

TEST_CASE("a replica does not keep the pages of heap blocks its caller freed before the fork") {
#ifdef PROCFLOW_ASAN
  // AddressSanitizer's allocator keeps freed blocks in quarantine, and the replica leaves it alone.
  MESSAGE("skipped under AddressSanitizer: its allocator owns the heap");
  return;
#else
  pf::test::CleanupCheck cleanup;
  // 64 KiB blocks (below malloc's mmap threshold: they come from the heap), written whole, then
  // every other one freed: free chunks between blocks in use, which free() cannot give back.
  constexpr std::size_t block = std::size_t{64} << 10;
  constexpr int blocks = 160;
  std::vector<char*> heap;
  for (int i = 0; i < blocks; ++i) {
    heap.push_back(static_cast<char*>(std::malloc(block)));
    REQUIRE(heap.back() != nullptr);
    std::memset(heap.back(), 1, block);
  }
  std::vector<std::uintptr_t> freed, held;
  for (int i = 0; i < blocks; ++i) {
    (i % 2 == 0 ? freed : held).push_back(reinterpret_cast<std::uintptr_t>(heap[static_cast<std::size_t>(i)]));
    if (i % 2 == 0) std::free(heap[static_cast<std::size_t>(i)]);
  }
  std::uint64_t freed_here = 0, held_here = 0;
  for (const std::uintptr_t p : freed) freed_here += resident_pages(p, block);
  for (const std::uintptr_t p : held) held_here += resident_pages(p, block);
  REQUIRE(freed_here > freed.size() * (block / page) / 2);  // still mapped in the caller

  // One item, one replica process: it counts what is resident of both sets in itself.
  const auto counts = [freed, held](int) {
    std::uint64_t f = 0, h = 0;
    for (const std::uintptr_t p : freed) f += resident_pages(p, block);
    for (const std::uintptr_t p : held) h += resident_pages(p, block);
    return std::vector<std::uint64_t>{f, h};
  };
  const auto result = pf::pipeline("replica_heap").source("one", pf::from(std::vector<int>{0})).map("count", counts, pf::own_process).collect().run();
  REQUIRE(result.value.size() == 1);
  const std::uint64_t freed_there = result.value[0][0];
  const std::uint64_t held_there = result.value[0][1];
  INFO("freed blocks: " << freed_there << " of their " << freed_here << " pages resident in the replica; held: " << held_there
                         << " of " << held_here);
  // The blocks in use are the caller's data: the replica sees them, resident.
  CHECK(held_there == held_here);
  // Of the freed ones only what the replica's own allocations took again; without the trim
  // every page of them (shared with the caller).
  CHECK(freed_there < freed_here / 4);
  for (std::size_t i = 1; i < heap.size(); i += 2) std::free(heap[i]);
#endif
}

// Checks include/procflow/detail/table_memory.hpp (reduce_by_key's tables in replica processes):
// - before the arena is in use, and for small arrays, memory comes from operator new;
// - in use, large arrays come from 2 MiB-aligned regions advised for huge pages (the kernel's
//   VmFlags say "hg"), and an array allocated before is still freed by operator delete;
// - the buddy blocks split and merge: a table that doubles as it grows reuses what it outgrew,
//   and every block is distinct while live;
// - a flat_table keeps its contents through growth, its arrays on the arena;
// - outside a replica only a thread in an arena_scope allocates from it (arrays written whole
//   when allocated, not those filled as they go, unless the scope says every array), and the arena unmaps
//   everything when its last block is freed; a fork while another thread holds its lock leaves
//   the child a usable arena.
// The arena cannot be switched off again, so the cases that need it off run first, in order.
#include <procflow/detail/flat_table.hpp>
#include <procflow/detail/table_memory.hpp>

#include <doctest/doctest.h>

#include "support/child_process.hpp"

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <functional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace mem = procflow::detail::table_memory;

namespace {

// The VmFlags line of the mapping that holds p, from /proc/self/smaps ("" when none).
std::string vm_flags_of(const void* p) {
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  bool inside = false;
  while (std::getline(smaps, line)) {
    std::uintptr_t lo = 0;
    std::uintptr_t hi = 0;
    char dash = 0;
    std::istringstream head(line);
    if (line.find('-') < line.find(' ') && (head >> std::hex >> lo >> dash >> hi) && dash == '-') {
      inside = a >= lo && a < hi;
    } else if (inside && line.rfind("VmFlags:", 0) == 0) {
      return line;
    }
  }
  return {};
}

// This process's virtual size in bytes (VmSize in /proc/self/status).
std::size_t virtual_bytes() {
  std::ifstream status("/proc/self/status");
  std::string key;
  std::size_t kib = 0;
  while (status >> key) {
    if (key == "VmSize:" && status >> kib) return kib * 1024;
    status.ignore(1 << 12, '\n');
  }
  return 0;
}

}  // namespace

TEST_CASE("table_memory: before the arena is in use, every array comes from operator new") {
  REQUIRE_FALSE(mem::arena_in_use());
  void* big = mem::allocate(std::size_t{4} << 20, 8, true);
  CHECK_FALSE(mem::from_arena(big));
  mem::deallocate(big, std::size_t{4} << 20, 8);
}

TEST_CASE("table_memory: outside a replica, a thread in an arena_scope allocates from the arena, which gives everything back when its last block is freed") {
  REQUIRE_FALSE(mem::arena_in_use());
  void* inside = nullptr;
  void* outside = nullptr;
  {
    mem::arena_scope scope;
    inside = mem::allocate(std::size_t{1} << 20, 8, true);
    void* growing = mem::allocate(std::size_t{1} << 20, 8, false);  // filled as it goes: operator new outside a replica
    CHECK_FALSE(mem::from_arena(growing));
    mem::deallocate(growing, std::size_t{1} << 20, 8);
    std::thread([&] { outside = mem::allocate(std::size_t{1} << 20, 8, true); }).join();  // another thread: not in the scope
  }
  void* after = mem::allocate(std::size_t{1} << 20, 8, true);
  CHECK(mem::from_arena(inside));
  CHECK_FALSE(mem::from_arena(outside));
  CHECK_FALSE(mem::from_arena(after));
  CHECK(mem::mapped_bytes() >= (std::size_t{2} << 20));
  mem::deallocate(outside, std::size_t{1} << 20, 8);
  mem::deallocate(after, std::size_t{1} << 20, 8);
  CHECK(mem::mapped_bytes() > 0);
  mem::deallocate(inside, std::size_t{1} << 20, 8);  // freed on another path than it was allocated: by address
  CHECK(mem::mapped_bytes() == 0);
}

TEST_CASE("table_memory: arena_scope(arrays::every) takes the arrays filled as they go too, and an inner scope gives the outer one back") {
  // The caller decodes reduce_by_key pieces under arrays::every (each sized once, written whole).
  REQUIRE_FALSE(mem::arena_in_use());
  constexpr std::size_t bytes = std::size_t{1} << 20;
  void* every = nullptr;
  void* filled_again = nullptr;
  void* growing_again = nullptr;
  {
    mem::arena_scope outer;  // filled arrays only
    {
      mem::arena_scope inner(mem::arena_scope::arrays::every);
      every = mem::allocate(bytes, 8, false);
    }
    filled_again = mem::allocate(bytes, 8, true);
    growing_again = mem::allocate(bytes, 8, false);
  }
  void* after = mem::allocate(bytes, 8, false);
  CHECK(mem::from_arena(every));
  CHECK(mem::from_arena(filled_again));
  CHECK_FALSE(mem::from_arena(growing_again));  // the outer scope again: not every array
  CHECK_FALSE(mem::from_arena(after));
  for (void* p : {every, filled_again, growing_again, after}) mem::deallocate(p, bytes, 8);
  CHECK(mem::mapped_bytes() == 0);
}

TEST_CASE("table_memory: an array fills its block when at most a quarter of the power of two stays unused") {
  using mem::fills_its_block;
  CHECK(fills_its_block(std::size_t{1} << 20));
  CHECK(fills_its_block(std::size_t{3} << 19));          // 1.5 MiB of 2 MiB: a quarter unused
  CHECK_FALSE(fills_its_block((std::size_t{3} << 19) - 1));
  CHECK_FALSE(fills_its_block(1'250'000));                // a 1.25 MB piece in a 2 MiB block
  CHECK_FALSE(fills_its_block((std::size_t{1} << 20) + 1));
}

TEST_CASE("table_memory: an allocation the arena cannot map throws bad_alloc and leaves no count behind") {
  // In a child, under an address-space limit: a 1 GiB block cannot be mapped. The arena must not
  // count it as live, or it would never give its regions back when the blocks it did hand out
  // are freed (the caller's arena unmaps when its count returns to 0).
  procflow::test::ChildProcess child([] {
    mem::arena_scope scope;
    void* held = mem::allocate(std::size_t{1} << 20, 8, true);
    rlimit limit{};
    ::getrlimit(RLIMIT_AS, &limit);
    const rlimit saved = limit;
    limit.rlim_cur = virtual_bytes() + (std::size_t{256} << 20);
    ::setrlimit(RLIMIT_AS, &limit);
    bool threw = false;
    try {
      mem::allocate(std::size_t{1} << 30, 8, true);
    } catch (const std::bad_alloc&) {
      threw = true;
    }
    ::setrlimit(RLIMIT_AS, &saved);
    if (!threw) return 2;
    mem::deallocate(held, std::size_t{1} << 20, 8);
    return mem::mapped_bytes() == 0 ? 0 : 3;
  });
  // 2: the 1 GiB block did not fail; 3: the arena kept its regions after its last block was freed.
  const auto status = child.wait_for(std::chrono::seconds(30));
  REQUIRE(status.has_value());
  CHECK(WIFEXITED(*status));
  CHECK(WEXITSTATUS(*status) == 0);
}

TEST_CASE("table_memory: a fork while another thread holds the arena's lock leaves the child an arena it can use") {
  // The parent's thread allocates and frees in a loop (taking the lock each time) while the main
  // thread forks; each child allocates from the arena and exits. Without the fork handlers a child
  // whose fork fell inside the lock would wait for ever (the timeout below fails it).
  std::atomic<bool> stop{false};
  std::thread churn([&] {
    mem::arena_scope scope;
    while (!stop.load()) mem::deallocate(mem::allocate(std::size_t{1} << 16, 8, true), std::size_t{1} << 16, 8);
  });
  int hung = 0;
  for (int i = 0; i < 200; ++i) {
    procflow::test::ChildProcess child([] {
      mem::arena_scope scope;
      mem::deallocate(mem::allocate(std::size_t{1} << 16, 8, true), std::size_t{1} << 16, 8);
      return 0;
    });
    if (!child.succeeded_within(std::chrono::seconds(5))) {
      ++hung;
      break;
    }
  }
  stop.store(true);
  churn.join();
  CHECK(hung == 0);
}

TEST_CASE("table_memory: in use, large arrays come from huge-page regions; small ones and earlier ones do not") {
  void* earlier = mem::allocate(std::size_t{1} << 20, 8, true);  // operator new: the arena is not in use yet
  mem::use_arena_in_this_process();
  REQUIRE(mem::arena_in_use());

  void* small = mem::allocate(mem::arena_min_bytes - 1, 8, true);
  CHECK_FALSE(mem::from_arena(small));
  mem::deallocate(small, mem::arena_min_bytes - 1, 8);

  void* large = mem::allocate(std::size_t{3} << 20, 8, true);  // a 4 MiB block
  CHECK(mem::from_arena(large));
  CHECK(reinterpret_cast<std::uintptr_t>(large) % (std::size_t{2} << 20) == 0);
  std::memset(large, 1, std::size_t{3} << 20);
  CHECK(vm_flags_of(large).find(" hg") != std::string::npos);

  CHECK_FALSE(mem::from_arena(earlier));
  mem::deallocate(earlier, std::size_t{1} << 20, 8);  // to operator delete (ASan would see a bad free otherwise)
  mem::deallocate(large, std::size_t{3} << 20, 8);
}

TEST_CASE("table_memory: a growing table reuses what it outgrew, and keeps its contents") {
  REQUIRE(mem::arena_in_use());
  using table = procflow::detail::flat_table<std::int64_t, std::int64_t, std::hash<std::int64_t>>;
  std::vector<table> parts(64);  // as a replica's partial: 64 partitions growing side by side
  constexpr std::int64_t keys = 1 << 20;
  const std::size_t carved_before = mem::carved_bytes();
  for (int round = 0; round < 2; ++round)
    for (std::int64_t k = 0; k < keys; ++k) {
      const std::uint64_t h = table::hash_of(k);
      ++parts[h >> 58].find_or_insert(k, h, 0);
    }
  std::int64_t total = 0;
  bool exact = true;
  for (const auto& t : parts)
    for (const auto& e : t) {
      total += e.second;
      exact = exact && e.second == 2;
    }
  CHECK(exact);
  CHECK(total == 2 * keys);
  // In a replica both arrays are the arena's. Live at the end: 64 x (16 384 entries of 16 bytes +
  // 32 768 index slots of 4) = 24 MiB, each partition's old and new arrays side by side while it
  // grows. With the buddies merged this cuts 38 MiB; every size a partition outgrew kept on a list
  // of its own cut 44 MiB.
  CHECK(mem::from_arena(parts[0].begin()));
  const std::size_t carved = mem::carved_bytes() - carved_before;
  MESSAGE("carved for the table: " << (carved >> 20) << " MiB");
  CHECK(carved <= (std::size_t{40} << 20));
}

TEST_CASE("table_memory: buddy blocks are distinct while live, split and merge back") {
  REQUIRE(mem::arena_in_use());
  std::mt19937_64 rng(42);
  struct block {
    unsigned char* p;
    std::size_t bytes;
    unsigned char fill;
  };
  std::vector<block> live;
  for (int step = 0; step < 4000; ++step) {
    if (!live.empty() && (rng() % 2 == 0 || live.size() > 64)) {
      const std::size_t i = rng() % live.size();
      const block b = live[i];
      // Nobody wrote over it while it was live.
      CHECK(std::all_of(b.p, b.p + b.bytes, [&](unsigned char x) { return x == b.fill; }));
      mem::deallocate(b.p, b.bytes, 8);
      live.erase(live.begin() + static_cast<std::ptrdiff_t>(i));
    } else {
      const std::size_t bytes = (std::size_t{64} << 10) << (rng() % 6);  // 64 KiB .. 2 MiB
      auto* p = static_cast<unsigned char*>(mem::allocate(bytes, 8, true));
      REQUIRE(mem::from_arena(p));
      CHECK(reinterpret_cast<std::uintptr_t>(p) % std::min(bytes, std::size_t{2} << 20) == 0);
      const auto fill = static_cast<unsigned char>(rng());
      std::memset(p, fill, bytes);
      live.push_back({p, bytes, fill});
    }
  }
  for (const block& b : live) mem::deallocate(b.p, b.bytes, 8);

  // Everything merged back into whole superblocks: 32 blocks of 64 KiB now fill one superblock,
  // contiguously, in address order after the splits.
  std::vector<std::uintptr_t> small;
  for (int i = 0; i < 32; ++i) small.push_back(reinterpret_cast<std::uintptr_t>(mem::allocate(std::size_t{64} << 10, 8, true)));
  std::sort(small.begin(), small.end());
  for (std::size_t i = 1; i < small.size(); ++i) CHECK(small[i] - small[i - 1] == (std::size_t{64} << 10));
  CHECK(small.front() % (std::size_t{2} << 20) == 0);
  for (auto p : small) mem::deallocate(reinterpret_cast<void*>(p), std::size_t{64} << 10, 8);
}

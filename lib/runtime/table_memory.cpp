// The arena behind table_allocator (include/procflow/detail/table_memory.hpp).
#include <procflow/detail/table_memory.hpp>

#include <pthread.h>
#include <sys/mman.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <vector>

namespace procflow::detail::table_memory {

namespace {

constexpr unsigned min_class = 16;   // 64 KiB: arena_min_bytes
constexpr unsigned huge_class = 21;  // 2 MiB: a huge page
constexpr std::size_t huge_page = std::size_t{1} << huge_class;
constexpr std::size_t region_bytes = std::size_t{64} << 20;
static_assert(arena_min_bytes == std::size_t{1} << min_class);

std::atomic<bool> in_use{false};   // a replica process: every thread allocates from the arena
std::atomic<bool> created{false};  // the arena exists: a large block may be its
thread_local arena_scope::arrays in_scope = arena_scope::arrays::none;  // the innermost arena_scope of this thread

// Blocks are powers of two. Those of 2 MiB and more are cut from regions on 2 MiB boundaries and
// wait on their size's list when freed. Smaller ones are a buddy system inside 2 MiB superblocks:
// a block of 2^c bytes sits at a multiple of 2^c; splitting halves a larger free block, and a freed
// block merges with its free buddy (address ^ 2^c) up to a whole superblock again. Without the
// merging, tables that double as they grow left every smaller size they outgrew on a list no one
// asked for again: a replica's peak memory grew by a third at 5 M keys.
class arena {
 public:
  // A fork while another thread holds the lock (a merge thread of the caller's, as a replica is
  // started) would leave the child's copy locked for ever: fork() takes it first (pthread_atfork).
  void lock() noexcept { mutex_.lock(); }
  void unlock() noexcept { mutex_.unlock(); }

  void* allocate(std::size_t bytes) {
    const unsigned c = class_of(bytes);
    std::lock_guard lock(mutex_);
    const std::uintptr_t block = c >= huge_class ? take_large(c) : take_small(c);
    live_ += std::size_t{1} << c;  // after: a block that could not be mapped (bad_alloc) is not live
    return reinterpret_cast<void*>(block);
  }

  // False when p is not the arena's (it came from operator new before the arena was in use).
  bool deallocate(void* p, std::size_t bytes) noexcept {
    unsigned c = class_of(bytes);
    std::lock_guard lock(mutex_);
    if (find_region(reinterpret_cast<std::uintptr_t>(p)) == nullptr) return false;
    live_ -= std::size_t{1} << c;
    if (live_ == 0 && !in_use.load(std::memory_order_relaxed)) {
      release();  // outside a replica: nothing of the arena's is left in use, give it all back
      return true;
    }
    auto block = reinterpret_cast<std::uintptr_t>(p);
    for (; c < huge_class; ++c) {
      const std::uintptr_t buddy = block ^ (std::uintptr_t{1} << c);
      if (!is_free(buddy, c)) break;
      unlink(buddy, c);
      block = std::min(block, buddy);
    }
    if (c >= huge_class) {
      // Whole huge pages free: their memory goes back to the kernel now (the mapping stays, and a
      // reuse faults in one fresh huge page per 2 MiB), so a replica that let its pre-aggregated
      // table go (the switch to the shuffle), or one that lives on, does not keep it resident.
      ::madvise(reinterpret_cast<void*>(block), std::size_t{1} << c, MADV_DONTNEED);
      *reinterpret_cast<std::uintptr_t*>(block) = large_free_[c];
      large_free_[c] = block;
    } else {
      link(block, c);
    }
    return true;
  }

  bool contains(const void* p) noexcept {
    std::lock_guard lock(mutex_);
    return find_region(reinterpret_cast<std::uintptr_t>(p)) != nullptr;
  }
  std::size_t carved() noexcept {
    std::lock_guard lock(mutex_);
    return carved_;
  }
  std::size_t mapped() noexcept {
    std::lock_guard lock(mutex_);
    std::size_t n = 0;
    for (const auto& r : regions_) n += r.end - r.start;
    return n;
  }

 private:
  struct region {
    std::uintptr_t start;
    std::uintptr_t end;
    std::vector<std::uint64_t> free_bits;  // per superblock: which of its small blocks are free
  };
  struct free_block {
    free_block* prev;
    free_block* next;
  };

  static unsigned class_of(std::size_t bytes) noexcept {
    return std::max(min_class, static_cast<unsigned>(std::bit_width(bytes - 1)));
  }

  region* find_region(std::uintptr_t address) noexcept {
    for (auto& r : regions_)
      if (address >= r.start && address < r.end) return &r;
    return nullptr;
  }
  region& region_of(std::uintptr_t block) noexcept {
    if (region* r = find_region(block)) return *r;
    std::abort();  // every block the arena handed out lies in one of its regions
  }

  // Class c's blocks in a superblock own bits [64 - 2^(22 - c), 64 - 2^(21 - c)): 32 for 64 KiB,
  // 16 for 128 KiB, ... 2 for 1 MiB.
  std::pair<std::uint64_t*, std::uint64_t> bit_of(std::uintptr_t block, unsigned c) noexcept {
    region& r = region_of(block);
    const std::uintptr_t superblock = (block - r.start) >> huge_class;
    const unsigned position = static_cast<unsigned>((block & (huge_page - 1)) >> c);
    const unsigned offset = 64 - (1u << (22 - c));
    return {&r.free_bits[superblock], std::uint64_t{1} << (offset + position)};
  }
  bool is_free(std::uintptr_t block, unsigned c) noexcept {
    auto [word, bit] = bit_of(block, c);
    return (*word & bit) != 0;
  }
  void link(std::uintptr_t block, unsigned c) noexcept {
    auto [word, bit] = bit_of(block, c);
    *word |= bit;
    auto* b = reinterpret_cast<free_block*>(block);
    b->prev = nullptr;
    b->next = small_free_[c];
    if (b->next) b->next->prev = b;
    small_free_[c] = b;
  }
  void unlink(std::uintptr_t block, unsigned c) noexcept {
    auto [word, bit] = bit_of(block, c);
    *word &= ~bit;
    auto* b = reinterpret_cast<free_block*>(block);
    if (b->prev) {
      b->prev->next = b->next;
    } else {
      small_free_[c] = b->next;
    }
    if (b->next) b->next->prev = b->prev;
  }

  void release() noexcept {
    for (const auto& r : regions_) ::munmap(reinterpret_cast<void*>(r.start), r.end - r.start);
    regions_.clear();
    small_free_ = {};
    large_free_ = {};
    bump_ = end_ = 0;
  }

  // The smallest free block of class c or more, split down to c (the upper halves freed); a fresh
  // superblock when none is free.
  std::uintptr_t take_small(unsigned c) {
    unsigned k = c;
    while (k < huge_class && small_free_[k] == nullptr) ++k;
    std::uintptr_t block = 0;
    if (k == huge_class) {
      block = take_large(huge_class);
    } else {
      block = reinterpret_cast<std::uintptr_t>(small_free_[k]);
      unlink(block, k);
    }
    while (k > c) {  // keep the lower half, free the upper
      --k;
      link(block + (std::uintptr_t{1} << k), k);
    }
    return block;
  }

  std::uintptr_t take_large(unsigned c) {
    if (const std::uintptr_t block = large_free_[c]) {
      large_free_[c] = *reinterpret_cast<std::uintptr_t*>(block);
      return block;
    }
    const std::size_t size = std::size_t{1} << c;
    if (bump_ == 0 || end_ - bump_ < size) map_region(size);
    const std::uintptr_t block = bump_;
    bump_ += size;
    carved_ += size;
    return block;
  }

  // A fresh region of at least `size` bytes, 2 MiB-aligned (mapped 2 MiB larger, the ends cut).
  // What was left of the last region stays unused: untouched, it costs no memory.
  void map_region(std::size_t size) {
    const std::size_t len = std::max(region_bytes, size);
    std::vector<std::uint64_t> bits(len / huge_page);
    regions_.reserve(regions_.size() + 1);
    void* m = ::mmap(nullptr, len + huge_page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) throw std::bad_alloc();
    const auto raw = reinterpret_cast<std::uintptr_t>(m);
    const auto start = (raw + huge_page - 1) & ~(huge_page - 1);
    if (start > raw) ::munmap(m, start - raw);
    ::munmap(reinterpret_cast<void*>(start + len), raw + huge_page - start);  // start - raw < huge_page: never empty
    ::madvise(reinterpret_cast<void*>(start), len, MADV_HUGEPAGE);  // a hint: without it, 4 KiB pages
    regions_.push_back({start, start + len, std::move(bits)});
    bump_ = start;
    end_ = start + len;
  }

  std::mutex mutex_;
  std::array<free_block*, huge_class> small_free_{};  // classes min_class .. huge_class - 1
  std::array<std::uintptr_t, 64> large_free_{};       // classes huge_class ..: a list through each block's first word
  std::vector<region> regions_;
  std::uintptr_t bump_ = 0;  // regions are cut from here on 2 MiB boundaries
  std::uintptr_t end_ = 0;
  std::size_t carved_ = 0;
  std::size_t live_ = 0;  // bytes of the blocks handed out and not freed
};

arena* fork_guarded = nullptr;  // the arena, for the fork handlers

arena* make_arena() {
  auto* a = new arena;  // never destroyed: blocks may be freed during static destruction
  fork_guarded = a;
  ::pthread_atfork([] { fork_guarded->lock(); }, [] { fork_guarded->unlock(); }, [] { fork_guarded->unlock(); });
  created.store(true, std::memory_order_release);
  return a;
}

arena& the_arena() {
  static arena* a = make_arena();
  return *a;
}

void* plain_allocate(std::size_t bytes, std::size_t align) {
  if (align > __STDCPP_DEFAULT_NEW_ALIGNMENT__) return ::operator new(bytes, std::align_val_t(align));
  return ::operator new(bytes);
}

}  // namespace

void* allocate(std::size_t bytes, std::size_t align, bool filled) {
  if (bytes < arena_min_bytes || align > arena_min_bytes || !(in_scope == arena_scope::arrays::every || (in_scope == arena_scope::arrays::filled && filled) ||
                                                                    in_use.load(std::memory_order_relaxed)))
    return plain_allocate(bytes, align);
  return the_arena().allocate(bytes);
}

void deallocate(void* p, std::size_t bytes, std::size_t align) noexcept {
  if (p == nullptr) return;
  if (bytes >= arena_min_bytes && align <= arena_min_bytes && created.load(std::memory_order_acquire) &&
      the_arena().deallocate(p, bytes))
    return;
  // Unsized: clang before 19 declares no sized operator delete without -fsized-deallocation (the
  // fuzzing build).
  if (align > __STDCPP_DEFAULT_NEW_ALIGNMENT__) {
    ::operator delete(p, std::align_val_t(align));
  } else {
    ::operator delete(p);
  }
}

void use_arena_in_this_process() noexcept { in_use.store(true, std::memory_order_relaxed); }
bool arena_in_use() noexcept { return in_use.load(std::memory_order_relaxed); }
bool from_arena(const void* p) noexcept { return created.load(std::memory_order_acquire) && the_arena().contains(p); }
std::size_t carved_bytes() noexcept { return created.load(std::memory_order_acquire) ? the_arena().carved() : 0; }
std::size_t mapped_bytes() noexcept { return created.load(std::memory_order_acquire) ? the_arena().mapped() : 0; }

arena_scope::arena_scope(arrays which) noexcept : outer_(in_scope) { in_scope = which; }
arena_scope::~arena_scope() { in_scope = outer_; }

}  // namespace procflow::detail::table_memory

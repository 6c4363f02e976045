// Checks include/procflow/detail/prefault.hpp and its use by batch buffers:
// - prefault maps every whole page of a fresh anonymous block (mincore says resident), and
//   writing them afterwards takes a fault less a page than writing a block not prefaulted;
// - it touches no page it does not wholly cover (a block holding no whole page is refused);
// - a large batch_buffer comes back mapped (its allocator prefaults it).
// A kernel without MADV_POPULATE_WRITE (before 5.14) refuses the advice with EINVAL: prefault
// then says false and changes nothing, which the first case accepts only for that errno.
#include <procflow/detail/prefault.hpp>
#include <procflow/detail/stage.hpp>

#include <doctest/doctest.h>

#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace {

const std::size_t page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));

struct Mapping {
  explicit Mapping(std::size_t pages) : bytes(pages * page) {
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    REQUIRE(p != MAP_FAILED);
    data = static_cast<std::byte*>(p);
  }
  ~Mapping() { ::munmap(data, bytes); }
  std::size_t bytes;
  std::byte* data;
};

// Resident pages among the whole pages of [p, p + bytes).
std::size_t resident(const void* p, std::size_t bytes) {
  const auto begin = reinterpret_cast<std::uintptr_t>(p) & ~(page - 1);
  const auto end = (reinterpret_cast<std::uintptr_t>(p) + bytes + page - 1) & ~(page - 1);
  std::vector<unsigned char> in((end - begin) / page);
  REQUIRE(::mincore(reinterpret_cast<void*>(begin), end - begin, in.data()) == 0);
  std::size_t n = 0;
  for (unsigned char c : in) n += c & 1;
  return n;
}

long minor_faults() {
  rusage u{};
  ::getrusage(RUSAGE_THREAD, &u);
  return u.ru_minflt;
}

// This thread's page faults while writing one byte of every page of [p, p + bytes).
long faults_writing(std::byte* p, std::size_t bytes) {
  const long before = minor_faults();
  for (std::size_t i = 0; i < bytes; i += page) p[i] = std::byte{1};
  return minor_faults() - before;
}

bool kernel_lacks_populate() {
  Mapping m(1);
  if (procflow::detail::prefault(m.data, m.bytes)) return false;
  return errno == EINVAL;
}

}  // namespace

TEST_CASE("prefault maps a fresh block's pages: writing them then takes no fault") {
  if (kernel_lacks_populate()) {
    MESSAGE("this kernel has no MADV_POPULATE_WRITE: prefault is a no-op here");
    return;
  }
  Mapping control(256), m(256);
  CHECK(resident(m.data, m.bytes) == 0);
  REQUIRE(procflow::detail::prefault(m.data, m.bytes));
  CHECK(resident(m.data, m.bytes) == 256);
  // Against the same writes to a block not prefaulted (one fault a page), in the same thread: a
  // sanitizer's own faults (its shadow memory) happen in both and cancel out.
  const long unmapped = faults_writing(control.data, control.bytes);
  const long mapped = faults_writing(m.data, m.bytes);
  CHECK(unmapped >= 256);
  CHECK(mapped + 256 <= unmapped);
}

TEST_CASE("prefault covers only whole pages inside the block") {
  if (kernel_lacks_populate()) return;
  Mapping m(4);
  // Less than a page, straddling the first two: no whole page, nothing mapped.
  CHECK_FALSE(procflow::detail::prefault(m.data + 100, page));
  CHECK(resident(m.data, m.bytes) == 0);
  // From inside page 0 to inside page 3: pages 1 and 2 only.
  REQUIRE(procflow::detail::prefault(m.data + 100, 3 * page));
  CHECK(resident(m.data, page) == 0);
  CHECK(resident(m.data + page, 2 * page) == 2);
  CHECK(resident(m.data + 3 * page, page) == 0);
}

TEST_CASE("a large batch buffer comes back mapped") {
  if (kernel_lacks_populate()) return;
  // 64 MiB: above glibc's largest mmap threshold (32 MiB), so a fresh mapping of its own.
  procflow::detail::batch_buffer<std::byte> large;
  large.resize(std::size_t{64} << 20);
  const std::size_t whole = (large.size() - 2 * page) / page;  // the pages wholly inside it, at least
  CHECK(resident(large.data() + page, whole * page) >= whole);
}

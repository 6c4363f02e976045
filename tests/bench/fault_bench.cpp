// fault_bench: what mapping fresh anonymous memory costs here, per 4 KiB page — one page fault
// per page (a plain write to each), against one MADV_POPULATE_WRITE call for the block
// (procflow::detail::prefault), and a stage's batch buffer filled after its allocation (which
// prefaults blocks of 64 KiB and more). The reason batch buffers are prefaulted: on the virtual
// machines procflow is measured on, a fault costs ~11 us, the populate ~0.6 us a page and the
// first write to a populated page still ~5 us (the hypervisor's shadow page tables).
//
//   fault_bench [--json] [--quick] [--repeats=N] [--scale=F] [--only=a,b]
//
// Rows: bench "page_faults", variants "touch" (the baseline), "populate", "batch_buffer";
// field us_per_page (median of the repeats), items/s = pages per second.
#include "bench_support.hpp"

#include <procflow/detail/prefault.hpp>
#include <procflow/detail/stage.hpp>

#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstring>
#include <functional>

namespace {

constexpr std::size_t page = 4096;

double seconds_for(std::size_t bytes, const std::function<void(std::byte*)>& use) {
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  const auto t0 = std::chrono::steady_clock::now();
  use(static_cast<std::byte*>(p));
  const double s = bench::seconds_since(t0);
  ::munmap(p, bytes);
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  const bench::Options o = bench::parse_options(argc, argv);
  const auto pages = static_cast<std::size_t>(25'000 * o.scale) + 16;
  const std::size_t bytes = pages * page;
  std::vector<bench::Row> rows;
  auto measure = [&](const std::string& variant, const std::function<double()>& once, const std::string& note) {
    if (!o.wants(variant)) return;
    std::vector<double> seconds;
    for (int k = 0; k < o.repeats; ++k) seconds.push_back(once());
    const double s = bench::median(seconds);
    rows.push_back({"page_faults", variant, static_cast<double>(pages) / s, {{"us_per_page", s * 1e6 / static_cast<double>(pages)}}, note});
  };
  measure("touch", [&] { return seconds_for(bytes, [&](std::byte* p) { for (std::size_t i = 0; i < bytes; i += page) p[i] = std::byte{1}; }); },
          "one write per page: one page fault each");
  measure("populate", [&] {
    return seconds_for(bytes, [&](std::byte* p) {
      procflow::detail::prefault(p, bytes);
      for (std::size_t i = 0; i < bytes; i += page) p[i] = std::byte{1};
    });
  }, "prefault (MADV_POPULATE_WRITE), then the same writes");
  measure("batch_buffer", [&] {
    const auto t0 = std::chrono::steady_clock::now();
    {
      procflow::detail::batch_buffer<std::byte> b;
      b.resize(bytes);
      for (std::size_t i = 0; i < bytes; i += page) b[i] = std::byte{1};
    }
    return bench::seconds_since(t0);
  }, "a batch_buffer of the same size: allocated, then one write per page");
  bench::report(o, rows, "touch");
  return 0;
}

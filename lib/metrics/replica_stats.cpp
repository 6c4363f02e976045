#include "metrics/replica_stats.hpp"

#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <cstring>

namespace procflow::metrics {

namespace {

std::uint64_t timeval_ns(const timeval& t) noexcept {
  return static_cast<std::uint64_t>(t.tv_sec) * 1'000'000'000ULL + static_cast<std::uint64_t>(t.tv_usec) * 1000ULL;
}

// Reads "<key> <number>" lines of a /proc file into the matching outputs (value * scale).
template <std::size_t N>
void read_proc_fields(const char* path, const char* const (&keys)[N], std::uint64_t* (&out)[N], std::uint64_t scale) noexcept {
  std::FILE* f = std::fopen(path, "re");
  if (!f) return;
  char line[256];
  while (std::fgets(line, sizeof line, f)) {
    for (std::size_t k = 0; k < N; ++k) {
      const std::size_t len = std::strlen(keys[k]);
      if (std::strncmp(line, keys[k], len) != 0) continue;
      unsigned long long v = 0;
      if (std::sscanf(line + len, " %llu", &v) == 1) *out[k] += static_cast<std::uint64_t>(v) * scale;
    }
  }
  std::fclose(f);
}

}  // namespace

std::uint64_t steady_now_ns() noexcept {
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count());
}

bool private_read_pays(std::uint64_t lived_ns, std::uint64_t peak_rss_bytes) noexcept {
  constexpr std::uint64_t base_ns = 100'000, ns_per_mib = 20'000, life_per_cost = 100;
  const std::uint64_t cost_ns = base_ns + (peak_rss_bytes >> 20) * ns_per_mib;
  return lived_ns / life_per_cost >= cost_ns;
}

ProcessUsage sample_process_usage(std::uint64_t lived_ns) noexcept {
  ProcessUsage u;
  rusage ru{};
  if (::getrusage(RUSAGE_SELF, &ru) == 0) {
    u.cpu_user_ns = timeval_ns(ru.ru_utime);
    u.cpu_system_ns = timeval_ns(ru.ru_stime);
    u.peak_rss_bytes = static_cast<std::uint64_t>(ru.ru_maxrss) * 1024;  // Linux: KiB
  }
  {
    const char* const keys[] = {"rchar:", "wchar:"};
    std::uint64_t* out[] = {&u.read_bytes, &u.written_bytes};
    read_proc_fields("/proc/self/io", keys, out, 1);
  }
  if (private_read_pays(lived_ns, u.peak_rss_bytes)) {
    const char* const keys[] = {"Private_Clean:", "Private_Dirty:"};
    std::uint64_t* out[] = {&u.private_bytes, &u.private_bytes};
    read_proc_fields("/proc/self/smaps_rollup", keys, out, 1024);  // kB
  }
  return u;
}

void record_start(ReplicaStats& s) noexcept { s.start_ns.store(steady_now_ns(), std::memory_order_relaxed); }

void record_end(ReplicaStats& s) noexcept {
  const std::uint64_t end = steady_now_ns();
  s.end_ns.store(end, std::memory_order_relaxed);  // reading /proc below is not the replica's time
  const std::uint64_t start = s.start_ns.load(std::memory_order_relaxed);
  const ProcessUsage u = sample_process_usage(start != 0 && end > start ? end - start : 0);
  s.cpu_user_ns.store(u.cpu_user_ns, std::memory_order_relaxed);
  s.cpu_system_ns.store(u.cpu_system_ns, std::memory_order_relaxed);
  s.peak_rss_bytes.store(u.peak_rss_bytes, std::memory_order_relaxed);
  s.read_bytes.store(u.read_bytes, std::memory_order_relaxed);
  s.written_bytes.store(u.written_bytes, std::memory_order_relaxed);
  s.private_bytes.store(u.private_bytes, std::memory_order_relaxed);
}

}  // namespace procflow::metrics

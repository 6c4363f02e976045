// item_size_bench: throughput by item size (issue 14). Job: a generator making N strings of S
// bytes -> map with 2 replicas computing a checksum -> reduce(sum). Peers in the same run:
//   procflow    the pipeline above (items larger than a 64 KiB slot are split and reassembled)
//   pipe        the same job with a pipe per reader: the parent writes length-prefixed items to 2
//               forked readers in turn, each reassembles and checksums them
//   sequential  make and checksum every item in one loop
// Each size moves about 256 MiB (--quick: 32 MiB). Rows: bytes, gb_per_s, vs_pipe (the median of
// per-repeat ratios; the variants take turns within each repeat), vs_pipe_cpu and cpu_gb_per_s (the
// same per CPU second of the run's whole process tree), vs_60k_bytes. --bytes=N runs one size.
#include "bench_support.hpp"

#include <procflow/procflow.hpp>

#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstring>
#include <optional>
#include <string>

namespace pf = procflow;

namespace {

std::string make_item(std::size_t bytes, std::size_t i) {
  return std::string(bytes, static_cast<char>('a' + i % 26));
}

std::uint64_t checksum(const std::string& s) {
  std::uint64_t sum = 0;
  const std::size_t words = s.size() / 8;
  for (std::size_t k = 0; k < words; ++k) {
    std::uint64_t w;
    std::memcpy(&w, s.data() + 8 * k, 8);
    sum += w;
  }
  for (std::size_t k = words * 8; k < s.size(); ++k) sum += static_cast<unsigned char>(s[k]);
  return sum;
}

// CPU time (user + system) of this process and of its children that were waited for: every
// process of a run (the pipeline's and the pipe's readers are reaped before a job returns).
double tree_cpu_seconds() {
  double total = 0;
  for (const int who : {RUSAGE_SELF, RUSAGE_CHILDREN}) {
    rusage ru{};
    ::getrusage(who, &ru);
    total += static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
             static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
  }
  return total;
}

std::uint64_t procflow_job(std::size_t bytes, std::size_t n) {
  std::size_t i = 0;
  return pf::pipeline("item size")
      .source("gen", [&i, n, bytes]() -> std::optional<std::string> {
        if (i == n) return std::nullopt;
        return make_item(bytes, i++);
      })
      .map("checksum", [](const std::string& s) { return checksum(s); }, pf::replicas(2))
      .reduce("sum", std::uint64_t{0}, std::plus<>{}, std::plus<>{})
      .run()
      .value;
}

bool write_all(int fd, const void* p, std::size_t n) {
  const char* c = static_cast<const char*>(p);
  while (n) {
    const ssize_t w = ::write(fd, c, n);
    if (w <= 0) {
      if (w < 0 && errno == EINTR) continue;
      return false;
    }
    c += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}

bool read_all(int fd, void* p, std::size_t n) {
  char* c = static_cast<char*>(p);
  while (n) {
    const ssize_t r = ::read(fd, c, n);
    if (r <= 0) {
      if (r < 0 && errno == EINTR) continue;
      return false;
    }
    c += r;
    n -= static_cast<std::size_t>(r);
  }
  return true;
}

std::uint64_t pipe_job(std::size_t bytes, std::size_t n) {
  int data[2][2], back[2][2];
  pid_t pids[2];
  for (int r = 0; r < 2; ++r) {
    if (::pipe(data[r]) != 0 || ::pipe(back[r]) != 0) std::exit(1);
    pids[r] = bench::fork_child([&, r] {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      ::close(data[r][1]);
      ::close(back[r][0]);
      if (r == 1) {  // the parent's ends towards reader 0 (else reader 0 never sees EOF)
        ::close(data[0][1]);
        ::close(back[0][0]);
      }
      std::uint64_t sum = 0;
      std::string item;
      std::uint64_t len = 0;
      while (read_all(data[r][0], &len, sizeof len)) {
        item.resize(len);
        if (!read_all(data[r][0], item.data(), len)) return 1;
        sum += checksum(item);
      }
      return write_all(back[r][1], &sum, sizeof sum) ? 0 : 1;
    });
    ::close(data[r][0]);
    ::close(back[r][1]);
  }
  for (std::size_t i = 0; i < n; ++i) {
    const std::string item = make_item(bytes, i);
    const std::uint64_t len = item.size();
    const int fd = data[i % 2][1];
    if (!write_all(fd, &len, sizeof len) || !write_all(fd, item.data(), item.size())) std::exit(1);
  }
  std::uint64_t total = 0;
  for (int r = 0; r < 2; ++r) {
    ::close(data[r][1]);
    std::uint64_t sum = 0;
    if (!read_all(back[r][0], &sum, sizeof sum)) std::exit(1);
    ::close(back[r][0]);
    bench::wait_child(pids[r]);
    total += sum;
  }
  return total;
}

std::uint64_t sequential_job(std::size_t bytes, std::size_t n) {
  std::uint64_t sum = 0;
  for (std::size_t i = 0; i < n; ++i) sum += checksum(make_item(bytes, i));
  return sum;
}

}  // namespace

int main(int argc, char** argv) {
  // --bytes=N (this bench's own option, may repeat): run only these item sizes, e.g. to profile one.
  std::vector<std::size_t> only_bytes;
  std::vector<char*> rest{argv[0]};
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--bytes=", 8) == 0) {
      only_bytes.push_back(std::strtoull(argv[i] + 8, nullptr, 10));
    } else {
      rest.push_back(argv[i]);
    }
  }
  const bench::Options o = bench::parse_options(static_cast<int>(rest.size()), rest.data());
  const double volume = (o.scale < 1.0 ? 32.0 : 256.0) * 1024 * 1024;
  const std::size_t sizes[] = {1024, 60 * 1024, 70 * 1024, 1 << 20, 8 << 20, 64 << 20};
  std::vector<bench::Row> rows;
  for (const std::size_t bytes : sizes) {
    if (!only_bytes.empty() && std::find(only_bytes.begin(), only_bytes.end(), bytes) == only_bytes.end()) continue;
    const std::size_t n = std::max<std::size_t>(2, static_cast<std::size_t>(volume / static_cast<double>(bytes)));
    const std::uint64_t want = sequential_job(bytes, n);
    struct Variant {
      const char* name;
      std::uint64_t (*job)(std::size_t, std::size_t);
    };
    const Variant variants[] = {{"procflow", procflow_job}, {"pipe", pipe_job}, {"sequential", sequential_job}};
    // The variants take turns within each repeat, so a change of machine load hits all of them;
    // vs_pipe is the median of the per-repeat ratios.
    std::vector<std::vector<double>> rates(std::size(variants));
    std::vector<std::vector<double>> cpu(std::size(variants));  // CPU seconds of the run's process tree
    for (int r = 0; r < o.repeats; ++r) {
      for (std::size_t v = 0; v < std::size(variants); ++v) {
        if (!o.wants(variants[v].name)) continue;
        const double cpu0 = tree_cpu_seconds();
        const auto t0 = std::chrono::steady_clock::now();
        const std::uint64_t got = variants[v].job(bytes, n);
        const double secs = bench::seconds_since(t0);
        cpu[v].push_back(tree_cpu_seconds() - cpu0);
        if (got != want) {
          fmt::print(stderr, "{} at {} bytes: wrong checksum\n", variants[v].name, bytes);
          return 1;
        }
        rates[v].push_back(static_cast<double>(n) / secs);
      }
    }
    const std::vector<double>& pipe_rates = rates[1];
    for (std::size_t v = 0; v < std::size(variants); ++v) {
      if (rates[v].empty()) continue;
      bench::Row row{"item_size_bench", variants[v].name, bench::median(rates[v]),
                     {{"bytes", static_cast<double>(bytes)}, {"gb_per_s", bench::median(rates[v]) * static_cast<double>(bytes) / 1e9}}, ""};
      if (pipe_rates.size() == rates[v].size()) {
        std::vector<double> ratios;
        for (std::size_t r = 0; r < rates[v].size(); ++r) ratios.push_back(rates[v][r] / pipe_rates[r]);
        row.extra.push_back({"vs_pipe", bench::median(ratios)});
        // The same per byte of CPU time (user + system of every process of the run): on a loaded
        // machine the wall-clock ratio also measures who got the cores.
        std::vector<double> cpu_ratios;
        for (std::size_t r = 0; r < cpu[v].size(); ++r) cpu_ratios.push_back(cpu[1][r] / cpu[v][r]);
        row.extra.push_back({"vs_pipe_cpu", bench::median(cpu_ratios)});
      }
      row.extra.push_back({"cpu_gb_per_s", static_cast<double>(n) * static_cast<double>(bytes) / bench::median(cpu[v]) / 1e9});
      rows.push_back(row);
    }
  }
  // The second target: each size's byte rate against the same variant's at 60 KiB.
  for (auto& row : rows) {
    for (const auto& peer : rows) {
      // (without the 60 KiB row, e.g. under --bytes, there is no vs_60k_bytes)
      if (peer.variant != row.variant || peer.extra.front().second != 60.0 * 1024) continue;
      row.extra.push_back({"vs_60k_bytes", (row.items_per_s * row.extra.front().second) / (peer.items_per_s * 60.0 * 1024)});
    }
  }
  bench::report(o, rows);
  return 0;
}

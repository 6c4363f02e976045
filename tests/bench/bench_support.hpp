// Shared helpers for procflow's benchmarks: repeated runs with medians, a fmt table on stdout
// and, with --json, one JSON object per line ({"bench", "variant", "items_per_s", ...}).
#pragma once

#include <fmt/core.h>
#include <fmt/format.h>

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace bench {

// One measured configuration. `extra` holds further numeric columns (speedup, efficiency,
// cpu_s, rss_mib, ...), printed in the table and the JSON row in insertion order.
struct Row {
  std::string bench;
  std::string variant;
  double items_per_s = 0;
  std::vector<std::pair<std::string, double>> extra;
  std::string note;
};

struct Options {
  bool json = false;
  int repeats = 5;
  double scale = 1.0;  // multiplies item counts (--quick sets 0.05)
  // --only=a,b: run only variants whose name contains one of these; a name ending in '$' must
  // match whole (--only=procflow$ runs the procflow row alone).
  std::vector<std::string> only;

  bool wants(std::string_view variant) const {
    if (only.empty()) return true;
    return std::any_of(only.begin(), only.end(), [&](const std::string& o) {
      if (!o.empty() && o.back() == '$') return variant == std::string_view(o).substr(0, o.size() - 1);
      return variant.find(o) != std::string_view::npos;
    });
  }
};

inline Options parse_options(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    if (a == "--json") {
      o.json = true;
    } else if (a == "--quick") {
      o.scale = 0.05;
      o.repeats = 3;
    } else if (a.rfind("--repeats=", 0) == 0) {
      o.repeats = std::max(1, std::atoi(argv[i] + 10));
    } else if (a.rfind("--scale=", 0) == 0) {
      o.scale = std::atof(argv[i] + 8);
    } else if (a.rfind("--only=", 0) == 0) {
      std::string rest(a.substr(7));
      std::size_t pos = 0;
      while (pos <= rest.size()) {
        auto comma = rest.find(',', pos);
        if (comma == std::string::npos) comma = rest.size();
        if (comma > pos) o.only.push_back(rest.substr(pos, comma - pos));
        pos = comma + 1;
      }
    } else if (a == "--help" || a == "-h") {
      fmt::print("usage: {} [--json] [--quick] [--repeats=N] [--scale=F] [--only=a,b]\n", argv[0]);
      std::exit(0);
    } else {
      fmt::print(stderr, "{}: unknown option '{}' (try --help)\n", argv[0], a);
      std::exit(2);
    }
  }
  return o;
}

inline double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const auto n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// Runs `once` (returning items/s) `repeats` times and returns the median.
inline double median_of(int repeats, const std::function<double()>& once) {
  std::vector<double> v;
  for (int i = 0; i < repeats; ++i) v.push_back(once());
  return median(v);
}

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// CPU time (user + system) of this process, in seconds.
inline double self_cpu_seconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

// CPU time (user + system) of this process and of every child it has reaped (RUSAGE_CHILDREN:
// a run's replicas are reaped before run() returns), in seconds: a run's CPU is the difference.
inline double tree_cpu_seconds() {
  double total = 0;
  for (const int who : {RUSAGE_SELF, RUSAGE_CHILDREN}) {
    rusage ru{};
    getrusage(who, &ru);
    total += static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
             static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
  }
  return total;
}

// Forks a child running `body`, which returns the child's exit status. Returns the pid.
inline pid_t fork_child(const std::function<int()>& body) {
  std::fflush(nullptr);
  pid_t pid = ::fork();
  if (pid < 0) {
    fmt::print(stderr, "fork failed: {}\n", std::strerror(errno));
    std::exit(1);
  }
  if (pid == 0) {
    int rc = 1;
    try {
      rc = body();
    } catch (const std::exception& e) {
      fmt::print(stderr, "benchmark child failed: {}\n", e.what());
    }
    std::fflush(nullptr);
    ::_exit(rc);
  }
  return pid;
}

// Waits for `pid`; returns its CPU time (user + system) in seconds. Exits on abnormal status.
inline double wait_child(pid_t pid) {
  int status = 0;
  rusage ru{};
  while (::wait4(pid, &status, 0, &ru) < 0) {
    if (errno != EINTR) {
      fmt::print(stderr, "wait4 failed: {}\n", std::strerror(errno));
      std::exit(1);
    }
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    fmt::print(stderr, "benchmark child {} failed (status {:#x})\n", pid, status);
    std::exit(1);
  }
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

// The median wall and CPU seconds (user + system, the child's whole tree) of `repeats` runs of
// `run`, each in a fresh child process (fork_child): a run starts from the same state every time,
// and whatever it leaves in memory goes with the child. `run` returns the child's exit status —
// 0 when its output checked out; anything else ends the benchmark (wait_child).
struct child_times {
  double wall_s;
  double cpu_s;
};
inline child_times measure_in_children(int repeats, const std::function<int()>& run) {
  std::vector<double> walls, cpus;
  for (int k = 0; k < repeats; ++k) {
    const auto t0 = std::chrono::steady_clock::now();
    const pid_t pid = fork_child(run);
    cpus.push_back(wait_child(pid));
    walls.push_back(seconds_since(t0));
  }
  return {median(walls), median(cpus)};
}

inline std::string json_escape(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += fmt::format("\\u{:04x}", static_cast<unsigned>(c));
    } else {
      out += c;
    }
  }
  return out;
}

// Prints rows as a table (or JSON lines). `ratio_to` names a variant; each row also shows its
// throughput relative to that variant.
inline void report(const Options& o, const std::vector<Row>& rows, std::string_view ratio_to = {}) {
  double reference = 0;
  for (const auto& r : rows)
    if (r.variant == ratio_to) reference = r.items_per_s;
  if (o.json) {
    for (const auto& r : rows) {
      std::string line = fmt::format(R"({{"bench":"{}","variant":"{}","items_per_s":{:.6g})",
                                     json_escape(r.bench), json_escape(r.variant), r.items_per_s);
      if (reference > 0) line += fmt::format(R"(,"vs_{}":{:.4g})", json_escape(ratio_to), r.items_per_s / reference);
      for (const auto& [k, v] : r.extra) line += fmt::format(R"(,"{}":{:.6g})", json_escape(k), v);
      if (!r.note.empty()) line += fmt::format(R"(,"note":"{}")", json_escape(r.note));
      line += "}";
      fmt::print("{}\n", line);
    }
    std::fflush(stdout);
    return;
  }
  std::vector<std::string> extra_names;
  for (const auto& r : rows)
    for (const auto& [k, v] : r.extra)
      if (std::find(extra_names.begin(), extra_names.end(), k) == extra_names.end()) extra_names.push_back(k);
  std::string header = fmt::format("{:<16} {:<34} {:>12}", "bench", "variant", "items/s");
  if (reference > 0) header += fmt::format(" {:>10}", fmt::format("vs {}", ratio_to.substr(0, 7)));
  for (const auto& k : extra_names) header += fmt::format(" {:>12}", k);
  fmt::print("{}\n{}\n", header, std::string(header.size(), '-'));
  for (const auto& r : rows) {
    std::string line = fmt::format("{:<16} {:<34} {:>12.3g}", r.bench, r.variant, r.items_per_s);
    if (reference > 0) line += fmt::format(" {:>10.3f}", r.items_per_s / reference);
    for (const auto& k : extra_names) {
      auto it = std::find_if(r.extra.begin(), r.extra.end(), [&](const auto& kv) { return kv.first == k; });
      line += it == r.extra.end() ? fmt::format(" {:>12}", "") : fmt::format(" {:>12.4g}", it->second);
    }
    if (!r.note.empty()) line += "  " + r.note;
    fmt::print("{}\n", line);
  }
  std::fflush(stdout);
}

}  // namespace bench

// groupby_bench: counting N int64 items (default 20 M) over K distinct keys, key (i * 2654435761) % K,
// K in {1, 1e3, 1e5, 1e6, 5e6} (issue 16). Variants, each in a forked child measured in the same run:
//   sequential        a std::unordered_map<int64, int64> loop (what a user writes first)
//   sequential_flat   the same loop over procflow's flat open-addressing table (a stronger peer)
//   sequential_pair   two std::unordered_map loops at once in two processes, half the items each,
//                     each with its own table: what two processes doing the sequential work get out
//                     of this machine (the ceiling of 2 replicas that each see every key)
//   procflow          iota -> map(key) x2 -> reduce_by_key, default placement (as the issue writes it)
//   procflow_shuffle  the same with reduce_by_key in 2 processes of its own (keyed dispatch)
//   procflow_pre_aggregate_always  procflow with pf::pre_aggregate::always(): every replica keeps
//                     its whole partial to the end (the behaviour before the adaptive switch)
//   *_random_keys     (with --random-keys, instead of the rows above) the same three (sequential, procflow, procflow_shuffle) over random keys,
//                     mix_hash(i) % K (about K(1 - e^(-N/K)) distinct keys). The rows above repeat
//                     the key order (i * 2654435761) % K every K items, so a std::unordered_map loop
//                     (identity hash, nodes allocated in first-seen order) walks its nodes in
//                     memory order; random keys show the tables on keys without that order.
// Fields: seconds (median wall time of the child, result checked), peak_rss_mb: the sum over every
// process of the child's tree (the child and all its descendants) of VmHWM from /proc/<pid>/status,
// sampled every 5 ms by the parent (each process's last seen high-water mark, summed: shared
// memory pages count in each process that touched them, so this overstates rather than understates);
// cpu_s: median user + system CPU of the child and every process it reaped (RUSAGE_CHILDREN), so
// that a loaded machine can still compare work done. The first repeat of a procflow variant
// prints the reduce_by_key stage's report note (which aggregation mode ran, and why) to stderr.
//
//   groupby_bench [--json] [--quick] [--repeats=N] [--scale=F] [--only=...] [--keys=1,1000,...] [--random-keys]
#include "bench_support.hpp"

#include <procflow/detail/flat_table.hpp>
#include <procflow/procflow.hpp>

#include <dirent.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sstream>
#include <thread>
#include <unordered_map>
#include <unordered_set>

namespace pf = procflow;

namespace {

using i64 = std::int64_t;

i64 key_of(i64 i, i64 k) { return static_cast<i64>((static_cast<std::uint64_t>(i) * 2654435761ULL) % static_cast<std::uint64_t>(k)); }
i64 random_key_of(i64 i, i64 k) { return static_cast<i64>(pf::mix_hash(static_cast<std::uint64_t>(i)) % static_cast<std::uint64_t>(k)); }
using key_fn = i64 (*)(i64, i64);

bool print_note = false;  // in the child: print the reduce_by_key stage's note (first repeat)

void note_mode(const pf::run_report& report) {
  if (!print_note) return;
  for (const auto& s : report.stages)
    if (s.name == "count") fmt::print(stderr, "groupby_bench: note: {}\n", s.note);
}

// What every variant must agree on: key count, total count, and a checksum of key*count.
struct Summary {
  std::uint64_t keys = 0, total = 0, weighted = 0;
  bool operator==(const Summary&) const = default;
};

template <class Map>
Summary summarize(const Map& m) {
  Summary s;
  for (const auto& [k, v] : m) {
    ++s.keys;
    s.total += static_cast<std::uint64_t>(v);
    s.weighted += static_cast<std::uint64_t>(k) * static_cast<std::uint64_t>(v);
  }
  return s;
}

template <key_fn Key>
Summary sequential(i64 n, i64 k) {
  std::unordered_map<i64, i64> counts;
  for (i64 i = 0; i < n; ++i) ++counts[Key(i, k)];
  return summarize(counts);
}

// Two copies of the std::unordered_map loop at once in two processes, each over half of the items
// with its own table (what two pre-aggregating replicas do, without any merge): what two processes
// get out of this machine's two cores on this job, the ceiling of a 2-replica run that keeps every
// key in every replica. Each half is checked by its item count (its keys are its own: their union
// is what procflow's merge computes); the row then reports the summary the others must match.
Summary pair_expected;  // set in main() for the current K

template <key_fn Key>
Summary sequential_pair(i64 n, i64 k) {
  auto half = [&](i64 from, i64 to) {
    const pid_t pid = ::fork();
    if (pid != 0) return pid;
    std::unordered_map<i64, i64> counts;
    for (i64 i = from; i < to; ++i) ++counts[Key(i, k)];
    ::_exit(summarize(counts).total == static_cast<std::uint64_t>(to - from) ? 0 : 3);
  };
  const pid_t a = half(0, n / 2), b = half(n / 2, n);
  int sa = -1, sb = -1;
  if (a > 0) ::waitpid(a, &sa, 0);
  if (b > 0) ::waitpid(b, &sb, 0);
  const auto ok = [](int s) { return WIFEXITED(s) && WEXITSTATUS(s) == 0; };
  return ok(sa) && ok(sb) ? pair_expected : Summary{};
}

template <key_fn Key>
Summary sequential_flat(i64 n, i64 k) {
  using Table = pf::detail::flat_table<i64, i64, std::hash<i64>>;
  Table counts;
  for (i64 i = 0; i < n; ++i) {
    const i64 key = Key(i, k);
    ++counts.find_or_insert(key, Table::hash_of(key), i64{0});
  }
  return summarize(counts);
}

template <key_fn Key>
auto count_pipeline(i64 n, i64 k) {
  return pf::pipeline("groupby")
      .source("numbers", pf::iota<i64>(0, n))
      .map("key", [k](i64 i) { return Key(i, k); }, pf::replicas(2));
}

template <key_fn Key>
Summary with_procflow(i64 n, i64 k) {
  auto r = count_pipeline<Key>(n, k)
               .reduce_by_key("count", [](i64 key) { return key; }, i64{0}, [](i64& c, i64) { ++c; }, std::plus<>{})
               .run();
  note_mode(r.report);
  return summarize(r.value);
}

template <key_fn Key>
Summary with_procflow_always(i64 n, i64 k) {
  auto r = count_pipeline<Key>(n, k)
               .reduce_by_key("count", [](i64 key) { return key; }, i64{0}, [](i64& c, i64) { ++c; }, std::plus<>{},
                              pf::pre_aggregate::always())
               .run();
  note_mode(r.report);
  return summarize(r.value);
}

template <key_fn Key>
Summary with_procflow_shuffle(i64 n, i64 k) {
  auto r = count_pipeline<Key>(n, k)
               .reduce_by_key("count", [](i64 key) { return key; }, i64{0}, [](i64& c, i64) { ++c; }, std::plus<>{},
                              pf::replicas(2), pf::own_process)
               .run();
  note_mode(r.report);
  return summarize(r.value);
}

// The text of a /proc file ("" when the process is gone: it may exit while we read).
std::string read_proc(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return {};
  char buf[4096];
  const ssize_t n = ::read(fd, buf, sizeof buf);
  ::close(fd);
  return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
}

// VmHWM of one process in kB (0 if it is gone).
std::uint64_t hwm_kb(pid_t pid) {
  const std::string s = read_proc("/proc/" + std::to_string(pid) + "/status");
  const auto at = s.find("VmHWM:");
  return at == std::string::npos ? 0 : std::strtoull(s.c_str() + at + 6, nullptr, 10);
}

pid_t parent_of(pid_t pid) {
  const std::string s = read_proc("/proc/" + std::to_string(pid) + "/stat");
  const auto close = s.rfind(')');
  if (close == std::string::npos || close + 4 >= s.size()) return 0;
  return static_cast<pid_t>(std::atoi(s.c_str() + close + 4));  // ") S ppid"
}

// Samples the tree under `root` until it exits; returns the sum of every process's last seen
// VmHWM in MB.
double watch_tree(pid_t root) {
  std::map<pid_t, std::uint64_t> peak;  // pid -> last seen VmHWM (kB)
  std::unordered_set<pid_t> tree{root};
  std::unordered_set<pid_t> others;  // processes seen outside the tree (checked once)
  for (;;) {
    int status = 0;
    const pid_t done = ::waitpid(root, &status, WNOHANG);
    if (done == root) {
      if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fmt::print(stderr, "groupby_bench: child failed (status {:#x})\n", status);
        std::exit(1);
      }
      break;
    }
    if (DIR* d = ::opendir("/proc")) {
      while (dirent* e = ::readdir(d)) {
        const pid_t pid = static_cast<pid_t>(std::atoi(e->d_name));
        if (pid <= 0) continue;
        if (others.count(pid)) continue;
        if (!tree.count(pid)) {
          if (!tree.count(parent_of(pid))) {
            if (pid < root) others.insert(pid);  // older than the tree: never joins it
            continue;
          }
          tree.insert(pid);
        }
        if (const auto kb = hwm_kb(pid)) peak[pid] = std::max(peak[pid], kb);
      }
      ::closedir(d);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  std::uint64_t sum = 0;
  for (const auto& [pid, kb] : peak) sum += kb;
  return static_cast<double>(sum) / 1024.0;
}

bool random_keys = false;  // --random-keys: also the *_random_keys rows (slow: a cache miss per item)

std::vector<i64> parse_keys(int& argc, char** argv) {
  std::vector<i64> keys{1, 1'000, 100'000, 1'000'000, 5'000'000};
  int out = 1;
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    if (a == "--random-keys") {
      random_keys = true;
    } else if (a.rfind("--keys=", 0) == 0) {
      keys.clear();
      std::stringstream ss(std::string(a.substr(7)));
      for (std::string part; std::getline(ss, part, ',');) keys.push_back(static_cast<i64>(std::atof(part.c_str())));
    } else {
      argv[out++] = argv[i];
    }
  }
  argc = out;
  return keys;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<i64> key_counts = parse_keys(argc, argv);
  const bench::Options o = bench::parse_options(argc, argv);
  const auto n = static_cast<i64>(20'000'000 * o.scale);

  std::vector<bench::Row> rows;
  for (const i64 k : key_counts) {
    const Summary expected = sequential_flat<key_of>(n, k);
    pair_expected = expected;
    const Summary expected_random = random_keys ? sequential_flat<random_key_of>(n, k) : Summary{};
    auto measure = [&](const std::string& variant, Summary (*run)(i64, i64), const char* note) {
      const bool random_row = variant.ends_with("random_keys");
      const Summary& want = random_row ? expected_random : expected;
      if (!o.wants(variant) || random_row != random_keys) return;
      std::vector<double> walls, rss, cpus;
      auto children_cpu = [] {
        rusage u{};
        ::getrusage(RUSAGE_CHILDREN, &u);
        return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) + static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
      };
      for (int r = 0; r < o.repeats; ++r) {
        print_note = r == 0 && variant.starts_with("procflow");
        const double cpu0 = children_cpu();
        const auto t0 = std::chrono::steady_clock::now();
        std::fflush(nullptr);
        const pid_t pid = ::fork();
        if (pid < 0) std::exit(1);
        if (pid == 0) {
          int rc = 3;
          try {
            rc = run(n, k) == want ? 0 : 3;
          } catch (const std::exception& e) {
            fmt::print(stderr, "groupby_bench {}: {}\n", variant, e.what());
          }
          std::fflush(nullptr);
          ::_exit(rc);
        }
        rss.push_back(watch_tree(pid));
        walls.push_back(bench::seconds_since(t0));
        cpus.push_back(children_cpu() - cpu0);
      }
      const double wall = bench::median(walls);
      rows.push_back({"groupby", variant, static_cast<double>(n) / wall,
                      {{"keys", static_cast<double>(k)}, {"seconds", wall}, {"peak_rss_mb", bench::median(rss)}, {"cpu_s", bench::median(cpus)}}, note});
    };
    measure("sequential", sequential<key_of>, "std::unordered_map loop");
    measure("sequential_flat", sequential_flat<key_of>, "flat open-addressing table loop");
    measure("sequential_pair", sequential_pair<key_of>, "two unordered_map loops at once, half the items each (2-process ceiling)");
    measure("procflow", with_procflow<key_of>, "iota -> map x2 -> reduce_by_key (default placement)");
    measure("procflow_shuffle", with_procflow_shuffle<key_of>, "reduce_by_key replicas(2), own_process");
    measure("procflow_pre_aggregate_always", with_procflow_always<key_of>, "default placement, pf::pre_aggregate::always()");
    measure("sequential_random_keys", sequential<random_key_of>, "std::unordered_map loop, keys mix_hash(i) % K");
    measure("procflow_random_keys", with_procflow<random_key_of>, "default placement, keys mix_hash(i) % K");
    measure("procflow_shuffle_random_keys", with_procflow_shuffle<random_key_of>,
            "reduce_by_key replicas(2), own_process, keys mix_hash(i) % K");
  }
  bench::report(o, rows);
  return 0;
}

// etl_reader_bench: a CSV group-by (issue 9's job) — mean departure delay per origin over a
// generated 3 M-row flights-like CSV — as a plain sequential C++ loop and with procflow's
// splittable readers (csv_rows, and lines + a hand parser), measured in the same run.
//
//   etl_reader_bench [--json] [--quick] [--repeats=N] [--scale=F] [--only=a,b]
//
// Rows: bench "csv_groupby", variants "sequential" (one process: large reads, memchr, from_chars,
// a hash map; a good loop, not a strawman), "procflow" (csv_rows -> reduce_by_key over 2
// replicas), "procflow_lines" (lines -> parse in the map -> reduce_by_key), "procflow_lines_count_last"
// (the same with replicas(2) on the group-by, not the filter, as a new user writes it). All key by a
// std::string_view into the row (no std::string per row for a key already seen). Each variant
// runs in a forked child; cpu_s is that child's user+system time including its replicas.
#include "bench_support.hpp"

#include <procflow/procflow.hpp>
#include <procflow/stages/csv.hpp>
#include <procflow/stages/lines.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <string_view>
#include <unordered_map>

namespace pf = procflow;

namespace {

struct Acc {
  double sum = 0;
  std::int64_t n = 0;
};

}  // namespace

template <>
struct procflow::codec<Acc> {
  static std::size_t encoded_size(const Acc&) noexcept { return 16; }
  static std::byte* encode(const Acc& a, std::byte* out) noexcept {
    return codec<std::int64_t>::encode(a.n, codec<double>::encode(a.sum, out));
  }
  static Acc decode(decoder& in) {
    Acc a;
    a.sum = codec<double>::decode(in);
    a.n = codec<std::int64_t>::decode(in);
    return a;
  }
};

namespace {

using Groups = std::unordered_map<std::string, Acc>;

const char* const airports[] = {"ATL", "LAX", "ORD", "DFW", "DEN", "JFK", "SFO", "SEA", "LAS", "MCO", "EWR", "CLT",
                                "PHX", "IAH", "MIA", "BOS", "MSP", "FLL", "DTW", "PHL", "LGA", "BWI", "SLC", "SAN"};

// year,month,carrier,origin,dest,dep_delay,distance
std::string make_data(std::uint64_t rows) {
  const std::string path = (std::filesystem::temp_directory_path() / ("procflow_etl_bench_" + std::to_string(rows) + ".csv")).string();
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && st.st_size > 0) return path;
  const std::string tmp = path + ".part";
  std::ofstream out(tmp, std::ios::binary);
  out << "year,month,carrier,origin,dest,dep_delay,distance\n";
  std::mt19937_64 rng(2024);
  std::string line;
  for (std::uint64_t i = 0; i < rows; ++i) {
    line.clear();
    line += "2023,";
    line += std::to_string(1 + rng() % 12);
    line += ",\"";
    line += "AA DL UA WN B6"[3 * (rng() % 5)];
    line += "X\",";
    line += airports[rng() % 24];
    line += ',';
    line += airports[rng() % 24];
    line += ',';
    line += std::to_string(static_cast<int>(rng() % 200) - 20);
    line += ',';
    line += std::to_string(100 + rng() % 2500);
    line += '\n';
    out << line;
  }
  out.close();
  std::filesystem::rename(tmp, path);
  return path;
}

// Field k (0-based) of a CSV line without quotes inside the fields we read.
std::string_view field(std::string_view line, int k) {
  std::size_t pos = 0;
  for (int i = 0; i < k; ++i) {
    pos = line.find(',', pos);
    if (pos == std::string_view::npos) return {};
    ++pos;
  }
  const std::size_t end = line.find(',', pos);
  return line.substr(pos, end == std::string_view::npos ? std::string_view::npos : end - pos);
}

double number(std::string_view s) {
  double v = 0;
  std::from_chars(s.data(), s.data() + s.size(), v);
  return v;
}

struct sv_hash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};

Groups sequential(const std::string& path) {
  std::unordered_map<std::string, Acc, sv_hash, std::equal_to<>> groups;
  const int fd = ::open(path.c_str(), O_RDONLY);
  std::string buffer(std::size_t{1} << 20, '\0');
  std::size_t have = 0;
  bool header = true;
  for (;;) {
    const ssize_t got = ::read(fd, buffer.data() + have, buffer.size() - have);
    if (got <= 0 && have == 0) break;
    const std::size_t end = have + static_cast<std::size_t>(std::max<ssize_t>(got, 0));
    std::size_t pos = 0;
    for (;;) {
      const void* nl = std::memchr(buffer.data() + pos, '\n', end - pos);
      if (!nl) break;
      const std::size_t len = static_cast<std::size_t>(static_cast<const char*>(nl) - buffer.data()) - pos;
      const std::string_view line(buffer.data() + pos, len);
      pos += len + 1;
      if (header) {
        header = false;
        continue;
      }
      const std::string_view origin = field(line, 3);
      auto it = groups.find(origin);
      if (it == groups.end()) it = groups.emplace(std::string(origin), Acc{}).first;
      it->second.sum += number(field(line, 5));
      it->second.n += 1;
    }
    std::memmove(buffer.data(), buffer.data() + pos, end - pos);
    have = end - pos;
    if (got <= 0) break;
  }
  ::close(fd);
  return Groups(groups.begin(), groups.end());
}

std::size_t column(const std::vector<std::string>& names, const std::string& name) {
  return static_cast<std::size_t>(std::find(names.begin(), names.end(), name) - names.begin());
}

auto add = [](Acc& a, const Acc& b) {
  a.sum += b.sum;
  a.n += b.n;
};

Groups with_csv_rows(const std::string& path, std::uint32_t replicas) {
  auto rows = pf::stages::csv_rows(path);
  // Column positions looked up once, from the header read at declaration.
  const std::size_t origin = column(rows.columns(), "origin");
  const std::size_t delay = column(rows.columns(), "dep_delay");
  return pf::pipeline("csv_groupby")
      .source("rows", rows)
      .reduce_by_key("by origin", [origin](const pf::stages::csv_row& r) { return r.get<std::string_view>(origin); }, Acc{},
                     [delay](Acc& a, const pf::stages::csv_row& r) {
                       a.sum += r.get<double>(delay);
                       a.n += 1;
                     },
                     add, pf::replicas(replicas))
      .run()
      .value;
}

// The count on the filter, or (as a new user writes it) on the group-by only: the filter before
// it then runs in the group-by's processes too (issue 6, runtime/plan.cpp adopt_first_count).
Groups with_lines(const std::string& path, std::uint32_t replicas, bool count_on_filter = true) {
  auto lines = pf::pipeline("lines_groupby").source("lines", pf::stages::lines(path));
  auto by_origin = [](const std::string& l) { return field(l, 3); };
  auto fold = [](Acc& a, const std::string& l) {
    a.sum += number(field(l, 5));
    a.n += 1;
  };
  auto no_header = [](const std::string& l) { return l.rfind("year,", 0) != 0; };
  if (count_on_filter)
    return lines.filter("no header", no_header, pf::replicas(replicas)).reduce_by_key("by origin", by_origin, Acc{}, fold, add).run().value;
  return lines.filter("no header", no_header).reduce_by_key("by origin", by_origin, Acc{}, fold, add, pf::replicas(replicas)).run().value;
}

bool same(const Groups& a, const Groups& b) {
  if (a.size() != b.size()) return false;
  for (const auto& [k, v] : a) {
    auto it = b.find(k);
    if (it == b.end() || it->second.n != v.n || std::fabs(it->second.sum - v.sum) > 1e-6 * std::fabs(v.sum) + 1e-6) return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  const bench::Options o = bench::parse_options(argc, argv);
  const auto rows_n = static_cast<std::uint64_t>(3'000'000 * o.scale);
  const std::string path = make_data(rows_n);
  const Groups expected = sequential(path);  // also warms the page cache

  std::vector<bench::Row> rows;
  auto measure = [&](const std::string& variant, const std::function<Groups()>& run, const std::string& note) {
    if (!o.wants(variant)) return;
    const bench::child_times t = bench::measure_in_children(o.repeats, [&] { return same(run(), expected) ? 0 : 3; });
    rows.push_back({"csv_groupby", variant, static_cast<double>(rows_n) / t.wall_s, {{"wall_s", t.wall_s}, {"cpu_s", t.cpu_s}}, note});
  };
  measure("sequential", [&] { return sequential(path); }, "read(2) 1 MiB, memchr, from_chars, hash map");
  measure("procflow", [&] { return with_csv_rows(path, 2); }, "csv_rows -> reduce_by_key (fields by index), 2 replicas");
  measure("procflow_lines", [&] { return with_lines(path, 2); }, "lines -> reduce_by_key, 2 replicas");
  measure("procflow_lines_count_last", [&] { return with_lines(path, 2, false); },
          "lines -> filter -> reduce_by_key(replicas(2)): the count on the group-by only");
  bench::report(o, rows, "sequential");
  return 0;
}

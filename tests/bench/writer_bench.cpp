// Writing a CSV file from a pipeline (issue 9, writers): 2 M rows (i, i*i mod p, a short text)
// made by a map and written by pf::stages::csv_writer, against the same writer in a sequential
// loop. Each run writes the whole file (temporary name, fsync, rename); the output is checked
// (its byte size against the sequential file's). The file goes to $PROCFLOW_BENCH_DIR
// (default /tmp): on tmpfs the figures are CPU, on a disk they include its fsync.
//
//   writer_bench [--json] [--quick] [--repeats=N] [--only=a,b]
//
// Rows ("bench": "csv_writer"): sequential; procflow_caller (map(replicas(2)) -> the default sink in
// the calling process); procflow_own_process (the sink in one process of its own);
// procflow_replicas2 (the sink with replicas(2): fused into the map's processes, one file).
#include "bench_support.hpp"

#include <procflow/procflow.hpp>
#include <procflow/stages/writers.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <tuple>

namespace pf = procflow;

namespace {

using Row = std::tuple<std::int64_t, std::int64_t, std::string>;

Row make_row(std::int64_t i) { return {i, i * i % 1000003, "text " + std::to_string(i % 97)}; }

const std::vector<std::string> header{"i", "square", "text"};

std::uint64_t file_bytes(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? static_cast<std::uint64_t>(st.st_size) : 0;
}

}  // namespace

int main(int argc, char** argv) {
  const bench::Options o = bench::parse_options(argc, argv);
  const auto n = static_cast<std::int64_t>(2'000'000 * o.scale);
  const char* dir = std::getenv("PROCFLOW_BENCH_DIR");
  const std::string path = std::string(dir ? dir : "/tmp") + "/procflow_writer_bench." + std::to_string(::getpid()) + ".csv";

  auto sequential = [&] {
    pf::stages::csv_writer w(path, header);
    for (std::int64_t i = 0; i < n; ++i) w(make_row(i));
    w.finish();
    w.commit();
  };
  sequential();
  const std::uint64_t expected_bytes = file_bytes(path);

  auto rows_flow = [&] { return pf::pipeline("write").source("n", pf::iota<std::int64_t>(0, n)).map("row", make_row, pf::replicas(2)); };
  std::vector<bench::Row> rows;
  auto measure = [&](const std::string& variant, const std::function<void()>& run, const std::string& note) {
    if (!o.wants(variant)) return;
    const bench::child_times t = bench::measure_in_children(o.repeats, [&] {
      run();
      return file_bytes(path) == expected_bytes ? 0 : 3;
    });
    rows.push_back({"csv_writer", variant, static_cast<double>(n) / t.wall_s, {{"wall_s", t.wall_s}, {"cpu_s", t.cpu_s}}, note});
  };
  measure("sequential", sequential, "make the row, csv_writer, one process");
  measure("procflow_caller", [&] { rows_flow().sink("write", pf::stages::csv_writer(path, header)).run(); },
          "map(replicas(2)) -> sink in the calling process");
  measure("procflow_own_process", [&] { rows_flow().sink("write", pf::stages::csv_writer(path, header), pf::own_process).run(); },
          "map(replicas(2)) -> sink in one process of its own");
  measure("procflow_replicas2", [&] { rows_flow().sink("write", pf::stages::csv_writer(path, header), pf::replicas(2)).run(); },
          "map -> sink, replicas(2), fused: both append to one file");
  ::unlink(path.c_str());
  bench::report(o, rows, "sequential");
  return 0;
}

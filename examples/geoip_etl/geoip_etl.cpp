// geoip CSV rows -> (country, end - start + 1) -> IPv4 addresses per country
//
//   geoip_etl [INPUT] [--output FILE] [--replicas N] [--reject FILE]
//
// INPUT is Tor's IPv4-to-country table (`start,end,country` rows of integer addresses, `#` comments),
// a directory of such files, or `-`. The default is the copy cmake/fetch-data.sh unpacks from Debian's
// tor-geoipdb package (`apt-get download tor-geoipdb && dpkg-deb -x`, tor itself is not installed) into
// $PROCFLOW_DATA/tor-geoipdb/usr/share/tor/geoip.
//
// procflow::stages::csv_rows is a splittable source: each replica of `per country` claims byte ranges of
// the file and parses its rows; per-country sums are kept per replica and merged by the supervisor.
// A row with end < start, a non-number or a missing column stops the run with an error naming the
// file, line and column; with --reject FILE the run goes on past it (malformed CSV into FILE, rows
// the fold fails on skipped; both counted on stderr).
#include <procflow/procflow.hpp>
#include <procflow/stages/csv.hpp>

#include "example_cli.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace pf = procflow;

namespace {

int run(const example::options& o) {
  pf::stages::csv_options csv;
  csv.header = false;
  csv.comment = '#';
  csv.columns = {"start", "end", "country"};
  csv.reject_file = o.reject;

  // --reject: the whole pipeline under pf::skip (the reader sets malformed rows aside, the fold
  // skips a row it throws on).
  const auto pipeline = o.reject.empty() ? pf::pipeline("geoip_etl", example::profile(o))
                                         : pf::pipeline("geoip_etl", example::profile(o), pf::skip);
  const auto result =
      pipeline
          .source("rows", pf::stages::csv_rows(o.input, csv))
          .reduce_by_key(
              "per country", [](const pf::stages::csv_row& row) { return row.get<std::string_view>(2); }, std::uint64_t{0},
              [](std::uint64_t& addresses, const pf::stages::csv_row& row) {
                const auto start = row.get<std::uint64_t>(0), end = row.get<std::uint64_t>(1);
                if (end < start)
                  throw pf::error(fmt::format("line {}: end {} is before start {}", row.line(), end, start));
                addresses += end - start + 1;
              },
              [](std::uint64_t& a, std::uint64_t b) { a += b; }, pf::replicas(o.replicas))
          .run();

  std::vector<std::pair<std::string, std::uint64_t>> rows(result.value.begin(), result.value.end());
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second != b.second ? a.second > b.second : a.first < b.first; });
  std::uint64_t total = 0;
  for (const auto& [country, n] : rows) total += n;
  fmt::print("{} IPv4 addresses in {} countries; the most addresses:\n", total, rows.size());
  for (std::size_t i = 0; i < std::min<std::size_t>(10, rows.size()); ++i)
    fmt::print("  {:<3} {:>12}  {:5.2f}%\n", rows[i].first, rows[i].second, 100.0 * double(rows[i].second) / double(total));

  return example::finish(o, rows, [](const auto& row) { return std::vector<std::string>{row.first, std::to_string(row.second)}; },
                         result.report);
}

}  // namespace

int main(int argc, char** argv) {
  const std::string data = example::data_dir();
  return example::main_guard(
      {"geoip_etl", "geoip CSV rows -> (country, end - start + 1) -> IPv4 addresses per country, most first.",
       data + "/tor-geoipdb/usr/share/tor/geoip",
       "bash cmake/fetch-data.sh   (or: apt-get download tor-geoipdb && dpkg-deb -x tor-geoipdb_*.deb " + data +
           "/tor-geoipdb)",
       "country,addresses", "", "malformed CSV rows"},
      argc, argv, run);
}

// Packages index -> records -> per Section: packages, total and mean Installed-Size, largest package
//
//   packages_etl [INPUT] [--output FILE] [--replicas N] [--reject FILE]
//
// INPUT is a Debian `Packages` index (blank-line separated "Key: value" records), a directory of them,
// or `-`. The default is the index `apt-get update` left in /var/lib/apt/lists/, decompressed by
// cmake/fetch-data.sh (`apt-helper cat-file`) into $PROCFLOW_DATA/Packages.
//
// procflow::stages::records is a splittable source: every replica of the reduce claims byte ranges of
// the file (cut at blank lines) and parses its own records, so there is no reader process and no record
// crosses a ring; each replica keeps partial per-section totals, merged by the supervisor.
#include <procflow/procflow.hpp>
#include <procflow/stages/records.hpp>

#include "example_cli.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

namespace pf = procflow;

namespace {

// Per-section totals: packages, total Installed-Size (KiB), size of the largest package, its name.
// A tuple, so procflow's built-in codec carries it between processes.
using section_totals = std::tuple<std::uint64_t, std::uint64_t, std::uint64_t, std::string>;

std::uint64_t installed_size(const pf::stages::record& r) {
  const std::string_view text = r.get("Installed-Size");
  if (text.empty()) return 0;  // no Installed-Size: counts as 0
  std::uint64_t v = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc{} || end != text.data() + text.size())
    throw pf::error(fmt::format("record at line {} (Package '{}'): Installed-Size '{}' is not a whole number", r.line(),
                                r.get("Package"), text));
  return v;
}

// Whether (size, name) beats the section's current largest package: larger Installed-Size wins,
// ties go to the smaller name.
bool beats(const section_totals& t, std::uint64_t size, std::string_view name) {
  const auto& [packages, total, largest_size, largest] = t;
  return packages == 0 || size > largest_size || (size == largest_size && name < largest);
}

void add_package(section_totals& t, const pf::stages::record& r) {
  const std::uint64_t size = installed_size(r);
  const std::string_view name = r.get("Package");
  if (beats(t, size, name)) {
    std::get<2>(t) = size;
    std::get<3>(t) = name;
  }
  std::get<0>(t) += 1;
  std::get<1>(t) += size;
}

void merge(section_totals& into, const section_totals& other) {
  const auto& [packages, total, largest_size, largest] = other;
  if (packages == 0) return;
  if (beats(into, largest_size, largest)) {
    std::get<2>(into) = largest_size;
    std::get<3>(into) = largest;
  }
  std::get<0>(into) += packages;
  std::get<1>(into) += total;
}

int run(const example::options& o) {
  pf::stages::record_options fields;
  fields.fields = {"Package", "Section", "Installed-Size"};  // the only fields the job reads (the rest is not copied)
  fields.reject_file = o.reject;
  // --reject: the whole pipeline under pf::skip (the reader sets malformed records aside, the fold
  // skips a record it throws on).
  const auto pipeline = o.reject.empty() ? pf::pipeline("packages_etl", example::profile(o))
                                         : pf::pipeline("packages_etl", example::profile(o), pf::skip);
  const auto result =
      pipeline
          .source("records", pf::stages::records(o.input, fields))
          .reduce_by_key(
              "per section",
              [](const pf::stages::record& r) {  // a view into the record: no string per record
                const std::string_view s = r.get("Section");
                return s.empty() ? std::string_view("unknown") : s;
              },
              section_totals{}, [](section_totals& t, const pf::stages::record& r) { add_package(t, r); },
              [](section_totals& into, const section_totals& other) { merge(into, other); }, pf::replicas(o.replicas))
          .run();

  std::vector<std::pair<std::string, section_totals>> rows(result.value.begin(), result.value.end());
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.first < b.first; });

  std::uint64_t packages = 0;
  for (const auto& [section, t] : rows) packages += std::get<0>(t);
  fmt::print("{} packages in {} sections; the largest sections by installed size:\n", packages, rows.size());
  auto by_size = rows;
  std::sort(by_size.begin(), by_size.end(), [](const auto& a, const auto& b) {
    return std::get<1>(a.second) != std::get<1>(b.second) ? std::get<1>(a.second) > std::get<1>(b.second) : a.first < b.first;
  });
  fmt::print("  {:<20} {:>8} {:>14} {:>10}  {}\n", "section", "packages", "installed KiB", "mean KiB", "largest package");
  for (std::size_t i = 0; i < std::min<std::size_t>(10, by_size.size()); ++i) {
    const auto& [section, t] = by_size[i];
    const auto& [n, total, size, largest] = t;
    fmt::print("  {:<20} {:>8} {:>14} {:>10.1f}  {}\n", section, n, total, double(total) / double(n), largest);
  }

  return example::finish(o, rows, [](const auto& row) {
    const auto& [section, t] = row;
    const auto& [n, total, size, largest] = t;
    return std::vector<std::string>{section, std::to_string(n), std::to_string(total),
                                    fmt::format("{:.2f}", double(total) / double(n)), largest};
  }, result.report);
}

}  // namespace

int main(int argc, char** argv) {
  const std::string data = example::data_dir();
  return example::main_guard(
      {"packages_etl",
       "Packages index -> records -> per Section: package count, total and mean Installed-Size, largest package.",
       data + "/Packages",
       "bash cmake/fetch-data.sh   (or: /usr/lib/apt/apt-helper cat-file /var/lib/apt/lists/*_Packages.lz4 > " + data +
           "/Packages)",
       "section,packages,total_installed_size,mean_installed_size,largest_package", "", "malformed records"},
      argc, argv, run);
}

// The command-line convention every procflow example follows, in one place.
//
//   <example> [INPUT] [--output FILE] [--replicas N] [--report-json FILE] [--trace FILE] [--html FILE]
//             [--progress | --no-progress] [--help]
//
//   INPUT         a file, a directory or `-` (stdin); default: the real data set's usual place
//                 (under $PROCFLOW_DATA, default /var/tmp/procflow-data, filled by cmake/fetch-data.sh)
//   --output FILE the full result as CSV with a header (written to FILE.tmp-* and renamed when complete)
//   --replicas N  processes per parallel stage (default: the number of cores)
//   --report-json FILE, --trace FILE, --html FILE   the run's profile as JSON, a Perfetto timeline,
//                 an HTML page; --progress / --no-progress: the live progress line on stderr (default:
//                 on when stderr is a terminal)
//   --reject FILE (examples that read rows or records) go on past bad input: the pipeline runs under
//                 pf::skip, the reader's malformed rows or records go to FILE (csv_options /
//                 record_options::reject_file), items a
//                 stage fails on are skipped; both are counted on stderr and in the report
//
// Exit status: 0 success; 1 pipeline error (one line on stderr naming the stage and the cause);
// 2 bad usage or missing default data; 130 / 143 when interrupted by SIGINT / SIGTERM: run() stops and
// reaps every replica and throws procflow::interrupted, main prints one line and exits 128 + signal
// (an unfinished --output is never renamed into place; a second Ctrl-C ends the program at once).
// The per-stage profile report goes to stderr.
#pragma once

#include <procflow/error.hpp>
#include <procflow/profile.hpp>
#include <procflow/report.hpp>

#include <fmt/core.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <functional>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace example {

// Bad command line: main() prints it with the usage hint and exits 2.
struct usage_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct options {
  std::string input;     // the positional argument, or the default data set
  std::string output;    // --output FILE, empty when not given
  std::uint32_t replicas = std::max(1u, std::thread::hardware_concurrency());
  bool input_given = false;
  std::string output_columns;  // the --output header (description::output_columns)
  std::string report_json;  // --report-json FILE
  std::string trace;        // --trace FILE
  std::string html;         // --html FILE
  bool progress = true;     // --progress / --no-progress (the line shows only on a terminal)
  std::string reject;       // --reject FILE (examples whose description names what they reject)
};

// The directory the data sets live in: $PROCFLOW_DATA, else /var/tmp/procflow-data.
inline std::string data_dir() {
  const char* env = std::getenv("PROCFLOW_DATA");
  return env && *env ? std::string(env) : std::string("/var/tmp/procflow-data");
}

// Everything an example states about itself, for --help and error messages.
struct description {
  std::string name;           // binary name
  std::string summary;        // the dataflow line and one sentence
  std::string default_input;  // full path of the real data set; empty: the example takes no input
  std::string how_to_get;     // what to run when the default input is missing
  std::string output_columns; // the --output header
  std::string extra_help;     // further options, may be empty
  std::string rejects;        // what --reject FILE sets aside ("malformed rows"); empty: no --reject
};

inline void print_help(const description& d) {
  if (d.default_input.empty()) {
    fmt::print("usage: {0} [--output FILE] [--replicas N] [options] [--help]\n\n{1}\n\n", d.name, d.summary);
  } else {
    fmt::print(
        "usage: {0} [INPUT] [--output FILE] [--replicas N] [--help]\n\n{1}\n\n"
        "  INPUT          a file, a directory (every file under it) or - for stdin\n"
        "                 (default: {2})\n",
        d.name, d.summary, d.default_input);
  }
  fmt::print(
      "  --output FILE  write the full result as CSV: {0}\n"
      "  --replicas N   processes per parallel stage (default: the number of cores)\n"
      "{1}{2}"
      "  --report-json FILE  the run's profile report as JSON (lib/metrics/profiling.md)\n"
      "  --trace FILE   a Chrome / Perfetto timeline of the run (open in ui.perfetto.dev)\n"
      "  --html FILE    the profile report as one HTML page\n"
      "  --progress, --no-progress  the live progress line on stderr (default: on when it is a terminal)\n"
      "  --help         this text\n\n"
      "exit status: 0 ok, 1 pipeline error, 2 bad usage or missing data, 130/143 interrupted\n",
      d.output_columns, d.extra_help,
      d.rejects.empty() ? std::string()
                        : fmt::format("  --reject FILE  go on past bad input (pf::skip): {} into FILE as CSV\n"
                                      "                 (file,line,...,error,text), rows a stage fails on skipped and\n"
                                      "                 counted in the report (default: the first bad row stops the run)\n",
                                      d.rejects));
}

inline std::uint64_t parse_count(std::string_view flag, std::string_view text, std::uint64_t max) {
  std::uint64_t v = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc{} || end != text.data() + text.size() || v == 0 || v > max)
    throw usage_error(fmt::format("{} needs a whole number in 1..{}, got '{}'", flag, max, text));
  return v;
}

// Parses the common options. `extra(flag, next_value)` handles an example's own flags: it returns
// how many arguments it consumed (0 = not its flag). Returns nullopt after printing --help.
inline std::optional<options> parse(
    int argc, char** argv, const description& d,
    const std::function<int(std::string_view flag, const char* value)>& extra = {}) {
  options o;
  o.output_columns = d.output_columns;
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    const char* value = i + 1 < argc ? argv[i + 1] : nullptr;
    auto need_value = [&] {
      if (!value) throw usage_error(fmt::format("{} needs a value", a));
      ++i;
      return std::string(value);
    };
    if (a == "--help" || a == "-h") {
      print_help(d);
      return std::nullopt;
    } else if (a == "--output") {
      o.output = need_value();
      if (o.output.empty()) throw usage_error("--output needs a file name");
    } else if (a == "--replicas") {
      o.replicas = static_cast<std::uint32_t>(parse_count(a, need_value(), 1024));
    } else if (a == "--report-json" || a == "--trace" || a == "--html") {
      std::string& field = a == "--trace" ? o.trace : a == "--html" ? o.html : o.report_json;
      field = need_value();
      if (field.empty()) throw usage_error(fmt::format("{} needs a file name", a));
    } else if (a == "--reject" && !d.rejects.empty()) {
      o.reject = need_value();
      if (o.reject.empty()) throw usage_error("--reject needs a file name");
    } else if (a == "--progress" || a == "--no-progress") {
      o.progress = a == "--progress";
    } else if (int used = extra ? extra(a, value) : 0; used > 0) {
      i += used - 1;
    } else if (a.size() > 1 && a[0] == '-') {
      throw usage_error(fmt::format("unknown option '{}'", a));
    } else if (d.default_input.empty()) {
      throw usage_error(fmt::format("takes no input file, got '{}'", a));
    } else if (o.input_given) {
      throw usage_error(fmt::format("more than one input ('{}' and '{}')", o.input, a));
    } else {
      o.input = std::string(a);
      o.input_given = true;
    }
  }
  if (!o.input_given && !d.default_input.empty()) {
    o.input = d.default_input;
    std::error_code ec;
    if (!std::filesystem::exists(o.input, ec))
      throw usage_error(fmt::format("no input given and the default data set {} is missing; get it with:\n  {}",
                                    o.input, d.how_to_get));
  }
  return o;
}

// The profiling the command line asked for, as one pipeline option: pf::pipeline(name, example::profile(o)).
inline procflow::profile_options profile(const options& o) {
  procflow::profile_options p;
  p.progress = o.progress ? procflow::profile_options::progress_mode::terminal : procflow::profile_options::progress_mode::off;
  p.trace_path = o.trace;
  return p;
}

// Writes `text` to `path` (through a temporary renamed into place).
inline void write_text_file(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) throw procflow::system_error(errno, "cannot create '" + tmp + "'");
  const bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size();
  const int err = errno;
  if (std::fclose(f) != 0 || !ok) {
    std::remove(tmp.c_str());
    throw procflow::system_error(ok ? errno : err, "cannot write '" + tmp + "'");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) throw procflow::system_error(errno, "cannot rename '" + tmp + "' to '" + path + "'");
}

// The end of every example: the report table on stderr, and the files --report-json / --html asked for.
inline void finish_report(const options& o, const procflow::run_report& report) {
  fmt::print(stderr, "{}\n", report.to_string());
  if (!o.report_json.empty()) write_text_file(o.report_json, report.to_json());
  if (!o.html.empty()) write_text_file(o.html, report.to_html());
}

// One line: newlines in a message become "; ".
inline std::string one_line(std::string s) {
  for (std::size_t p; (p = s.find('\n')) != std::string::npos;) s.replace(p, 1, "; ");
  return s;
}

// --reject: what the run set aside, on stderr (nothing without --reject).
inline void print_set_aside(const options& o, const procflow::run_report& report) {
  if (o.reject.empty()) return;
  std::uint64_t malformed = 0;
  for (const auto& stage : report.stages)
    for (const auto& c : stage.counters)
      if (c.name == "rows rejected" || c.name == "records rejected") malformed += c.value;
  std::string first_malformed;  // readers keep their first rejects as dead letters too
  for (const auto& d : report.dead_letters)
    if (d.exception_type == "bad input") {
      first_malformed = "; the first: " + one_line(d.message);
      break;
    }
  fmt::print(stderr, "set aside: {} malformed in {}{}\n", malformed, o.reject, first_malformed);
  for (const auto& stage : report.stages) {
    if (stage.items_skipped == 0) continue;
    std::string first;
    for (const auto& d : report.dead_letters)
      if (d.stage == stage.name) {
        first = "; the first: " + d.message;
        break;
      }
    fmt::print(stderr, "set aside: {} items stage '{}' failed on{}\n", stage.items_skipped, stage.name, one_line(first));
  }
}

// One CSV field (RFC 4180: quoted when it holds a comma, a quote or a line break).
inline std::string csv_field(std::string_view s) {
  if (s.find_first_of(",\"\r\n") == std::string_view::npos) return std::string(s);
  std::string q = "\"";
  for (char c : s) {
    if (c == '"') q += '"';
    q += c;
  }
  return q + '"';
}

// Writes rows to `path` through "<path>.tmp-<random>", renamed into place only when every write and
// the close succeeded: a failed run never leaves a short file that looks complete.
class csv_file {
 public:
  csv_file(std::string path, const std::vector<std::string>& header) : path_(std::move(path)) {
    std::random_device rd;
    tmp_ = fmt::format("{}.tmp-{:08x}", path_, rd());
    file_ = std::fopen(tmp_.c_str(), "wb");
    if (!file_) throw procflow::system_error(errno, "cannot create '" + tmp_ + "'");
    row(header);
  }
  csv_file(const csv_file&) = delete;
  csv_file& operator=(const csv_file&) = delete;
  ~csv_file() {
    if (file_) {  // not committed: an exception is unwinding
      std::fclose(file_);
      std::remove(tmp_.c_str());
    }
  }

  void row(const std::vector<std::string>& fields) {
    std::string line;
    for (std::size_t i = 0; i < fields.size(); ++i) {
      if (i) line += ',';
      line += csv_field(fields[i]);
    }
    line += '\n';
    if (std::fwrite(line.data(), 1, line.size(), file_) != line.size())
      throw procflow::system_error(errno, "cannot write '" + tmp_ + "'");
  }

  void commit() {
    const bool ok = std::fflush(file_) == 0 && !std::ferror(file_);
    const int err = errno;
    const bool closed = std::fclose(file_) == 0;
    file_ = nullptr;
    if (!ok || !closed) {
      std::remove(tmp_.c_str());
      throw procflow::system_error(ok ? errno : err, "cannot write '" + tmp_ + "'");
    }
    if (std::rename(tmp_.c_str(), path_.c_str()) != 0) {
      const int e = errno;
      std::remove(tmp_.c_str());
      throw procflow::system_error(e, "cannot rename '" + tmp_ + "' to '" + path_ + "'");
    }
  }

 private:
  std::string path_;
  std::string tmp_;
  std::FILE* file_ = nullptr;
};

// The tail every example shares: with --output, one CSV row per element of `rows` (to_fields(element)
// gives its fields) under the header o.output_columns, renamed into place only when complete; then the
// profile report on stderr and the files --report-json / --html asked for. Returns the exit status (0).
template <class Rows, class ToFields>
int finish(const options& o, const Rows& rows, ToFields&& to_fields, const procflow::run_report& report) {
  if (!o.output.empty()) {
    std::vector<std::string> header;
    for (std::size_t from = 0;;) {
      const std::size_t comma = o.output_columns.find(',', from);
      header.push_back(o.output_columns.substr(from, comma == std::string::npos ? std::string::npos : comma - from));
      if (comma == std::string::npos) break;
      from = comma + 1;
    }
    csv_file out(o.output, header);
    for (const auto& r : rows) out.row(to_fields(r));
    out.commit();
  }
  print_set_aside(o, report);
  finish_report(o, report);
  return 0;
}

// Runs an example's body with the exit-status convention.
inline int main_guard(const description& d, int argc, char** argv, const std::function<int(const options&)>& body,
                      const std::function<int(std::string_view flag, const char* value)>& extra = {}) {
  std::optional<options> o;
  try {
    o = parse(argc, argv, d, extra);
    if (!o) return 0;
  } catch (const usage_error& e) {
    fmt::print(stderr, "{}: {}\n(see {} --help)\n", d.name, e.what(), d.name);
    return 2;
  }
  try {
    return body(*o);
  } catch (const usage_error& e) {
    fmt::print(stderr, "{}: {}\n", d.name, one_line(e.what()));
    return 2;
  } catch (const procflow::interrupted& e) {
    fmt::print(stderr, "{}: interrupted ({})\n", d.name, e.signal() != 0 ? strsignal(e.signal()) : "cancelled");
    return e.signal() != 0 ? 128 + e.signal() : 1;
  } catch (const procflow::stage_error& e) {
    fmt::print(stderr, "{}: {}\n", d.name, one_line(e.what()));
    return 1;
  } catch (const std::exception& e) {
    fmt::print(stderr, "{}: {}\n", d.name, one_line(e.what()));
    return 1;
  }
}

}  // namespace example

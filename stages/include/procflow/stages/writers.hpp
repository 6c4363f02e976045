// procflow::stages writers — CSV and JSON-lines file sinks that never leave a half-written file
// that looks complete.
//
//   .sink("write", pf::stages::csv_writer("out.csv", {"word", "count"}))
//   .sink("write", pf::stages::jsonl_writer("out.jsonl"))
//
// A writer writes "<path>.tmp-<random>" next to `path` and renames it to `path` in finish(),
// which the pipeline calls once at the end of a successful stream (a single-replica sink runs in
// the caller's process, so that is after every replica succeeded). Every write, the flush and
// the close are checked: a full disk or an I/O error is a procflow::system_error naming the
// file (the run fails with a stage_error naming the sink), and the temporary file is removed.
// A failed run never renames; the temporary file is removed when the writer is destroyed or the
// run fails in the caller's process (a sink replica killed by a signal can leave its .tmp- file).
// A writer needs one process: a sink with replicas(n > 1) or replicas(auto_scale) is refused when
// declared (every replica would write the whole file over the others'); own_process is fine.
// Under procflow::mpi with several ranks, the sink runs on every rank over that rank's items and
// each rank writes "<path>.rank<R>" (R its rank in MPI_COMM_WORLD), never `path`: ranks sharing
// a file system would otherwise rename onto one another's output, keeping one rank's rows.
//
// csv_writer accepts std::vector<std::string>, std::pair and std::tuple of fields: strings,
// integers, floating point (shortest round-trip form), bool. Fields are quoted (RFC 4180) when
// they hold the delimiter, a quote, CR or LF. jsonl_writer accepts
// std::vector<std::pair<std::string, std::string>> (key, value) and stages::record, and writes one
// JSON object of string values per line: '"', '\\' and control characters are escaped, every other
// byte (UTF-8 included) is written as is.
#pragma once

#include <procflow/stages/records.hpp>

#include <charconv>
#include <concepts>
#include <memory>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace procflow::stages {

namespace detail {

// A file written through a temporary name and renamed on commit (library; one per writer).
class file_writer {
 public:
  explicit file_writer(const std::string& path);  // this rank's file for it (detail/job_place.hpp)
  ~file_writer();  // not committed: removes the temporary file
  file_writer(const file_writer&) = delete;
  file_writer& operator=(const file_writer&) = delete;

  // Appends bytes (buffered); throws procflow::system_error naming the file on a failed write.
  void write(std::string_view bytes);
  // Flushes, closes (checked) and renames to the final path. Idempotent.
  void commit();
  // Removes the temporary file (a failed run). Never throws.
  void abandon() noexcept;
  const std::string& path() const noexcept { return path_; }
  const std::string& temp_path() const noexcept { return temp_; }

 private:
  void open();
  void flush_buffer();

  std::string path_;
  std::string temp_;
  std::string buffer_;
  int fd_ = -1;
  bool done_ = false;
};

void append_csv_field(std::string& line, std::string_view field, char delimiter);
void append_json_string(std::string& out, std::string_view text);

template <class T>
void append_csv_value(std::string& line, const T& value, char delimiter) {
  using U = std::decay_t<T>;
  if constexpr (std::is_convertible_v<const U&, std::string_view>) {
    append_csv_field(line, std::string_view(value), delimiter);
  } else if constexpr (std::is_same_v<U, bool>) {
    line += value ? "true" : "false";
  } else if constexpr (std::is_same_v<U, char>) {
    append_csv_field(line, std::string_view(&value, 1), delimiter);
  } else if constexpr (std::is_arithmetic_v<U>) {
    char buf[64];
    const auto r = std::to_chars(buf, buf + sizeof buf, value);
    line.append(buf, r.ptr);
  } else {
    static_assert(std::is_arithmetic_v<U>, "csv_writer: a field must be a string, a number or bool");
  }
}

}  // namespace detail

// A sink callable writing CSV rows (see above). Copies share one file.
class csv_writer {
 public:
  static constexpr bool writes_one_file = true;  // one process only (flow::sink refuses replicas)
  csv_writer(std::string path, std::vector<std::string> header, char delimiter = ',');

  void operator()(const std::vector<std::string>& fields);
  template <class A, class B>
  void operator()(const std::pair<A, B>& p) {
    std::string& line = begin_line();
    detail::append_csv_value(line, p.first, state_->delimiter);
    line += state_->delimiter;
    detail::append_csv_value(line, p.second, state_->delimiter);
    end_line();
  }
  template <class... Ts>
  void operator()(const std::tuple<Ts...>& t) {
    std::string& line = begin_line();
    const char d = state_->delimiter;
    std::apply([&](const Ts&... v) {
      std::size_t i = 0;
      ((i++ ? void(line += d) : void(), detail::append_csv_value(line, v, d)), ...);
    }, t);
    end_line();
  }
  // End of a successful stream: header (if nothing was written), flush, close, rename.
  void finish();
  // A failed run: removes the temporary file.
  void abort() noexcept;

 private:
  struct state {
    std::string path;
    std::vector<std::string> header;
    char delimiter;
    std::unique_ptr<detail::file_writer> file;
    std::string line;
  };
  std::string& begin_line();
  void end_line();

  std::shared_ptr<state> state_;
};

// A sink callable writing one JSON object per line (see above). Copies share one file.
class jsonl_writer {
 public:
  static constexpr bool writes_one_file = true;
  explicit jsonl_writer(std::string path);

  void operator()(const std::vector<std::pair<std::string, std::string>>& fields);
  void operator()(const record& r);
  void finish();
  void abort() noexcept;

 private:
  struct state {
    std::string path;
    std::unique_ptr<detail::file_writer> file;
    std::string line;
  };
  std::shared_ptr<state> state_;
};

}  // namespace procflow::stages

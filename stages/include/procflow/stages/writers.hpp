// procflow::stages writers — CSV and JSON-lines file sinks that never leave a half-written file
// that looks complete.
//
//   .sink("write", pf::stages::csv_writer("out.csv", {"word", "count"}))
//   .sink("write", pf::stages::jsonl_writer("out.jsonl"))
//
// A writer's copies — the declared one, and every replica's (processes or threads) — append whole
// lines to one temporary file "<path>.tmp-<random>" next to `path` (the random part is chosen when
// the writer is constructed; the header, if any, is always its first line). The pipeline calls, in
// this order:
//   finish()  once per copy that wrote, at its end of stream: its last lines written, its file closed;
//   commit()  once, in the process that called run(), after every replica ended well: the file
//             flushed to disk (fsync) and renamed to `path` — the output appears whole or not at all;
//   rollback() there instead when the run failed: the temporary file removed.
// abort() drops a copy's unwritten lines (a replica that failed). So a sink may have any number of
// replicas (replicas(n), auto_scale, own_process, threads) and the output holds every item once, in
// one file; a sink replica killed under pf::restart leaves its written lines in place, and the lines
// of every batch it finished are written before that batch is released (flush(), which the pipeline
// calls per batch under restart): its replacement appends the rest (at least once, as restart says).
// Lines are written with O_APPEND in whole-line pieces of about 64 KiB, so the copies' lines never
// mix within a line on a local file system; with one replica the file holds the lines in the order
// the sink got them (pf::ordered: source order), with several in the order the replicas wrote
// their pieces. Every write, the flush, the close and the rename are checked: a full disk or an I/O error is a
// procflow::system_error naming the file (the run fails with a stage_error naming the sink). A file
// a writer writes is its own: two writers (or two runs at once) must not share a path. A writer made
// by a pf::per_replica factory is refused (each replica's would have its own temporary file), and a
// callable wrapping a writer must pass finish(), flush(), commit(), abort() and rollback() on.
// Used outside a pipeline: call it per row, then finish() and commit().
// Under procflow::mpi with several ranks, the sink runs on every rank over that rank's items and
// each rank writes "<path>.rank<R>" (R its rank in MPI_COMM_WORLD), never `path`, even when the
// writer was constructed before procflow::mpi::environment: ranks sharing a file system would
// otherwise rename onto one another's output, keeping one rank's rows.
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

// The file every copy of one writer appends to (library; shared by the copies): its final and
// temporary names and its first line. The temporary file is created with the header in place
// (written under a private name, then hard-linked to the shared one) the first time any copy needs
// it, so no copy's lines can come before the header.
class output_file {
 public:
  output_file(std::string path, std::string header);
  output_file(const output_file&) = delete;
  output_file& operator=(const output_file&) = delete;

  // A descriptor appending to the temporary file (created with its header if missing).
  int open_for_append() const;
  // Creates the file if nothing was written, flushes it to disk and renames it to path().
  void commit() const;
  // Removes the temporary file. Never throws.
  void rollback() const noexcept;
  // The final and temporary names of this rank's file (detail/job_place.hpp): the rank applies
  // when a copy writes, not when the writer is constructed (that may be before
  // procflow::mpi::environment).
  std::string path() const;
  std::string temp_path() const;

 private:
  // open_for_append() with this rank's names, built once by the caller.
  int open_for_append(const std::string& temp, const std::string& final_path) const;
  void create(const std::string& temp, const std::string& path) const;
  std::string path_;    // as given
  std::string suffix_;  // of the temporary name: random, chosen at construction
  std::string header_;
};

// One copy's lines not yet written (library): written as whole lines, with O_APPEND, when 64 KiB
// gather, at flush() and at close(). A copy of a part is empty (the copy writes its own lines).
class output_part {
 public:
  output_part() = default;
  output_part(const output_part&) noexcept {}
  output_part(output_part&& o) noexcept : buffer_(std::move(o.buffer_)), fd_(std::exchange(o.fd_, -1)) {}
  output_part& operator=(const output_part&) = delete;
  ~output_part() { drop(); }

  // Appends `line` (one or more whole lines); throws procflow::system_error naming the file.
  void append(const output_file& file, std::string_view line);
  void flush(const output_file& file);
  void close(const output_file& file);  // flush, then close (checked)
  void drop() noexcept;                  // forget what was not written; close

 private:
  std::string buffer_;
  int fd_ = -1;
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

// The protocol both writers share (see above): the file, shared by the copies, and this copy's
// lines.
class file_sink {
 public:
  void finish();
  void flush();
  void abort() noexcept;
  void commit();
  void rollback() noexcept;

 protected:
  file_sink(const std::string& path, std::string header);
  void write_line(std::string_view line) { part_.append(*file_, line); }
  std::string line_;  // the line being built (a scratch buffer; copies start empty)

 private:
  std::shared_ptr<const detail::output_file> file_;
  detail::output_part part_;
};

// A sink callable writing CSV rows (see above).
class csv_writer : public file_sink {
 public:
  csv_writer(const std::string& path, const std::vector<std::string>& header, char delimiter = ',');

  void operator()(const std::vector<std::string>& fields);
  template <class A, class B>
  void operator()(const std::pair<A, B>& p) {
    line_.clear();
    detail::append_csv_value(line_, p.first, delimiter_);
    line_ += delimiter_;
    detail::append_csv_value(line_, p.second, delimiter_);
    end_line();
  }
  template <class... Ts>
  void operator()(const std::tuple<Ts...>& t) {
    line_.clear();
    const char d = delimiter_;
    std::apply([&](const Ts&... v) {
      std::size_t i = 0;
      ((i++ ? void(line_ += d) : void(), detail::append_csv_value(line_, v, d)), ...);
    }, t);
    end_line();
  }

 private:
  void end_line() {
    line_ += '\n';
    write_line(line_);
  }
  char delimiter_;
};

// A sink callable writing one JSON object per line (see above).
class jsonl_writer : public file_sink {
 public:
  explicit jsonl_writer(const std::string& path);

  void operator()(const std::vector<std::pair<std::string, std::string>>& fields);
  void operator()(const record& r);
};

}  // namespace procflow::stages

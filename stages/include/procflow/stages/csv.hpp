// procflow::stages::csv_rows — the rows of CSV files (RFC 4180), as a pipeline source.
//
//   pf::pipeline("p").source("rows", pf::stages::csv_rows("flights.csv"))
//       .map("delay", [](const pf::stages::csv_row& r) { return r.get<double>("dep_delay"); }) ...
//
// Format: fields separated by `delimiter`; a field may be quoted with '"' and then hold
// delimiters, '""' (one quote) and — with `multiline` — line breaks. Rows end at LF or CRLF.
// Empty lines, and lines starting with `comment` (when set), are skipped. The first row is the
// header (column names) unless `header == false`; it is read when csv_rows() is declared, so
// every replica knows the names. With several files (a directory, a glob) every file starts
// with the same header.
//
// Splitting. A quoted field may contain a line break, so a byte offset cannot tell whether it is
// inside a field without reading the file from its start. This reader therefore splits plain
// files at line breaks (blocks of `block_bytes`, like lines()) ONLY when `multiline == false`
// (the default), and checks the assumption as it goes: the block where a row starts parses the
// whole row, so a quoted field that does span lines is always met by a reader and the run fails
// with "file:line:column: quoted field spans lines ... set csv_options::multiline" — never a
// silently mis-split row. With `multiline = true` the files are read sequentially in a source
// process (as are stdin and .gz files) and line breaks inside quotes are data.
//
// Cost. A row on one line whose quotes, if any, enclose whole fields without "" inside is found
// and split in one pass, 16 bytes at a time (SSE2; 8 elsewhere), and copied once without those
// quotes (the row holds its text and one offset per field); any other row (a "" escape, a quote
// inside an unquoted field, a quoted line break) is parsed again by the general parser. Typed
// access (get<T>) parses only the fields asked for.
//
// Errors (procflow::error, which a pipeline reports as a stage_error) name "file:line:column",
// where line is the file's physical line where the row starts and column is the 1-based field
// number; typed access adds the column name and the text:
//   flights.csv:1042:7 (dep_delay): cannot read "abc" as a number
// Malformed input (an unterminated quote, text after a closing quote, a row longer than
// `max_row_bytes`) is an error of the same form, never a crash.
//
// Bad rows under pf::skip. When the reading stage skips failing items — pf::skip (or
// retry(..., pf::skip)) on the source, or on the pipeline — a malformed row is set aside instead
// of failing the run: the reader counts it in the stage's counter "rows rejected" (counter.hpp;
// in the run report and its table) and goes on at the next physical line. With `reject_file`
// set, each rejected row is also appended to that file as a CSV record
//     file,line,column,error,text
// line: the physical line where the row starts; column: the 1-based field where the error was
// found, as in the error message; text: that line without its line break, cut at
// reject_text_bytes. One write(2) per record with O_APPEND, so replicas append whole records, in
// no particular order. Each run creates (truncates) the file with that header as it starts (a
// file that cannot be made fails the run, naming it). A field that parses as CSV but not as the
// type asked (get<double> of "abc") is no reader error: it fails in the stage that asks, under
// that stage's policy (a skipped item keeps its row and message in the run's dead letters,
// dead_letter.hpp).
#pragma once

#include <procflow/codec.hpp>
#include <procflow/error.hpp>
#include <procflow/sources.hpp>
#include <procflow/stages/input.hpp>

#include <charconv>
#include <concepts>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace procflow::stages {

struct csv_options {
  char delimiter = ',';
  bool header = true;
  char comment = '\0';                // lines starting with it are skipped, e.g. '#'
  std::vector<std::string> columns;   // names when header == false (optional)
  bool multiline = false;             // quoted fields may hold line breaks (reads sequentially)
  std::size_t max_row_bytes = std::size_t{64} << 20;
  std::uint64_t block_bytes = default_block_bytes;
  std::string reject_file;            // rows set aside under pf::skip, as CSV (see above); "" = none
};

class csv_row;

namespace detail {
// Column names of one csv_rows() declaration, by id (process-wide, filled before fork).
std::uint32_t register_columns(std::vector<std::string> names);
const std::vector<std::string>& columns(std::uint32_t id);
class csv_stream;
struct csv_parser;  // the row parser (library)
}  // namespace detail

class csv_row {
 public:
  csv_row() = default;

  std::size_t size() const noexcept { return ends_.size(); }
  // Field i's text (unquoted), or "" past the end.
  std::string_view operator[](std::size_t i) const noexcept {
    if (i >= ends_.size()) return {};
    const std::uint32_t begin = i == 0 ? 0 : ends_[i - 1] + 1;
    return std::string_view(text_).substr(begin, ends_[i] - begin);
  }
  // Field `index` as T: std::string, std::string_view (valid while the row lives), integers,
  // floating point, bool ("true"/"false"/"1"/"0"). Throws procflow::error naming
  // file:line:column and the text when the field is missing or does not parse.
  template <class T>
  T get(std::size_t index) const {
    if (index >= ends_.size()) fail(index, "the row has only " + std::to_string(ends_.size()) + " fields");
    return convert<T>(index, (*this)[index]);
  }
  // Field by column name (the header's, or csv_options::columns).
  template <class T>
  T get(std::string_view column) const {
    return get<T>(index_of(column));
  }
  // Index of a column name; throws procflow::error naming the file when there is none.
  std::size_t index_of(std::string_view column) const;
  const std::vector<std::string>& column_names() const;

  // Physical line of the file where the row starts (1-based). For a split file it is counted on
  // first use (cheap for an error message; avoid calling it for every row of a large file).
  std::uint64_t line() const;
  const std::string& file() const;
  std::uint64_t offset() const noexcept { return offset_; }

  // Building (readers, tests).
  void clear() noexcept {
    text_.clear();
    ends_.clear();
  }
  // Room for `fields` field offsets (a reader sizes a fresh row for its columns once).
  void reserve_fields(std::size_t fields) { ends_.reserve(fields); }
  void add_field(std::string_view text) {
    if (!ends_.empty()) text_.push_back(',');  // one separator byte between fields
    text_.append(text);
    ends_.push_back(static_cast<std::uint32_t>(text_.size()));
  }
  // Replaces the fields with those of `text` split at every `separator` (no quoting): one copy
  // of the text, one offset per field.
  void assign_fields(std::string_view text, char separator);
  void set_origin(std::uint32_t file_id, std::uint32_t columns_id, std::uint64_t offset, std::uint64_t line) noexcept {
    file_ = file_id;
    columns_ = columns_id;
    offset_ = offset;
    line_ = line;
  }

  // Same fields (the separator bytes between them do not matter).
  friend bool operator==(const csv_row& a, const csv_row& b) noexcept {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i)
      if (a[i] != b[i]) return false;
    return true;
  }

 private:
  friend struct procflow::codec<csv_row>;
  friend class detail::csv_stream;
  friend struct detail::csv_parser;

  template <class T>
  T convert(std::size_t index, std::string_view s) const {
    using U = std::remove_cv_t<T>;
    if constexpr (std::is_same_v<U, std::string>) {
      return std::string(s);
    } else if constexpr (std::is_same_v<U, std::string_view>) {
      return s;
    } else if constexpr (std::is_same_v<U, bool>) {
      if (s == "true" || s == "1") return true;
      if (s == "false" || s == "0") return false;
      fail(index, "cannot read \"" + std::string(s) + "\" as a bool");
    } else if constexpr (std::is_arithmetic_v<U>) {
      U value{};
      std::string_view t = s;
      while (!t.empty() && (t.front() == ' ' || t.front() == '\t')) t.remove_prefix(1);
      while (!t.empty() && (t.back() == ' ' || t.back() == '\t')) t.remove_suffix(1);
      if (!t.empty() && t.front() == '+') t.remove_prefix(1);
      const auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), value);
      if (t.empty() || ec != std::errc{} || end != t.data() + t.size())
        fail(index, "cannot read \"" + std::string(s) + "\" as " +
                        (std::is_floating_point_v<U> ? "a number" : ec == std::errc::result_out_of_range ? "an integer of this size" : "an integer"));
      return value;
    } else {
      static_assert(std::is_arithmetic_v<U>, "csv_row::get<T>: T must be std::string, std::string_view, bool or arithmetic");
    }
  }
  [[noreturn]] void fail(std::size_t index, const std::string& what) const;

  // The fields' text, unquoted, with one separator byte between two fields (for a row without
  // quotes: the line itself, copied once); field i is [ends_[i-1] + 1, ends_[i]) of text_.
  std::string text_;
  std::vector<std::uint32_t> ends_;  // end of field i in text_
  std::uint32_t file_ = 0;           // detail::file_name id
  std::uint32_t columns_ = 0;        // detail::columns id
  std::uint64_t offset_ = 0;         // byte offset of the row in its file
  mutable std::uint64_t line_ = 0;   // 0: not known yet (split files count on demand)
};

// The source behind csv_rows() (a procflow::custom_source).
class csv_source {
 public:
  using item_type = csv_row;

  csv_source(std::string input, csv_options options);

  bool splittable() const noexcept { return !options_.multiline && input_->splittable(); }
  std::uint64_t size() const noexcept { return input_->blocks(); }
  std::uint64_t preferred_chunk() const noexcept { return 1; }
  bool units_are_items() const noexcept { return false; }
  std::size_t fill(std::uint64_t first, std::uint64_t last, procflow::detail::batch_buffer<csv_row>& out) const;
  std::optional<csv_row> next();
  // At the start of each run (procflow::custom_source): makes this rank's reject file.
  void begin_run() const;

  const std::vector<std::string>& columns() const { return detail::columns(columns_); }

 private:
  std::shared_ptr<const detail::input_set> input_;
  csv_options options_;
  std::uint32_t columns_ = 0;
  std::shared_ptr<detail::csv_stream> stream_;
};

inline csv_source csv_rows(std::string input, csv_options options = {}) {
  return csv_source(std::move(input), std::move(options));
}

}  // namespace procflow::stages

template <>
struct procflow::codec<procflow::stages::csv_row> {
  using row = procflow::stages::csv_row;
  static std::size_t encoded_size(const row& r) noexcept {
    return codec<std::string>::encoded_size(r.text_) + codec<std::vector<std::uint32_t>>::encoded_size(r.ends_) + 8 + 8 + 8;
  }
  static std::byte* encode(const row& r, std::byte* out) noexcept {
    out = codec<std::string>::encode(r.text_, out);
    out = codec<std::vector<std::uint32_t>>::encode(r.ends_, out);
    out = codec<std::uint32_t>::encode(r.file_, out);
    out = codec<std::uint32_t>::encode(r.columns_, out);
    out = codec<std::uint64_t>::encode(r.offset_, out);
    return codec<std::uint64_t>::encode(r.line_, out);
  }
  static row decode(decoder& in) {
    row r;
    r.text_ = codec<std::string>::decode(in);
    r.ends_ = codec<std::vector<std::uint32_t>>::decode(in);
    r.file_ = codec<std::uint32_t>::decode(in);
    r.columns_ = codec<std::uint32_t>::decode(in);
    r.offset_ = codec<std::uint64_t>::decode(in);
    r.line_ = codec<std::uint64_t>::decode(in);
    for (std::size_t i = 0; i < r.ends_.size(); ++i)  // field i is [ends_[i-1] + 1, ends_[i])
      if (r.ends_[i] > r.text_.size() || (i > 0 && r.ends_[i] < std::uint64_t{r.ends_[i - 1]} + 1))
        throw codec_error("codec: csv_row field bounds out of range");
    return r;
  }
};

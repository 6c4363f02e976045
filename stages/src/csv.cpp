#include "reader.hpp"
#include "scan.hpp"

#include <procflow/error.hpp>
#include <procflow/stages/csv.hpp>

#include <unistd.h>

#include <deque>
#include <memory>
#include <mutex>

namespace procflow::stages {
namespace detail {

namespace {

std::mutex column_mutex;
std::deque<std::vector<std::string>>& column_table() {
  static std::deque<std::vector<std::string>> table{std::vector<std::string>{}};  // id 0: no names
  return table;
}

enum class Parsed { row, skipped, more, end };

// Parses the row at the start of `w` into `row` (fields only). `eof`: no bytes follow `w`.
// Returns the bytes used in `used`. Throws procflow::error through `fail(field, message)`.
template <class Fail>
Parsed parse_row(std::string_view w, bool eof, const csv_options& o, csv_row& row, std::size_t& used, std::uint64_t& newlines, Fail&& fail) {
  const std::size_t n = w.size();
  if (n == 0) return eof ? Parsed::end : Parsed::more;
  // Empty lines and comment lines.
  if (w[0] == '\n' || (w[0] == '\r' && n > 1 && w[1] == '\n') || (o.comment != '\0' && w[0] == o.comment) ||
      (w[0] == '\r' && n == 1)) {
    const void* nl = std::memchr(w.data(), '\n', n);
    if (!nl) {
      if (!eof) return Parsed::more;
      used = n;
      return Parsed::skipped;
    }
    used = static_cast<std::size_t>(static_cast<const char*>(nl) - w.data()) + 1;
    newlines = 1;
    return Parsed::skipped;
  }
  row.clear();
  newlines = 0;
  const char d = o.delimiter;
  std::size_t i = 0;
  std::string field;
  for (;;) {
    if (i < n && w[i] == '"') {  // quoted field
      const std::size_t field_start = i;
      ++i;
      field.clear();
      for (;;) {
        const void* q = std::memchr(w.data() + i, '"', n - i);
        const std::size_t qi = q ? static_cast<std::size_t>(static_cast<const char*>(q) - w.data()) : n;
        const std::string_view piece = w.substr(i, qi - i);
        if (const std::size_t nl = piece.find('\n'); nl != std::string_view::npos) {
          if (!o.multiline)
            fail(row.size(), newlines, "quoted field spans lines (this reader splits files at line breaks: set csv_options::multiline = true to read such files)");
          newlines += static_cast<std::uint64_t>(std::count(piece.begin(), piece.end(), '\n'));
        }
        if (!q) {
          if (!eof) return Parsed::more;
          (void)field_start;
          fail(row.size(), 0, "unterminated quoted field");
        }
        field.append(piece);
        i = qi + 1;
        if (i < n && w[i] == '"') {
          field.push_back('"');
          ++i;
          continue;
        }
        if (i == n && !eof) return Parsed::more;
        break;
      }
      row.add_field(field);
      if (i == n) {  // eof right after the closing quote
        used = n;
        return Parsed::row;
      }
      const char c = w[i];
      if (c == d) {
        ++i;
        if (i == n && eof) {  // a trailing delimiter: one more empty field
          row.add_field({});
          used = n;
          return Parsed::row;
        }
        continue;
      }
      if (c == '\n') {
        used = i + 1;
        return Parsed::row;
      }
      if (c == '\r') {
        if (i + 1 == n) {
          if (!eof) return Parsed::more;
          used = n;
          return Parsed::row;
        }
        if (w[i + 1] == '\n') {
          used = i + 2;
          return Parsed::row;
        }
      }
      fail(row.size() - 1, newlines, "unexpected character after a closing quote");
    }
    // Unquoted field: up to the delimiter or the end of the line.
    std::size_t j = i;
    while (j < n && w[j] != d && w[j] != '\n') ++j;
    if (j == n && !eof) return Parsed::more;
    std::string_view text = w.substr(i, j - i);
    if (j == n || w[j] == '\n') {
      row.add_field(strip_cr(text));
      used = j == n ? n : j + 1;
      return Parsed::row;
    }
    row.add_field(text);
    i = j + 1;
    if (i == n && eof) {
      row.add_field({});
      used = n;
      return Parsed::row;
    }
  }
}

}  // namespace

std::uint32_t register_columns(std::vector<std::string> names) {
  std::lock_guard lock(column_mutex);
  auto& t = column_table();
  t.push_back(std::move(names));
  return static_cast<std::uint32_t>(t.size() - 1);
}

const std::vector<std::string>& columns(std::uint32_t id) {
  // No lock: names are registered when readers are declared, before run() forks and while no
  // other thread runs (the fork rule); lookups happen per row and must stay cheap.
  auto& t = column_table();
  return id < t.size() ? t[id] : t[0];
}

// Reads rows from one Reader: rows that start before `limit` (split blocks) or all of them.
class RowCursor {
 public:
  RowCursor(Reader& r, const csv_options& o, std::uint32_t columns_id, std::uint64_t limit, std::uint64_t line)
      : r_(r), o_(o), columns_(columns_id), limit_(limit), line_(line) {}

  // Next row into `row`; false at the end (of the block or the input).
  bool next(csv_row& row) {
    for (;;) {
      if (r_.offset() >= limit_) return false;
      std::size_t used = 0;
      std::uint64_t newlines = 0;
      const std::uint64_t start = r_.offset();
      const Parsed p = parse_row(r_.window(), r_.at_end(), o_, row, used, newlines,
                                 [&](std::size_t field, std::uint64_t, const std::string& what) { fail(start, field, what); });
      if (p == Parsed::more) {
        if (r_.window().size() > o_.max_row_bytes)
          fail(start, row.size(), "row longer than " + std::to_string(o_.max_row_bytes) + " bytes");
        r_.more(std::max<std::size_t>(std::size_t{1} << 12, r_.window().size()));
        continue;
      }
      if (p == Parsed::end) return false;
      const std::string_view text = r_.window().substr(0, used);
      const std::uint64_t line = line_;
      if (line_ != 0) line_ += static_cast<std::uint64_t>(std::count(text.begin(), text.end(), '\n'));
      r_.advance(used);
      if (p == Parsed::skipped) continue;
      row.set_origin(r_.file().id, columns_, start, line);
      return true;
    }
  }

 private:
  [[noreturn]] void fail(std::uint64_t start, std::size_t field, const std::string& what) {
    throw procflow::error(where(r_.file(), start, line_) + ":" + std::to_string(field + 1) + ": " + what);
  }

  Reader& r_;
  const csv_options& o_;
  std::uint32_t columns_;
  std::uint64_t limit_;
  std::uint64_t line_;  // line of the reader's position (0: unknown, split block)
};

class csv_stream {
 public:
  csv_stream(const input_set& input, const csv_options& options, std::uint32_t columns_id)
      : input_(input), options_(options), columns_(columns_id) {}

  std::optional<csv_row> next() {
    csv_row row;
    for (;;) {
      if (!reader_) {
        if (file_ == input_.files().size()) return std::nullopt;
        reader_ = std::make_unique<Reader>(input_.files()[file_], 0, /*sequential=*/true);
        cursor_ = std::make_unique<RowCursor>(*reader_, options_, columns_, UINT64_MAX, 1);
        if (options_.header && !cursor_->next(row)) {  // the header (checked at declaration)
          drop();
          continue;
        }
      }
      if (cursor_->next(row)) return row;
      drop();
    }
  }

 private:
  void drop() {
    cursor_.reset();
    reader_.reset();
    ++file_;
  }

  const input_set& input_;
  csv_options options_;
  std::uint32_t columns_;
  std::size_t file_ = 0;
  std::unique_ptr<Reader> reader_;
  std::unique_ptr<RowCursor> cursor_;
};

}  // namespace detail

// ------------------------------------------------------------------ csv_row

std::size_t csv_row::index_of(std::string_view column) const {
  const auto& names = detail::columns(columns_);
  for (std::size_t i = 0; i < names.size(); ++i)
    if (names[i] == column) return i;
  throw procflow::error(file() + ":" + std::to_string(line()) + ": no column named '" + std::string(column) + "'");
}

const std::vector<std::string>& csv_row::column_names() const { return detail::columns(columns_); }

std::uint64_t csv_row::line() const {
  if (line_ == 0) {
    const std::string& name = detail::file_name(file_);
    if (name != "-" && name != "<input>") line_ = detail::line_at(file_, offset_);
  }
  return line_;
}

const std::string& csv_row::file() const { return detail::file_name(file_); }

void csv_row::fail(std::size_t index, const std::string& what) const {
  std::string msg = file() + ":" + std::to_string(line()) + ":" + std::to_string(index + 1);
  const auto& names = detail::columns(columns_);
  if (index < names.size()) msg += " (" + names[index] + ")";
  throw procflow::error(msg + ": " + what);
}

// ------------------------------------------------------------------ csv_source

csv_source::csv_source(std::string input, csv_options options)
    : input_(std::make_shared<const detail::input_set>(input, options.block_bytes)), options_(std::move(options)) {
  std::vector<std::string> names = options_.columns;
  if (options_.header) {
    // Read every file's header now, before run() forks: replicas need the names, and files of
    // one input must agree.
    bool first = true;
    for (const auto& f : input_->files()) {
      csv_row header;
      bool have = false;
      if (f.path == "-") {
        // Byte by byte, so nothing after the header is taken from the stdin the source process reads.
        std::string text;
        char c;
        std::size_t used = 0;
        std::uint64_t newlines = 0;
        for (;;) {
          const ssize_t n = ::read(STDIN_FILENO, &c, 1);  // unbuffered: the rest stays for the source process
          const bool eof = n <= 0;
          if (!eof) text.push_back(c);
          if (eof || c == '\n') {
            const auto p = detail::parse_row(text, eof, options_, header, used, newlines,
                                             [&](std::size_t field, std::uint64_t, const std::string& what) -> void {
                                               throw procflow::error("-:1:" + std::to_string(field + 1) + ": " + what);
                                             });
            if (p == detail::Parsed::row) {
              have = true;
              break;
            }
            if (p == detail::Parsed::skipped) text.clear();
            if (eof) break;
          }
        }
      } else {
        detail::Reader r(f, 0, /*sequential=*/true);
        detail::RowCursor cursor(r, options_, 0, UINT64_MAX, 1);
        have = cursor.next(header);
      }
      if (!have) continue;  // an empty file: no header, no rows
      std::vector<std::string> these;
      for (std::size_t i = 0; i < header.size(); ++i) these.emplace_back(header[i]);
      if (first) {
        names = std::move(these);
        first = false;
      } else if (these != names) {
        throw procflow::error(f.path + ":1: header differs from the first file's ('" + input_->files().front().path + "')");
      }
    }
  }
  columns_ = detail::register_columns(std::move(names));
}

std::size_t csv_source::fill(std::uint64_t first, std::uint64_t last, procflow::detail::batch_buffer<csv_row>& out) const {
  // The previous chunk's rows are reused as storage (no allocation per row once warm).
  std::size_t n = 0;
  csv_row row;
  for (std::uint64_t b = first; b < last; ++b) {
    const auto block = input_->at(b);
    if (block.begin >= block.end) continue;
    detail::Reader r(*block.file, block.begin == 0 ? 0 : block.begin - 1);
    if (!r.more(static_cast<std::size_t>(block.end - block.begin) + 1)) continue;
    if (block.begin > 0 && !detail::seek_line_start(r, block.end)) continue;
    detail::RowCursor cursor(r, options_, columns_, block.end, block.begin == 0 ? 1 : 0);
    if (block.begin == 0 && options_.header && !cursor.next(row)) continue;  // skip the header
    for (;;) {
      if (n == out.size()) out.emplace_back();
      if (!cursor.next(out[n])) break;
      ++n;
    }
  }
  out.resize(n);
  return n;
}

std::optional<csv_row> csv_source::next() {
  if (!stream_) stream_ = std::make_shared<detail::csv_stream>(*input_, options_, columns_);
  return stream_->next();
}

}  // namespace procflow::stages

#include "reader.hpp"
#include "reject.hpp"
#include "scan.hpp"

#include <procflow/detail/bad_input.hpp>
#include <procflow/error.hpp>
#include <procflow/stages/csv.hpp>

#include <unistd.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <algorithm>
#include <array>
#include <bit>
#include <cstring>
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

// Which bytes of the next `width` bytes at p are the delimiter, and which are '"' or '\n': one bit
// each in `delimiters` and `stops` (bit byte_of^-1(k) for byte k; lower bits are earlier bytes).
// SSE2 (every x86-64): 16 bytes a step, three compares. Elsewhere, on little-endian machines,
// 8 bytes a step in a 64-bit word (SWAR). `available` is false where neither applies (the
// scanner then goes byte by byte).
#if defined(__SSE2__)
struct byte_masks {
  static constexpr bool available = true;
  static constexpr std::size_t width = 16;
  explicit byte_masks(char d) noexcept : d_(_mm_set1_epi8(d)), q_(_mm_set1_epi8('"')), n_(_mm_set1_epi8('\n')) {}
  void load(const char* p, std::uint64_t& delimiters, std::uint64_t& stops) const noexcept {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    delimiters = static_cast<std::uint32_t>(_mm_movemask_epi8(_mm_cmpeq_epi8(v, d_)));
    stops = static_cast<std::uint32_t>(_mm_movemask_epi8(_mm_or_si128(_mm_cmpeq_epi8(v, q_), _mm_cmpeq_epi8(v, n_))));
  }
  static std::size_t byte_of(int bit) noexcept { return static_cast<std::size_t>(bit); }

 private:
  __m128i d_, q_, n_;
};
#else
struct byte_masks {
  static constexpr bool available = std::endian::native == std::endian::little;
  static constexpr std::size_t width = 8;
  explicit byte_masks(char d) noexcept : d_(ones * static_cast<unsigned char>(d)) {}
  void load(const char* p, std::uint64_t& delimiters, std::uint64_t& stops) const noexcept {
    std::uint64_t x;
    std::memcpy(&x, p, 8);
    delimiters = equal(x, d_);
    stops = equal(x, ones * '"') | equal(x, ones * '\n');
  }
  static std::size_t byte_of(int bit) noexcept { return static_cast<std::size_t>(bit / 8); }  // bit 8 * byte + 7

 private:
  static constexpr std::uint64_t ones = 0x0101010101010101ull, low7 = 0x7f7f7f7f7f7f7f7full;
  // 0x80 in every byte of x that equals the byte of `pattern` (exact: no false positives).
  static std::uint64_t equal(std::uint64_t x, std::uint64_t pattern) noexcept {
    const std::uint64_t t = x ^ pattern;
    return ~(((t & low7) + low7) | t | low7);
  }
  std::uint64_t d_;
};
#endif

// The per-row fast paths: a row that is one physical line, parsed straight into the row's text.
struct csv_parser {
  // The commonest rows: one physical line whose quotes, if any, enclose whole fields without ""
  // inside (`2023,"AA",ATL`). Finds the line's end, its delimiters and its quoted fields in one
  // pass, 16 bytes at a time (byte_masks), and stores the line without '\n', one trailing '\r' and those
  // quotes as the row's text (one copy). Returns false, having concluded nothing, for anything
  // else — a quote inside an unquoted field, "" in a quoted one, a quoted field that does not
  // close on its line, text after a closing quote, a line that does not end within `w` (more
  // input to read) — and the caller then takes the general path, which handles (or reports)
  // every such case. Sets `len` (the line's bytes without '\n') and `nl`; an empty line leaves
  // the row with no fields.
  static bool scan_simple(std::string_view w, bool eof, char d, csv_row& row, std::size_t& len, bool& nl) {
    if (d == '"' || d == '\n' || d == '\r') return false;
    std::vector<std::uint32_t>& ends = row.ends_;
    ends.clear();
    const char* p = w.data();
    const std::size_t n = w.size();
    quoted_fields quoted;
    // A delimiter at line position `at`: the field ends there in the text, which lacks the two
    // quote bytes of every quoted field before it.
    auto delimiter_at = [&](std::size_t at) { ends.push_back(static_cast<std::uint32_t>(at - 2 * quoted.count)); };
    std::size_t i = 0;
    if constexpr (byte_masks::available) {
      const byte_masks masks(d);
      while (i + byte_masks::width <= n) {
        std::uint64_t md = 0, stop = 0;
        masks.load(p + i, md, stop);
        if (stop == 0) {
          for (; md != 0; md &= md - 1) delimiter_at(i + byte_masks::byte_of(std::countr_zero(md)));
          i += byte_masks::width;
          continue;
        }
        const int k = std::countr_zero(stop);
        const std::size_t at = i + byte_masks::byte_of(k);
        md &= (std::uint64_t{1} << k) - 1;  // the delimiters before the newline or quote
        for (; md != 0; md &= md - 1) delimiter_at(i + byte_masks::byte_of(std::countr_zero(md)));
        if (p[at] == '\n') return finish(p, at, true, quoted, row, len, nl);
        i = quoted_field(p, n, eof, d, at, ends, quoted);
        if (i == 0) return false;
      }
    }
    while (i < n) {
      const char c = p[i];
      if (c == '\n') return finish(p, i, true, quoted, row, len, nl);
      if (c == '"') {
        i = quoted_field(p, n, eof, d, i, ends, quoted);
        if (i == 0) return false;
        continue;
      }
      if (c == d) delimiter_at(i);
      ++i;
    }
    if (!eof || n == 0) return false;
    return finish(p, n, false, quoted, row, len, nl);
  }

 private:
  // The quoted fields of a line on the one-pass path: where each one's quotes are.
  struct quoted_fields {
    static constexpr std::size_t capacity = 64;  // more on one line: the general path
    std::size_t count = 0;
    std::array<std::uint32_t, capacity> open, close;
  };

  // The quote at line position `at` of p[0, n): when it opens a whole quoted field that closes on
  // this line, without "" inside and followed by a delimiter, the line's end or (at eof) the end
  // of the input, records it and returns the position after the closing quote; otherwise 0.
  static std::size_t quoted_field(const char* p, std::size_t n, bool eof, char d, std::size_t at,
                                  const std::vector<std::uint32_t>& ends, quoted_fields& quoted) noexcept {
    // The field starts after the last delimiter (its line position: the text position plus the
    // quote bytes removed before it, all of whose fields precede that delimiter).
    const std::size_t field_start = ends.empty() ? 0 : ends.back() + 2 * quoted.count + 1;
    if (at != field_start || quoted.count == quoted_fields::capacity) return 0;
    std::size_t c = at + 1;  // the closing quote: a byte loop for short fields, memchr for long ones
    for (const std::size_t stop = std::min(n, at + 33); c < stop; ++c) {
      if (p[c] == '"') break;
      if (p[c] == '\n') return 0;
    }
    if (c == n) return 0;
    if (p[c] != '"') {
      const void* q = std::memchr(p + c, '"', n - c);
      if (q == nullptr) return 0;
      const std::size_t qc = static_cast<std::size_t>(static_cast<const char*>(q) - p);
      if (std::memchr(p + c, '\n', qc - c) != nullptr) return 0;
      c = qc;
    }
    const std::size_t next = c + 1;
    if (next == n) {
      if (!eof) return 0;  // a '"' may follow
    } else if (const char b = p[next]; !(b == d || b == '\n' || (b == '\r' && next + 1 < n && p[next + 1] == '\n'))) {
      return 0;  // "" inside, or text after the closing quote
    }
    quoted.open[quoted.count] = static_cast<std::uint32_t>(at);
    quoted.close[quoted.count] = static_cast<std::uint32_t>(c);
    ++quoted.count;
    return next;
  }

  static bool finish(const char* p, std::size_t end, bool newline, const quoted_fields& quoted, csv_row& row,
                     std::size_t& len, bool& nl) {
    len = end;
    nl = newline;
    // CRLF: the '\r' is not data (no delimiter is '\r'; after a closing quote only "\r\n" is taken).
    if (end > 0 && p[end - 1] == '\r') --end;
    if (end == 0) {
      row.clear();
      return true;
    }
    std::string& t = row.text_;
    if (quoted.count == 0) {
      t.assign(p, end);
    } else {  // the pieces between the quotes
      t.clear();
      std::size_t from = 0;
      for (std::size_t q = 0; q < quoted.count; ++q) {
        t.append(p + from, quoted.open[q] - from);
        t.append(p + quoted.open[q] + 1, quoted.close[q] - quoted.open[q] - 1);
        from = quoted.close[q] + 1;
      }
      t.append(p + from, end - from);
    }
    row.ends_.push_back(static_cast<std::uint32_t>(t.size()));
    return true;
  }

 public:
  // Parses `line` (no '\n', a trailing '\r' removed) into `row`. Returns false when a quoted
  // field does not close on this line (the caller then runs the general parser, which knows
  // about multiline rows and the end of the input). Errors go through fail(field, message).
  // Position of the first `c` in p[i, n), or n. Fields are mostly short: a byte loop first (a
  // memchr call costs more than a few compares), memchr for the rest of a long field.
  static std::size_t find_byte(const char* p, std::size_t i, std::size_t n, char c) noexcept {
    for (const std::size_t stop = std::min(n, i + 16); i < stop; ++i)
      if (p[i] == c) return i;
    if (i == n) return n;
    const void* q = std::memchr(p + i, c, n - i);
    return q ? static_cast<std::size_t>(static_cast<const char*>(q) - p) : n;
  }

  template <class Fail>
  static bool parse_line(std::string_view line, char d, csv_row& row, Fail&& fail) {
    const char* p = line.data();
    const std::size_t n = line.size();
    if (std::memchr(p, '"', n) == nullptr) {  // no quotes: the line is the row's text
      row.assign_fields(line, d);
      return true;
    }
    // The line is copied once and unquoted in place: a write position `w` trails the read
    // position `i` (unquoting only removes bytes), so no field is appended on its own.
    std::string& t = row.text_;
    std::vector<std::uint32_t>& ends = row.ends_;
    t.assign(line);
    ends.clear();
    char* q = t.data();
    std::size_t i = 0, w = 0;
    auto keep = [&](std::size_t from, std::size_t to) {  // moves q[from, to) to q[w, ...)
      if (w != from && to - from > 32) {
        std::memmove(q + w, q + from, to - from);
      } else if (w != from) {
        for (std::size_t k = from; k < to; ++k) q[w + (k - from)] = q[k];
      }
      w += to - from;
    };
    for (;;) {
      if (i < n && q[i] == '"') {  // quoted field: pieces between quotes, "" is one quote
        ++i;
        for (;;) {
          const std::size_t qi = find_byte(q, i, n, '"');
          if (qi == n) return false;
          keep(i, qi);
          i = qi + 1;
          if (i < n && q[i] == '"') {
            q[w++] = '"';
            ++i;
            continue;
          }
          break;
        }
        ends.push_back(static_cast<std::uint32_t>(w));
        if (i == n) break;
        if (q[i] != d) fail(ends.size() - 1, "unexpected character after a closing quote");
        q[w++] = d;
        ++i;
        continue;  // the next field (an empty one when the delimiter ends the line)
      }
      const std::size_t j = find_byte(q, i, n, d);
      keep(i, j);
      ends.push_back(static_cast<std::uint32_t>(w));
      if (j == n) break;
      q[w++] = d;
      i = j + 1;
    }
    t.resize(w);
    return true;
  }
};

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
      : r_(r), o_(o), columns_(columns_id), limit_(limit), line_(line), fields_(std::max<std::size_t>(columns(columns_id).size(), 1)) {}

  // Next row into `row`; false at the end (of the block or the input). Under pf::skip a
  // malformed row is set aside (counted, appended to the reject file) and reading goes on.
  bool next(csv_row& row) {
    return read_setting_aside<bad_row>(skip_, [&] { return read(row); }, [&](const bad_row& bad) { set_aside(bad); });
  }

 private:
  // A malformed row under pf::skip (thrown by fail(), caught by next()).
  struct bad_row {
    std::uint64_t start;  // file offset of the row
    std::size_t field;
    std::string what;
    std::uint64_t lines_before = 0;  // the row's line breaks before the one at fault (quoted, multiline)
  };

  bool read(csv_row& row) {
    // A fresh row gets its offsets' room at once (a no-op once it has it): growing them one field
    // at a time cost four allocations per row, and in a fresh replica the pages they touched.
    row.reserve_fields(fields_);
    for (;;) {
      if (r_.offset() >= limit_) return false;
      const std::uint64_t start = r_.offset();
      bool nl = false;
      std::size_t len = 0;
      if (const std::string_view w = r_.window(); (w.empty() || o_.comment == '\0' || w[0] != o_.comment) &&
                                                  csv_parser::scan_simple(w, r_.at_end(), o_.delimiter, row, len, nl) &&
                                                  len <= o_.max_row_bytes) {
        r_.advance(len + (nl ? 1 : 0));
        const std::uint64_t line = line_;
        if (line_ != 0) ++line_;
        if (row.size() == 0) continue;  // an empty line
        row.set_origin(r_.file().id, columns_, start, line);
        return true;
      }
      len = find_line(r_, o_.max_row_bytes, nl, [&] {
        fail(start, 0, "row longer than " + std::to_string(o_.max_row_bytes) + " bytes");
      });
      if (len == std::string_view::npos) return false;
      const std::string_view line = strip_cr(r_.window().substr(0, len));
      const std::size_t used = len + (nl ? 1 : 0);
      if (line.empty() || (o_.comment != '\0' && line[0] == o_.comment)) {  // empty and comment lines
        r_.advance(used);
        if (line_ != 0) ++line_;
        continue;
      }
      if (csv_parser::parse_line(line, o_.delimiter, row, [&](std::size_t field, const std::string& what) { fail(start, field, what); })) {
        row.set_origin(r_.file().id, columns_, start, line_);
        r_.advance(used);
        if (line_ != 0) ++line_;
        return true;
      }
      if (general(row)) return true;
    }
  }

  // A row with a quoted field that does not close on its first line: parsed from the window
  // (multiline rows, the end of the input, the errors of the single-line rule).
  bool general(csv_row& row) {
    for (;;) {
      std::size_t used = 0;
      std::uint64_t newlines = 0;
      const std::uint64_t start = r_.offset();
      const Parsed p = parse_row(r_.window(), r_.at_end(), o_, row, used, newlines,
                                 [&](std::size_t field, std::uint64_t lines_before, const std::string& what) {
                                   fail(start, field, what, lines_before);
                                 });
      if (p == Parsed::more) {
        if (r_.window().size() > o_.max_row_bytes)
          fail(start, row.size(), "row longer than " + std::to_string(o_.max_row_bytes) + " bytes");
        r_.more(std::max(read_piece, r_.window().size()));
        continue;
      }
      if (p == Parsed::end) return false;
      const std::string_view text = r_.window().substr(0, used);
      const std::uint64_t line = line_;
      if (line_ != 0) line_ += static_cast<std::uint64_t>(std::count(text.begin(), text.end(), '\n'));
      r_.advance(used);
      if (p == Parsed::skipped) return false;
      row.set_origin(r_.file().id, columns_, start, line);
      return true;
    }
  }

  // `lines_before`: line breaks inside the row (its quoted fields) before the line at fault.
  [[noreturn]] void fail(std::uint64_t start, std::size_t field, const std::string& what, std::uint64_t lines_before = 0) {
    if (skip_) throw bad_row{start, field, what, lines_before};
    throw procflow::error(where(r_.file(), start, line_) + ":" + std::to_string(field + 1) + ": " + what);
  }

  // Sets the bad row aside and moves past the physical line at fault: the row's first line, or,
  // when the fault follows a quoted field that spans lines, the line it is on — so the rest of
  // that field is not read as rows of its own. The reader is still at the row's start: a row
  // moves it only once read whole.
  void set_aside(const bad_row& bad) {
    if (r_.offset() != bad.start) throw procflow::error(where(r_.file(), bad.start, 0) + ": cannot skip a malformed row here");
    const input_file& f = r_.file();
    const std::uint64_t line = line_ != 0 ? line_ : f.plain && f.path != "-" ? line_at(f.id, bad.start) : 0;
    reject("rows rejected", o_.reject_file, {f.path, line, bad.field + 1, bad.what, line_for_reject(r_)});
    for (std::uint64_t i = 0; i <= bad.lines_before; ++i) {
      if (!seek_line_start(r_, UINT64_MAX)) return;  // past the line's '\n', or at the end of the input
      if (line_ != 0) ++line_;
    }
  }

  Reader& r_;
  const csv_options& o_;
  bool skip_ = procflow::detail::running_stage_skips();
  std::uint32_t columns_;
  std::uint64_t limit_;
  std::uint64_t line_;  // line of the reader's position (0: unknown, split block)
  std::size_t fields_;  // the declaration's column count
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
        // The header (checked at declaration, where stdin's was already consumed).
        if (options_.header && input_.files()[file_].path != "-" && !cursor_->next(row)) {
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

void csv_row::assign_fields(std::string_view text, char separator) {
  text_.assign(text);
  ends_.clear();
  const char* p = text_.data();
  const std::size_t n = text_.size();
  for (std::size_t i = 0; i < n; ++i)
    if (p[i] == separator) ends_.push_back(static_cast<std::uint32_t>(i));
  ends_.push_back(static_cast<std::uint32_t>(n));
}

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

void csv_source::begin_run() const { detail::create_reject_file(options_.reject_file, "file,line,column,error,text"); }

std::size_t csv_source::fill(std::uint64_t first, std::uint64_t last, procflow::detail::batch_buffer<csv_row>& out) const {
  // The previous chunk's rows are reused as storage (no allocation per row once warm).
  detail::size_fresh_batch(out, (last - first) * input_->block_bytes(), 32);
  std::size_t n = 0;
  csv_row header;
  detail::for_each_block(*input_, first, last, [&](detail::Reader& r, const detail::input_set::block& block) {
    detail::RowCursor cursor(r, options_, columns_, block.end, block.begin == 0 ? 1 : 0);
    if (block.begin == 0 && options_.header && !cursor.next(header)) return;  // skip the header
    for (;;) {
      if (n == out.size()) out.emplace_back();
      if (!cursor.next(out[n])) break;
      ++n;
    }
  });
  out.resize(n);
  return n;
}

std::optional<csv_row> csv_source::next() {
  if (!stream_) stream_ = std::make_shared<detail::csv_stream>(*input_, options_, columns_);
  return stream_->next();
}

}  // namespace procflow::stages

#include "reader.hpp"
#include "reject.hpp"
#include "scan.hpp"

#include <procflow/detail/bad_input.hpp>
#include <procflow/error.hpp>
#include <procflow/stages/records.hpp>

#include <fcntl.h>
#include <unistd.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <algorithm>
#include <bit>
#include <cstring>
#include <memory>

namespace procflow::stages {
namespace detail {

namespace {

bool blank(std::string_view line) noexcept {
  for (char c : line)
    if (c != ' ' && c != '\t' && c != '\r') return false;
  return true;
}

std::string_view trim(std::string_view s) noexcept {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return s;
}

// True when the line ending just before file offset `at` (at > 0, byte at-1 is '\n') is blank:
// reads backwards until a non-blank byte or the previous '\n'.
bool previous_line_blank(const input_file& f, std::uint64_t at) {
  const int fd = ::open(f.path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw procflow::system_error(errno, "cannot open '" + f.path + "'");
  char buf[4096];
  std::uint64_t end = at - 1;  // the '\n' ending the previous line
  bool result = true;
  for (;;) {
    if (end == 0) break;  // the previous line starts the file
    const std::uint64_t from = end > sizeof buf ? end - sizeof buf : 0;
    const ssize_t got = ::pread(fd, buf, static_cast<std::size_t>(end - from), static_cast<off_t>(from));
    if (got <= 0) break;
    bool decided = false;
    for (std::size_t i = static_cast<std::size_t>(got); i-- > 0;) {
      const char c = buf[i];
      if (c == '\n') {
        decided = true;
        break;
      }
      if (c != ' ' && c != '\t' && c != '\r') {
        result = false;
        decided = true;
        break;
      }
    }
    if (decided) break;
    end = from;
  }
  ::close(fd);
  return result;
}

// Position of the first ':' in `line`, or line.size(). `readable` bytes from line.data() may be
// read (the reader's window goes on past the line). Keys are short, and a byte loop's exit
// branch mispredicts on every line (a fifth of the reader's time on a Packages file): with SSE2
// one 16-byte compare finds most colons, memchr the rest.
std::size_t find_colon(std::string_view line, std::size_t readable) noexcept {
#if defined(__SSE2__)
  if (readable >= 16) {
    const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(line.data()));
    const auto colons = static_cast<unsigned>(_mm_movemask_epi8(_mm_cmpeq_epi8(bytes, _mm_set1_epi8(':'))));
    if (colons != 0) return std::min<std::size_t>(static_cast<std::size_t>(std::countr_zero(colons)), line.size());
    if (line.size() <= 16) return line.size();
    const void* c = std::memchr(line.data() + 16, ':', line.size() - 16);
    return c ? static_cast<std::size_t>(static_cast<const char*>(c) - line.data()) : line.size();
  }
#endif
  (void)readable;
  std::size_t colon = 0;
  while (colon < line.size() && line[colon] != ':') ++colon;
  return colon;
}

}  // namespace

// Reads records that start before `limit` from a Reader positioned at a line start.
class RecordCursor {
 public:
  RecordCursor(Reader& r, const record_options& o, std::uint64_t limit, std::uint64_t line, bool after_blank)
      : r_(r), o_(o), limit_(limit), start_(r.offset()), base_line_(line), after_blank_(after_blank) {}

  // Next record into `out`; false at the end (of the block or the input). Under pf::skip a
  // malformed record is set aside (counted, appended to the reject file) and reading goes on.
  bool next(record& out) {
    return read_setting_aside<bad_record>(skip_, [&] { return read(out); }, [&](const bad_record& bad) { set_aside(bad); });
  }

 private:
  // A malformed record under pf::skip (thrown by fail(), caught by next()).
  struct bad_record {
    std::uint64_t offset;  // file offset of the line at fault
    std::uint64_t line;
    std::string what;
  };

  bool read(record& out) {
    // Find the next record start (a non-blank line after a blank one) before the limit.
    for (;;) {
      if (r_.offset() >= limit_) return false;
      std::string_view line;
      bool nl = false;
      try {
        if (!read_line(line, nl, /*tail=*/!after_blank_)) return false;
      } catch (const long_tail&) {  // in a record an earlier block owns: its cursor reports the line
        if (!seek_line_start(r_, UINT64_MAX)) return false;
        ++rel_;
        continue;
      }
      const bool is_blank = blank(line);
      const bool is_comment = o_.comment != '\0' && !line.empty() && line[0] == o_.comment;
      if (is_blank) {
        after_blank_ = true;
        consume(line.size(), nl);
        continue;
      }
      if (!after_blank_ || is_comment) {  // the tail of a record owned by an earlier block, or a comment
        consume(line.size(), nl);
        continue;
      }
      break;
    }
    // The record: up to a blank line or the end of input (past the limit if need be).
    // A reused record keeps its capacity; a fresh one gets room for the last record's size.
    out.clear();
    out.reserve(last_fields_, last_bytes_);
    const std::uint64_t record_start = r_.offset();
    std::size_t seen = 0;  // fields read (kept or not)
    bool keep = false;     // the last field was kept (so are its continuation lines)
    // The lines are found in the window with a local position (the Reader is advanced when the
    // window runs out and at the end): per line one memchr for '\n' and one for ':'.
    std::size_t pos = 0;
    for (;;) {
      std::string_view line;
      bool nl = true;
      const std::string_view w = r_.window();
      if (const void* e = std::memchr(w.data() + pos, '\n', w.size() - pos);
          e != nullptr && static_cast<std::size_t>(static_cast<const char*>(e) - w.data()) - pos <= o_.max_record_bytes) {
        line = w.substr(pos, static_cast<std::size_t>(static_cast<const char*>(e) - w.data()) - pos);
      } else {  // the line ends past the window (or is too long): read on, the Reader at the line
        r_.advance(pos);
        pos = 0;
        if (!read_line(line, nl)) break;
      }
      const std::size_t used = line.size() + (nl ? 1 : 0);
      const char first = line.empty() ? ' ' : line[0];
      if (first == ' ' || first == '\t' || first == '\r') {  // a blank line or a continuation line
        if (blank(line)) {
          pos += used;
          rel_ += nl ? 1 : 0;
          after_blank_ = true;
          break;
        }
        if (seen == 0) fail(r_.offset() + pos, "continuation line before any field");
        if (keep) out.continue_value(trim(line));
        pos += used;
        rel_ += nl ? 1 : 0;
        continue;
      }
      if (r_.offset() + pos - record_start > o_.max_record_bytes)
        fail(r_.offset() + pos, "record longer than " + std::to_string(o_.max_record_bytes) + " bytes");
      if (first == o_.comment && o_.comment != '\0') {
        pos += used;
        rel_ += nl ? 1 : 0;
        continue;
      }
      const std::size_t colon = find_colon(line, r_.window().size() - pos);
      if (colon == 0 || colon == line.size()) fail(r_.offset() + pos, "expected 'Key: value'");
      if (seen++ == 0) {
        if (base_line_ != 0) {
          out.set_line(base_line_ + rel_);
        } else {
          out.set_line_after(r_.file().id, start_, rel_);
        }
      }
      const std::string_view key = trim(line.substr(0, colon));
      keep = wanted(key);
      if (keep) out.add(key, trim(line.substr(colon + 1)));
      pos += used;
      rel_ += nl ? 1 : 0;
    }
    r_.advance(pos);
    if (seen != 0) {
      last_fields_ = out.size();
      // Room for what the last record kept, not its bytes in the file: with record_options::fields
      // a Packages record keeps ~50 of its ~1.5 KB, and a batch of records each holding the file
      // size spread their texts over megabytes (a cache miss per record when the batch is refilled).
      last_bytes_ = out.text_size();
      return true;
    }
    return read(out);
  }

  // Whether a field is kept (record_options::fields).
  bool wanted(std::string_view key) const noexcept {
    if (o_.fields.empty()) return true;
    for (const std::string& k : o_.fields)  // length and first byte first: most keys differ there
      if (k.size() == key.size() && k[0] == key[0] && std::memcmp(k.data(), key.data(), k.size()) == 0) return true;
    return false;
  }
  // A line longer than max_record_bytes that may be the tail of a record an earlier block owns
  // (thrown by read_line(..., tail = true), caught while looking for a record's start).
  struct long_tail {};
  bool read_line(std::string_view& line, bool& nl, bool tail = false) {
    const std::size_t len = find_line(r_, o_.max_record_bytes, nl, [&] {
      if (tail) throw long_tail{};
      fail(r_.offset(), "line longer than " + std::to_string(o_.max_record_bytes) + " bytes");
    });
    if (len == std::string_view::npos) return false;
    line = r_.window().substr(0, len);
    return true;
  }
  void consume(std::size_t len, bool nl) {
    r_.advance(len + (nl ? 1 : 0));
    if (nl) ++rel_;
  }
  // Line of the reader's position; in a split block counted from the file start (only for errors).
  std::uint64_t current_line() {
    if (base_line_ == 0) base_line_ = line_at(r_.file().id, start_);
    return base_line_ + rel_;
  }
  // `offset`: the start of the line at fault (current_line()), at or after the reader's position.
  [[noreturn]] void fail(std::uint64_t offset, const std::string& what) {
    if (skip_) throw bad_record{offset, current_line(), what};
    throw procflow::error(r_.file().path + ":" + std::to_string(current_line()) + ": " + what);
  }

  // Sets the bad record aside: moves to the line at fault, then past the record's remaining lines
  // (up to a blank line, which read() then takes as the next record's separator).
  void set_aside(const bad_record& bad) {
    if (bad.offset < r_.offset()) throw procflow::error(r_.file().path + ":" + std::to_string(bad.line) + ": cannot skip a malformed record here");
    r_.advance(static_cast<std::size_t>(bad.offset - r_.offset()));
    reject("records rejected", o_.reject_file, {r_.file().path, bad.line, std::nullopt, bad.what, line_for_reject(r_)});
    after_blank_ = false;
    for (;;) {
      if (!seek_line_start(r_, UINT64_MAX)) return;  // the end of the input
      ++rel_;
      if (blank(line_for_reject(r_))) return;
    }
  }

  Reader& r_;
  const record_options& o_;
  std::uint64_t limit_;
  std::uint64_t start_;      // file offset where this cursor started (a line start)
  std::uint64_t base_line_;  // line of start_, or 0 until needed (split blocks)
  std::uint64_t rel_ = 0;    // newlines consumed since start_
  bool after_blank_;
  bool skip_ = procflow::detail::running_stage_skips();
  std::size_t last_fields_ = 0;  // fields of the last record
  std::size_t last_bytes_ = 0;   // text bytes (keys and values) the last record kept
};

class record_stream {
 public:
  record_stream(const input_set& input, const record_options& options) : input_(input), options_(options) {}

  std::optional<record> next() {
    record r;
    for (;;) {
      if (!reader_) {
        if (file_ == input_.files().size()) return std::nullopt;
        reader_ = std::make_unique<Reader>(input_.files()[file_], 0, /*sequential=*/true);
        cursor_ = std::make_unique<RecordCursor>(*reader_, options_, UINT64_MAX, 1, true);
      }
      if (cursor_->next(r)) return r;
      cursor_.reset();
      reader_.reset();
      ++file_;
    }
  }

 private:
  const input_set& input_;
  record_options options_;
  std::size_t file_ = 0;
  std::unique_ptr<Reader> reader_;
  std::unique_ptr<RecordCursor> cursor_;
};

}  // namespace detail

records_source::records_source(std::string input, record_options options)
    : input_(std::make_shared<const detail::input_set>(input, options.block_bytes)), options_(options) {
}

void records_source::begin_run() const { detail::create_reject_file(options_.reject_file, "file,line,error,text"); }

std::size_t records_source::fill(std::uint64_t first, std::uint64_t last, procflow::detail::batch_buffer<record>& out) const {
  // Records are parsed into out's existing elements (left from an earlier batch when the buffer
  // comes back), reusing their strings; the surplus is dropped at the end.
  detail::size_fresh_batch(out, (last - first) * input_->block_bytes(), 64);
  std::size_t n = 0;
  auto slot = [&]() -> record& {
    if (n == out.size()) out.emplace_back();
    return out[n];
  };
  detail::for_each_block(*input_, first, last, [&](detail::Reader& r, const detail::input_set::block& block) {
    const bool after_blank = block.begin == 0 || detail::previous_line_blank(*block.file, r.offset());
    detail::RecordCursor cursor(r, options_, block.end, block.begin == 0 ? 1 : 0, after_blank);
    while (cursor.next(slot())) ++n;
  });
  out.resize(n);
  return n;
}

std::optional<record> records_source::next() {
  if (!stream_) stream_ = std::make_shared<detail::record_stream>(*input_, options_);
  return stream_->next();
}

}  // namespace procflow::stages

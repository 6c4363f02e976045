// procflow::stages::records — blank-line separated "Key: value" records (Debian control files
// such as the apt Packages index, e-mail style headers), as a pipeline source.
//
//   Package: bash
//   Section: shells
//   Description: GNU Bourne Again SHell
//    Bash is an sh-compatible command language interpreter
//
// A record is a run of non-blank lines; blank lines (empty or only spaces/tabs) separate them.
// Each line is "Key: value" (the value without the whitespace around it); a line starting with
// a space or tab continues the previous field's value: its text (without the leading
// whitespace) is appended after a '\n'. Lines starting with `comment` (when set) are skipped.
// A line that is neither is a procflow::error naming "file:line".
//
// Bad records under pf::skip. When the reading stage skips failing items (pf::skip on the source
// or on the pipeline), a malformed record is set aside instead of failing the run: counted in
// the stage's counter "records rejected", and with `reject_file` set appended to that file as a
// CSV record `file,line,error,text` (line and text: the line at fault, cut at
// reject_text_bytes; one O_APPEND write each, replicas' records whole, in no particular order;
// each run creates the file with that header as it starts). Reading goes on after the
// record's next blank line; the fields read before the fault are dropped with the record.
//
// Plain files (without `comment` set) are SPLITTABLE like lines(): a record belongs to the block where its first line
// starts (a record starts after a blank line), and the reader finishes it past the block's end.
// stdin and .gz files are read in a source process. record::line() is the file's line of the
// record's first field (split files: computed on first use, counting the file's newlines up to the block).
#pragma once

#include <procflow/codec.hpp>
#include <procflow/error.hpp>
#include <procflow/sources.hpp>
#include <procflow/stages/input.hpp>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace procflow::stages {

struct record_options {
  char comment = '\0';                                  // e.g. '#'
  std::size_t max_record_bytes = std::size_t{64} << 20;  // a longer record is an error
  // Bytes per claimed chunk (splittable files). 1 MiB, not default_block_bytes: a record keeps
  // only its wanted fields, so a block's batch is small anyway, and each block costs a pread to
  // see whether the line before it is blank (packages_etl: 256 KiB blocks 1.20 -> 1.15x the loop).
  std::uint64_t block_bytes = std::uint64_t{1} << 20;
  // Only the fields with these keys (exact) are kept in each record; empty: every field. Every
  // line is still checked ("Key: value"), and a record with none of them is still a record (no
  // fields, its line() set); the other fields are skipped without being copied. Reading the 3
  // fields packages_etl uses of a Packages index's ~20 costs about 0.6x the CPU of reading all.
  std::vector<std::string> fields;
  // Records set aside under pf::skip, as CSV `file,line,error,text` (see above); "" = none.
  std::string reject_file;
};

// One record: its fields' keys and values back to back in one string, with the end of every key
// and value (one allocation per record, not two per field).
class record {
 public:
  record() = default;
  record(std::initializer_list<std::pair<std::string_view, std::string_view>> fields, std::uint64_t first_line = 0)
      : line_(first_line) {
    for (const auto& [k, v] : fields) add(k, v);
  }

  std::size_t size() const noexcept { return ends_.size() / 2; }  // fields, in file order
  bool empty() const noexcept { return ends_.empty(); }
  std::size_t text_size() const noexcept { return text_.size(); }  // bytes of its keys and values
  std::string_view key(std::size_t i) const noexcept { return slice(i == 0 ? 0 : ends_[2 * i - 1], ends_[2 * i]); }
  std::string_view value(std::size_t i) const noexcept { return slice(ends_[2 * i], ends_[2 * i + 1]); }

  // The value of the first field named exactly `key`, or nullopt. A job calls it a few times per
  // record: the lengths and first bytes are compared before any memcmp call (with string_view's ==,
  // one memcmp call per field of the same length, the lookups cost ~15% of packages_etl's CPU).
  std::optional<std::string_view> find(std::string_view k) const noexcept {
    const char* text = text_.data();
    std::uint64_t from = 0;  // start of field i's key
    for (std::size_t i = 0; i + 1 < ends_.size(); i += 2) {
      const std::uint64_t key_end = ends_[i];
      if (key_end - from == k.size() &&
          (k.empty() || (text[from] == k[0] && std::memcmp(text + from, k.data(), k.size()) == 0)))
        return std::string_view(text + key_end, static_cast<std::size_t>(ends_[i + 1] - key_end));
      from = ends_[i + 1];
    }
    return std::nullopt;
  }
  std::string_view get(std::string_view k, std::string_view fallback = {}) const noexcept { return find(k).value_or(fallback); }

  void add(std::string_view k, std::string_view v) {
    text_.append(k);
    ends_.push_back(text_.size());
    text_.append(v);
    ends_.push_back(text_.size());
  }
  // Appends '\n' and `more` to the last field's value (a continuation line); needs a field.
  void continue_value(std::string_view more) {
    text_ += '\n';
    text_.append(more);
    ends_.back() = text_.size();
  }
  void clear() noexcept {
    text_.clear();
    ends_.clear();
    line_ = 0;
    lazy_ = false;
  }

  // Line of the record's first field (0 if unknown). In a split file it is computed on first use
  // (counting the file's newlines up to the block once per process), not for every record read.
  std::uint64_t line() const {
    if (lazy_) {
      line_ = detail::line_at(file_, from_) + rel_;
      lazy_ = false;
    }
    return line_;
  }
  void set_line(std::uint64_t line) noexcept {
    line_ = line;
    lazy_ = false;
  }
  // The line is `newlines` after the line starting at byte `from` of input file `file`.
  void set_line_after(std::uint32_t file, std::uint64_t from, std::uint64_t newlines) noexcept {
    file_ = file;
    from_ = from;
    rel_ = newlines;
    lazy_ = true;
  }
  void reserve(std::size_t fields, std::size_t bytes) {
    ends_.reserve(2 * fields);
    text_.reserve(bytes);
  }
  friend bool operator==(const record& a, const record& b) {
    return a.text_ == b.text_ && a.ends_ == b.ends_ && a.line() == b.line();
  }

 private:
  friend struct procflow::codec<record>;
  std::string_view slice(std::uint64_t from, std::uint64_t to) const noexcept {
    return std::string_view(text_).substr(static_cast<std::size_t>(from), static_cast<std::size_t>(to - from));
  }
  std::string text_;
  std::vector<std::uint64_t> ends_;  // per field: end of key, end of value (offsets into text_)
  mutable std::uint64_t line_ = 0;
  mutable bool lazy_ = false;  // line_ not computed yet: it is line_at(file_, from_) + rel_
  std::uint32_t file_ = 0;
  std::uint64_t from_ = 0;
  std::uint64_t rel_ = 0;
};

namespace detail {
class record_stream;
}

// The source behind records() (a procflow::custom_source).
class records_source {
 public:
  using item_type = record;

  records_source(std::string input, record_options options);

  // With comment lines the file is read in one process (a comment line between a blank line and
  // a record would hide the record's start from the block after it).
  bool splittable() const noexcept { return input_->splittable() && options_.comment == '\0'; }
  std::uint64_t size() const noexcept { return input_->blocks(); }
  std::uint64_t preferred_chunk() const noexcept { return 1; }
  bool units_are_items() const noexcept { return false; }
  std::size_t fill(std::uint64_t first, std::uint64_t last, procflow::detail::batch_buffer<record>& out) const;
  std::optional<record> next();
  // At the start of each run (procflow::custom_source): makes this rank's reject file.
  void begin_run() const;

 private:
  std::shared_ptr<const detail::input_set> input_;
  record_options options_;
  std::shared_ptr<detail::record_stream> stream_;
};

inline records_source records(std::string input, record_options options = {}) {
  return records_source(std::move(input), options);
}

}  // namespace procflow::stages

template <>
struct procflow::codec<procflow::stages::record> {
  static std::size_t encoded_size(const procflow::stages::record& r) noexcept {
    return codec<std::string>::encoded_size(r.text_) + codec<std::vector<std::uint64_t>>::encoded_size(r.ends_) + 1 + 4 + 3 * 8;
  }
  static std::byte* encode(const procflow::stages::record& r, std::byte* out) noexcept {
    out = codec<std::string>::encode(r.text_, out);
    out = codec<std::vector<std::uint64_t>>::encode(r.ends_, out);
    out = codec<bool>::encode(r.lazy_, out);
    out = codec<std::uint32_t>::encode(r.file_, out);
    out = codec<std::uint64_t>::encode(r.from_, out);
    out = codec<std::uint64_t>::encode(r.rel_, out);
    return codec<std::uint64_t>::encode(r.line_, out);
  }
  static procflow::stages::record decode(decoder& in) {
    procflow::stages::record r;
    r.text_ = codec<std::string>::decode(in);
    r.ends_ = codec<std::vector<std::uint64_t>>::decode(in);
    r.lazy_ = codec<bool>::decode(in);
    r.file_ = codec<std::uint32_t>::decode(in);
    r.from_ = codec<std::uint64_t>::decode(in);
    r.rel_ = codec<std::uint64_t>::decode(in);
    r.line_ = codec<std::uint64_t>::decode(in);
    if (r.ends_.size() % 2 != 0 || (!r.ends_.empty() && r.ends_.back() != r.text_.size()) ||
        !std::is_sorted(r.ends_.begin(), r.ends_.end()))
      throw procflow::error("corrupt record in a batch");
    return r;
  }
};

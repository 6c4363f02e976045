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
// Plain files are SPLITTABLE like lines(): a record belongs to the block where its first line
// starts (a record starts after a blank line), and the reader finishes it past the block's end.
// stdin and .gz files are read in a source process. record::line is the file's line of the
// record's first field (split files: counted once per block, from the file's start).
#pragma once

#include <procflow/codec.hpp>
#include <procflow/sources.hpp>
#include <procflow/stages/input.hpp>

#include <cstdint>
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
  std::uint64_t block_bytes = default_block_bytes;
};

struct record {
  std::vector<std::pair<std::string, std::string>> fields;  // in file order
  std::uint64_t line = 0;                                    // line of the record's first field

  // The value of the first field named exactly `key`, or nullptr.
  const std::string* find(std::string_view key) const noexcept {
    for (const auto& [k, v] : fields)
      if (k == key) return &v;
    return nullptr;
  }
  std::string_view get(std::string_view key, std::string_view fallback = {}) const noexcept {
    const std::string* v = find(key);
    return v ? std::string_view(*v) : fallback;
  }
  friend bool operator==(const record&, const record&) = default;
};

namespace detail {
class record_stream;
}

// The source behind records() (a procflow::custom_source).
class records_source {
 public:
  using item_type = record;

  records_source(std::string input, record_options options);

  bool splittable() const noexcept { return input_->splittable(); }
  std::uint64_t size() const noexcept { return input_->blocks(); }
  std::uint64_t preferred_chunk() const noexcept { return 1; }
  bool units_are_items() const noexcept { return false; }
  std::size_t fill(std::uint64_t first, std::uint64_t last, procflow::detail::batch_buffer<record>& out) const;
  std::optional<record> next();

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
  using fields_codec = codec<std::vector<std::pair<std::string, std::string>>>;
  static std::size_t encoded_size(const procflow::stages::record& r) noexcept { return fields_codec::encoded_size(r.fields) + 8; }
  static std::byte* encode(const procflow::stages::record& r, std::byte* out) noexcept {
    return codec<std::uint64_t>::encode(r.line, fields_codec::encode(r.fields, out));
  }
  static procflow::stages::record decode(decoder& in) {
    procflow::stages::record r;
    r.fields = fields_codec::decode(in);
    r.line = codec<std::uint64_t>::decode(in);
    return r;
  }
};

// Helpers shared by the line-based readers (lines, csv, records).
#pragma once

#include "reader.hpp"

#include <cstring>
#include <string_view>

namespace procflow::stages::detail {

// For a reader opened at `begin - 1` (begin > 0): moves to the first line start at or after
// `begin`. Returns false when no line starts before `limit` (the block holds only the tail of
// a line that started earlier).
inline bool seek_line_start(Reader& r, std::uint64_t limit) {
  for (;;) {
    const std::string_view w = r.window();
    if (const void* nl = std::memchr(w.data(), '\n', w.size())) {
      r.advance(static_cast<std::size_t>(static_cast<const char*>(nl) - w.data()) + 1);
      return r.offset() < limit;
    }
    r.advance(w.size());
    if (r.offset() >= limit || !r.more()) return false;
  }
}

// Finds the end of the line at the window's start, reading more as needed. Returns the line's
// length (without '\n') and sets `has_newline`; npos at end of input with an empty window.
// Throws (via `too_long`) when the line exceeds `max_bytes`.
template <class TooLong>
std::size_t find_line(Reader& r, std::size_t max_bytes, bool& has_newline, TooLong&& too_long) {
  std::size_t scanned = 0;
  for (;;) {
    const std::string_view w = r.window();
    if (const void* nl = std::memchr(w.data() + scanned, '\n', w.size() - scanned)) {
      has_newline = true;
      const std::size_t len = static_cast<std::size_t>(static_cast<const char*>(nl) - w.data());
      if (len > max_bytes + 1 || (len == max_bytes + 1 && w[len - 1] != '\r')) too_long();
      return len;
    }
    scanned = w.size();
    if (scanned > max_bytes + 1) too_long();
    if (!r.more(std::max<std::size_t>(std::size_t{1} << 12, scanned))) {
      has_newline = false;
      const std::string_view rest = r.window();
      if (rest.empty()) return std::string_view::npos;
      if (rest.size() > max_bytes && !(rest.size() == max_bytes + 1 && rest.back() == '\r')) too_long();
      return rest.size();
    }
  }
}

inline std::string_view strip_cr(std::string_view line) noexcept {
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  return line;
}

}  // namespace procflow::stages::detail

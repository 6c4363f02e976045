// Helpers shared by the line-based readers (lines, csv, records).
#pragma once

#include "reader.hpp"

#include <procflow/detail/stage.hpp>
#include <procflow/stages/input.hpp>

#include <algorithm>
#include <cstdint>
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
    // An empty window may have no buffer (data() null): memchr must not see it even with length 0.
    if (const void* nl = w.size() > scanned ? std::memchr(w.data() + scanned, '\n', w.size() - scanned) : nullptr) {
      has_newline = true;
      const std::size_t len = static_cast<std::size_t>(static_cast<const char*>(nl) - w.data());
      if (len > max_bytes + 1 || (len == max_bytes + 1 && w[len - 1] != '\r')) too_long();
      return len;
    }
    scanned = w.size();
    if (scanned > max_bytes + 1) too_long();
    if (!r.more(std::max(read_piece, scanned))) {
      has_newline = false;
      const std::string_view rest = r.window();
      if (rest.empty()) return std::string_view::npos;
      if (rest.size() > max_bytes && !(rest.size() == max_bytes + 1 && rest.back() == '\r')) too_long();
      return rest.size();
    }
  }
}

// The one block loop of the splittable readers: for every block b in [first, last) of `input`
// that holds the start of a line, opens a Reader on its file with the block's bytes (and one
// before it) read, positioned at the first line that starts at or after the block's begin, and
// calls read(reader, block). A line belongs to the block it starts in; `read` reads the lines
// (rows, records) that start before block.end and finishes the last one past it.
template <class Read>
void for_each_block(const input_set& input, std::uint64_t first, std::uint64_t last, Read&& read) {
  for (std::uint64_t b = first; b < last; ++b) {
    const input_set::block block = input.at(b);
    if (block.begin >= block.end) continue;
    Reader r(*block.file, block.begin == 0 ? 0 : block.begin - 1);
    if (!r.more(static_cast<std::size_t>(std::min<std::uint64_t>(block.end - block.begin + 1, read_piece)))) continue;
    if (block.begin > 0 && !seek_line_start(r, block.end)) continue;
    read(r, block);
  }
}

// Sizes a fresh batch buffer (a replica's first chunk) at once for `bytes` of input (at most
// 4 MiB of it) at `item_bytes` an item; shorter items, or larger blocks, grow it further. Grown
// from nothing, it moved every item up to 16 times and mapped twice the memory, page by page
// (procflow/detail/prefault.hpp: what is reserved here is mapped at once, hence the cap).
template <class T>
void size_fresh_batch(procflow::detail::batch_buffer<T>& out, std::uint64_t bytes, std::size_t item_bytes) {
  constexpr std::uint64_t most = std::uint64_t{4} << 20;
  if (out.capacity() == 0) out.reserve(static_cast<std::size_t>(std::min(bytes, most) / item_bytes));
}

inline std::string_view strip_cr(std::string_view line) noexcept {
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  return line;
}

}  // namespace procflow::stages::detail

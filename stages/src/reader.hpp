// Reader: a growable window over a file's bytes, read with large read(2) calls (plain files from
// any offset) or through zlib (gzip) or from stdin. The parsers of lines/csv/records work on
// window() and advance() past what they used; more() appends the next piece.
#pragma once

#include <procflow/stages/input.hpp>

#include <cstdint>
#include <string>
#include <string_view>

namespace procflow::stages::detail {

class Reader {
 public:
  // Plain file from byte `offset` (split blocks), or, when `sequential`, any input from its start
  // (gzip decompressed, "-" = stdin).
  Reader(const input_file& file, std::uint64_t offset, bool sequential = false);
  ~Reader();
  Reader(const Reader&) = delete;
  Reader& operator=(const Reader&) = delete;

  std::string_view window() const noexcept { return std::string_view(buffer_).substr(pos_); }
  // File offset of window()[0] (uncompressed for gzip).
  std::uint64_t offset() const noexcept { return base_ + pos_; }
  void advance(std::size_t n) noexcept { pos_ += n; }
  // Appends up to `want` more bytes to the window; false at end of input (nothing appended).
  bool more(std::size_t want = std::size_t{1} << 20);
  bool at_end() const noexcept { return end_; }
  const input_file& file() const noexcept { return *file_; }

 private:
  const input_file* file_;
  std::string buffer_;
  std::size_t pos_ = 0;
  std::uint64_t base_ = 0;  // file offset of buffer_[0]
  int fd_ = -1;
  void* gz_ = nullptr;       // gzFile
  bool owns_fd_ = false;
  bool end_ = false;
};

// Error text prefix "file:line" for the byte at `offset` (line counted from the file start when
// `line` is 0 and the file is plain).
std::string where(const input_file& file, std::uint64_t offset, std::uint64_t line);

}  // namespace procflow::stages::detail

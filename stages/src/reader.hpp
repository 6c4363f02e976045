// Reader: a growable window over a file's bytes, read with large read(2) calls (plain files from
// any offset) or through zlib (gzip) or from stdin. The parsers of lines/csv/records work on
// window() and advance() past what they used; more() appends the next piece.
#pragma once

#include <procflow/stages/input.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace procflow::stages::detail {

// Bytes per read(2): small enough that the piece just read is still in the core's L2 cache when
// the parser scans it (1 MiB pieces made the kernel's copy and the scan both miss), large
// enough that the system call cost is noise.
inline constexpr std::size_t read_piece = std::size_t{64} << 10;

class Reader {
 public:
  // Plain file from byte `offset` (split blocks), or, when `sequential`, any input from its start
  // (gzip decompressed, "-" = stdin).
  Reader(const input_file& file, std::uint64_t offset, bool sequential = false);
  ~Reader();
  Reader(const Reader&) = delete;
  Reader& operator=(const Reader&) = delete;

  std::string_view window() const noexcept { return std::string_view(data_.get() + pos_, size_ - pos_); }
  // File offset of window()[0] (uncompressed for gzip).
  std::uint64_t offset() const noexcept { return base_ + pos_; }
  void advance(std::size_t n) noexcept { pos_ += n; }
  // Appends up to `want` more bytes to the window; false at end of input (nothing appended).
  bool more(std::size_t want = read_piece);
  bool at_end() const noexcept { return end_; }
  const input_file& file() const noexcept { return *file_; }

 private:
  const input_file* file_;
  // The bytes read (not zero-filled when grown). A Reader takes the process's spare buffer and
  // gives it back when it ends, so reading block after block touches no fresh pages.
  std::unique_ptr<char[]> data_;
  std::size_t capacity_ = 0;
  std::size_t size_ = 0;
  std::size_t pos_ = 0;
  std::uint64_t base_ = 0;  // file offset of data_[0]
  int fd_ = -1;
  void* gz_ = nullptr;       // gzFile
  bool owns_fd_ = false;
  bool end_ = false;
};

// Error text prefix "file:line" for the byte at `offset` (line counted from the file start when
// `line` is 0 and the file is plain).
std::string where(const input_file& file, std::uint64_t offset, std::uint64_t line);

}  // namespace procflow::stages::detail

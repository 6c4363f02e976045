#include "reader.hpp"

#include <procflow/error.hpp>

#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <unistd.h>

namespace procflow::stages::detail {

namespace {
// One spare buffer per thread (readers run one at a time per replica).
struct Spare {
  std::unique_ptr<char[]> data;
  std::size_t capacity = 0;
};
thread_local Spare spare;
}  // namespace

Reader::Reader(const input_file& file, std::uint64_t offset, bool sequential) : file_(&file), base_(offset) {
  if (file.path == "-") {
    fd_ = STDIN_FILENO;
  } else {
    fd_ = ::open(file.path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) throw procflow::system_error(errno, "cannot open '" + file.path + "'");
    owns_fd_ = true;
  }
  if (sequential && !file.plain && file.path != "-") {
    gz_ = ::gzdopen(fd_, "rb");
    if (!gz_) {
      ::close(fd_);
      throw procflow::error("cannot read '" + file.path + "' as gzip");
    }
    owns_fd_ = false;  // gzclose closes it
    ::gzbuffer(static_cast<gzFile>(gz_), 1 << 17);
  } else if (offset != 0 && ::lseek(fd_, static_cast<off_t>(offset), SEEK_SET) < 0) {
    const int e = errno;
    if (owns_fd_) ::close(fd_);
    throw procflow::system_error(e, "cannot seek in '" + file.path + "'");
  }
}

Reader::~Reader() {
  if (gz_) ::gzclose(static_cast<gzFile>(gz_));
  if (owns_fd_) ::close(fd_);
  if (capacity_ > spare.capacity && capacity_ <= (std::size_t{64} << 20)) {
    spare.data = std::move(data_);
    spare.capacity = capacity_;
  }
}

bool Reader::more(std::size_t want) {
  if (end_) return false;
  // Drop what the parser is done with once it is most of the buffer (keeps the window bounded).
  if (pos_ > 0 && pos_ >= size_ / 2) {
    std::memmove(data_.get(), data_.get() + pos_, size_ - pos_);
    size_ -= pos_;
    base_ += pos_;
    pos_ = 0;
  }
  if (!data_ && spare.data) {
    data_ = std::move(spare.data);
    capacity_ = spare.capacity;
    spare.capacity = 0;
  }
  if (size_ + want > capacity_) {
    const std::size_t capacity = std::max(size_ + want, capacity_ * 2);
    std::unique_ptr<char[]> bigger(new char[capacity]);
    if (size_) std::memcpy(bigger.get(), data_.get(), size_);
    data_ = std::move(bigger);
    capacity_ = capacity;
  }
  const std::size_t old = size_;
  std::size_t got = 0;
  while (got == 0) {
    if (gz_) {
      const int n = ::gzread(static_cast<gzFile>(gz_), data_.get() + old, static_cast<unsigned>(want));
      if (n < 0) {
        int code = 0;
        const char* msg = ::gzerror(static_cast<gzFile>(gz_), &code);
        throw procflow::error("cannot read '" + file_->path + "': " + (msg ? msg : "gzip error"));
      }
      if (n == 0) break;
      got = static_cast<std::size_t>(n);
    } else {
      const ssize_t n = ::read(fd_, data_.get() + old, want);
      if (n < 0) {
        if (errno == EINTR) continue;
        const int e = errno;
        throw procflow::system_error(e, "cannot read '" + file_->path + "'");
      }
      if (n == 0) break;
      got = static_cast<std::size_t>(n);
    }
  }
  size_ = old + got;
  if (got == 0) end_ = true;
  return got != 0;
}

std::string where(const input_file& file, std::uint64_t offset, std::uint64_t line) {
  if (line == 0 && file.plain && file.path != "-") line = line_at(file.id, offset);
  return file.path + ":" + std::to_string(line);
}

}  // namespace procflow::stages::detail

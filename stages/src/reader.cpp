#include "reader.hpp"

#include <procflow/error.hpp>

#include <zlib.h>

#include <cerrno>
#include <fcntl.h>
#include <unistd.h>

namespace procflow::stages::detail {

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
}

bool Reader::more(std::size_t want) {
  if (end_) return false;
  // Drop what the parser is done with once it is most of the buffer (keeps the window bounded).
  if (pos_ > 0 && pos_ >= buffer_.size() / 2) {
    buffer_.erase(0, pos_);
    base_ += pos_;
    pos_ = 0;
  }
  const std::size_t old = buffer_.size();
  buffer_.resize(old + want);
  std::size_t got = 0;
  while (got == 0) {
    if (gz_) {
      const int n = ::gzread(static_cast<gzFile>(gz_), buffer_.data() + old, static_cast<unsigned>(want));
      if (n < 0) {
        int code = 0;
        const char* msg = ::gzerror(static_cast<gzFile>(gz_), &code);
        buffer_.resize(old);
        throw procflow::error("cannot read '" + file_->path + "': " + (msg ? msg : "gzip error"));
      }
      if (n == 0) break;
      got = static_cast<std::size_t>(n);
    } else {
      const ssize_t n = ::read(fd_, buffer_.data() + old, want);
      if (n < 0) {
        if (errno == EINTR) continue;
        const int e = errno;
        buffer_.resize(old);
        throw procflow::system_error(e, "cannot read '" + file_->path + "'");
      }
      if (n == 0) break;
      got = static_cast<std::size_t>(n);
    }
  }
  buffer_.resize(old + got);
  if (got == 0) end_ = true;
  return got != 0;
}

std::string where(const input_file& file, std::uint64_t offset, std::uint64_t line) {
  if (line == 0 && file.plain && file.path != "-") line = line_at(file.id, offset);
  return file.path + ":" + std::to_string(line);
}

}  // namespace procflow::stages::detail

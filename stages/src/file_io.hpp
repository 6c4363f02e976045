// Descriptors owned and whole writes to them, shared by the writers, the reject files and the
// readers' line counter (library-internal).
#pragma once

#include <cerrno>
#include <string_view>
#include <utility>
#include <unistd.h>

namespace procflow::stages::detail {

// A descriptor closed when its owner goes (a throw on the way included). close() is the checked
// way out, for a file whose last write must be known to have reached it.
class unique_fd {
 public:
  unique_fd() = default;
  explicit unique_fd(int fd) noexcept : fd_(fd) {}
  unique_fd(unique_fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  unique_fd& operator=(unique_fd&& o) noexcept {
    if (this != &o) reset(std::exchange(o.fd_, -1));
    return *this;
  }
  ~unique_fd() { reset(); }

  int get() const noexcept { return fd_; }
  explicit operator bool() const noexcept { return fd_ >= 0; }
  void reset(int fd = -1) noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }
  // Closes now: 0, or the errno of close(2) (EINTR counts as closed, as on Linux it is).
  int close() noexcept {
    const int fd = std::exchange(fd_, -1);
    if (fd < 0 || ::close(fd) == 0 || errno == EINTR) return 0;
    return errno;
  }

 private:
  int fd_ = -1;
};

// Writes all of `bytes` to `fd` (again after EINTR and short writes). Returns 0, or the errno of
// the write that failed (EIO for a write that wrote nothing).
inline int write_all(int fd, std::string_view bytes) noexcept {
  while (!bytes.empty()) {
    const ssize_t n = ::write(fd, bytes.data(), bytes.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return n < 0 ? errno : EIO;
    bytes.remove_prefix(static_cast<std::size_t>(n));
  }
  return 0;
}

}  // namespace procflow::stages::detail

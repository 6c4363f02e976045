// Whole writes to a descriptor, shared by the writers and the reject files (library-internal).
#pragma once

#include <cerrno>
#include <string_view>
#include <unistd.h>

namespace procflow::stages::detail {

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

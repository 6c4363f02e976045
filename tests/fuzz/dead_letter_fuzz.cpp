// libFuzzer target: what reads dead letters back (include/procflow/dead_letter.hpp) over arbitrary
// bytes — faults::base64_decode on the input as text, and pf::read_dead_letters on the input as a
// file. Any input must decode or be refused (nullopt, procflow::error naming file and line): never
// crash, read out of bounds, hit UB or allocate more than the input justifies. Base64 that decodes
// must be canonical: re-encoding gives the same text back. A letter read back keeps an item of
// exactly item_bytes bytes.
#include "faults/base64.hpp"

#include <procflow/dead_letter.hpp>
#include <procflow/error.hpp>

#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

namespace {

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "dead_letter_fuzz: %s\n", what);
  std::abort();
}

// The input as a file: an anonymous memory file (memfd), read back through /proc/self/fd (leaves
// nothing behind however the fuzzer ends).
const std::string& write_input(std::string_view text) {
  static const int fd = ::memfd_create("dead_letter_fuzz", 0);
  static const std::string path = "/proc/self/fd/" + std::to_string(fd);
  if (fd < 0) fail("memfd_create failed");
  if (::ftruncate(fd, 0) != 0) fail("ftruncate failed");
  if (!text.empty() && ::pwrite(fd, text.data(), text.size(), 0) != static_cast<ssize_t>(text.size())) fail("pwrite failed");
  return path;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);

  if (const auto bytes = procflow::faults::base64_decode(text)) {
    if (procflow::faults::base64_encode(*bytes) != text) fail("base64 that decodes is not canonical");
  }

  const std::string& path = write_input(text);
  try {
    for (const procflow::dead_letter& d : procflow::read_dead_letters(path)) {
      if (d.item_kept && d.item.size() != d.item_bytes) fail("a kept item's size differs from item_bytes");
      if (!d.item_kept && !d.item.empty()) fail("an item not kept has bytes");
    }
  } catch (const procflow::error&) {
    // Refused by name: what it must do with a malformed file.
  }
  return 0;
}
